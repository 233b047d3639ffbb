"""The Avro schemas, as data files: one named type per `<namespace>.<Name>.avsc` file."""

from pathlib import Path

SCHEMA_DIR = Path(__file__).parent
NAMESPACE = "kycstream"

"""Every reader on random bytes: a record, or a clean SerdeError, never another exception.

The compiled readers (behind the current schema's single-object header), fastavro's reader for a
schema the compiler leaves to it, the reader of a retired schema (schemas/history/), and the schema
registry's; inputs are random bytes and valid encodings with bytes flipped, cut or inserted.
"""

from __future__ import annotations

import json
import shutil

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.avro.codec import RECORD_TYPES, SINGLE_OBJECT_MAGIC, RecordType, fingerprint
from processors.errors import SerdeError
from processors.kafka.serde import Codec
from schemas import SCHEMA_DIR
from tests.avro_values import values
from tests.unit.test_serde import OBJECTS

CODEC = Codec()
HEADERS = {
    name: SINGLE_OBJECT_MAGIC + fingerprint(fastavro.parse_schema(CODEC.schema_json(name))) for name in RECORD_TYPES
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_refuses(codec: Codec, name: RecordType, data: bytes, topic: str = "") -> None:
    try:
        value = codec.decode(name, data, topic)
    except SerdeError:
        return
    assert isinstance(value, dict)


@st.composite
def mutated(draw: st.DrawFn, encoded: bytes) -> bytes:
    """`encoded` with a few bytes replaced, removed or inserted (the header kept)."""
    data = bytearray(encoded)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(10, max(10, len(data))))
        edit = draw(st.sampled_from(["replace", "remove", "insert"]))
        byte = draw(st.integers(0, 255))
        if edit == "replace" and at < len(data):
            data[at] = byte
        elif edit == "remove" and at < len(data):
            del data[at]
        else:
            data.insert(at, byte)
    return bytes(data)


@pytest.mark.parametrize("name", RECORD_TYPES)
@FUZZ
@given(body=st.binary(max_size=200))
def test_compiled_readers_on_random_bodies(name: RecordType, body: bytes) -> None:
    decodes_or_refuses(CODEC, name, HEADERS[name] + body)


@pytest.mark.parametrize("name", RECORD_TYPES)
@FUZZ
@given(data=st.data())
def test_compiled_readers_on_mutated_records(name: RecordType, data: st.DataObject) -> None:
    encoded = CODEC.encode(name, data.draw(values(CODEC.schema_json(name)), label="record"))
    decodes_or_refuses(CODEC, name, data.draw(mutated(encoded), label="mutated"))


@FUZZ
@given(data=st.binary(max_size=60) | st.binary(max_size=60).map(lambda b: SINGLE_OBJECT_MAGIC + b))
def test_any_bytes_without_a_known_header(data: bytes) -> None:
    for name in RECORD_TYPES:
        decodes_or_refuses(CODEC, name, data)


@pytest.fixture(scope="module")
def fallback_codec(tmp_path_factory: pytest.TempPathFactory) -> Codec:
    """VerificationEvent with a float, a boolean and a general union: fastavro's reader."""
    directory = tmp_path_factory.mktemp("schemas") / "schemas"
    shutil.copytree(SCHEMA_DIR, directory, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = directory / "kycstream.VerificationEvent.avsc"
    schema = json.loads(path.read_text())
    schema["fields"] += [
        {"name": "confidence", "type": "float", "default": 0.0},
        {"name": "flag", "type": ["null", "boolean", "string"], "default": None},
    ]
    path.write_text(json.dumps(schema))
    codec = Codec(schema_dir=directory)
    assert codec.fastavro_types == {"VerificationEvent"}
    return codec


@FUZZ
@given(data=st.data())
def test_fastavro_fallback_reader(fallback_codec: Codec, data: st.DataObject) -> None:
    schema = fallback_codec.schema_json("VerificationEvent")
    header = fallback_codec.encode("VerificationEvent", data.draw(values(schema), label="record"))[:10]
    body = data.draw(st.binary(max_size=200), label="body")
    decodes_or_refuses(fallback_codec, "VerificationEvent", header + body)
    encoded = fallback_codec.encode("VerificationEvent", data.draw(values(schema), label="record"))
    decodes_or_refuses(fallback_codec, "VerificationEvent", data.draw(mutated(encoded), label="mutated"))


def _retired_header() -> bytes:
    from processors.avro.codec import retired_schemas

    retired = next(s for s in retired_schemas(SCHEMA_DIR) if s.name == "VerificationState")
    return SINGLE_OBJECT_MAGIC + retired.fingerprint


RETIRED_HEADER = _retired_header()


@FUZZ
@given(body=st.binary(max_size=200))
def test_retired_schema_reader(body: bytes) -> None:
    assert HEADERS["VerificationState"] != RETIRED_HEADER
    decodes_or_refuses(CODEC, "VerificationState", RETIRED_HEADER + body)


@pytest.fixture(scope="module")
def registry_codec() -> tuple[Codec, dict[RecordType, bytes]]:
    codec = Codec({"url": "mock://kycstream-fuzz"})
    # Magic byte and schema id of each record type, as registered when one is written.
    return codec, {name: codec.encode(name, to_record(obj), "t")[:5] for name, obj, to_record, _ in OBJECTS}


@pytest.mark.parametrize("name", RECORD_TYPES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=200))
def test_schema_registry_reader(
    registry_codec: tuple[Codec, dict[RecordType, bytes]], name: RecordType, body: bytes
) -> None:
    codec, prefixes = registry_codec
    decodes_or_refuses(codec, name, prefixes[name] + body, "t")
    decodes_or_refuses(codec, name, body, "t")

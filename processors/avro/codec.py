"""Avro encoding of kycstream's record types: schemas parsed once, the single-object encoding.

Each current schema gets a writer and a reader compiled from it (processors.avro.compiler), or
fastavro's when the compiler does not support the schema. Records written with a retired schema
(schemas/history/, see `retired_schemas`) are read with fastavro, resolved to the current one. Another framing, such as
the Confluent wire format through a schema registry (processors.kafka.serde), can take over.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
import fastavro.schema
import fastavro.validation

from processors.avro.compiler import (
    DecodeError,
    EncodeError,
    RecordReader,
    RecordWriter,
    UnsupportedSchemaError,
    compile_reader,
    compile_writer,
)
from processors.errors import SerdeError
from schemas import NAMESPACE, SCHEMA_DIR

RecordType = Literal[
    "RawDelivery", "VerificationEvent", "VerificationState", "DeadLetter", "DedupRecord", "Expectation"
]
RECORD_TYPES: tuple[RecordType, ...] = (
    "RawDelivery",
    "VerificationEvent",
    "VerificationState",
    "DeadLetter",
    "DedupRecord",
    "Expectation",
)
SINGLE_OBJECT_MAGIC = b"\xc3\x01"


def load_definitions(directory: Path) -> dict[str, dict[str, Any]]:
    """Every `<namespace>.<Name>.avsc` in `directory`, by full name."""
    return {path.name.removesuffix(".avsc"): json.loads(path.read_text()) for path in sorted(directory.glob("*.avsc"))}


def expand_schema(name: str, definitions: Mapping[str, Any]) -> dict[str, Any]:
    """The full schema of `name`, each named type inlined at its first use (standalone JSON)."""
    seen: set[str] = set()

    def inline(node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            full = node if "." in node else f"{namespace}.{node}"
            if full in definitions and full not in seen:
                seen.add(full)
                return inline(definitions[full], namespace)
            return node
        if isinstance(node, list):
            return [inline(branch, namespace) for branch in node]
        if isinstance(node, dict):
            if node.get("type") in ("record", "enum", "fixed"):
                seen.add(f"{node.get('namespace', namespace)}.{node['name']}")
            out = dict(node)
            if "fields" in out:
                out["fields"] = [{**f, "type": inline(f["type"], namespace)} for f in out["fields"]]
            for key in ("items", "values"):
                if key in out:
                    out[key] = inline(out[key], namespace)
            if isinstance(out.get("type"), dict | list) or (
                isinstance(out.get("type"), str) and out["type"] in definitions
            ):
                out["type"] = inline(out["type"], namespace)
            return out
        return node

    return dict(inline(f"{NAMESPACE}.{name}", NAMESPACE))


def fingerprint(parsed: Any) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the spec and Java write it (little-endian)."""
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


def retired_schemas(schema_dir: Path) -> list[Schema]:
    """Every record type as a retired generation wrote it. A generation is `history/` itself or one
    of its subdirectories: the files of the types that were different then (a record, or an enum a
    record uses), each record type expanded with them over the current files. Only the schemas whose
    fingerprint differs from the current one are returned, each once."""
    history = schema_dir / "history"
    if not history.is_dir():
        return []
    definitions = load_definitions(schema_dir)
    known = {_schema(name, definitions).fingerprint for name in RECORD_TYPES}
    found = []
    for generation in [history, *sorted(p for p in history.iterdir() if p.is_dir())]:
        retired_definitions = load_definitions(generation)
        if not retired_definitions:
            continue
        for name in RECORD_TYPES:
            retired = _schema(name, {**definitions, **retired_definitions})
            if retired.fingerprint not in known:
                known.add(retired.fingerprint)
                found.append(retired)
    return found


@dataclass(frozen=True)
class Schema:
    name: str
    json: dict[str, Any]
    parsed: Any
    fingerprint: bytes


def _schema(name: str, definitions: Mapping[str, Any]) -> Schema:
    full = expand_schema(name, definitions)
    parsed = fastavro.parse_schema(full)
    return Schema(name, full, parsed, fingerprint(parsed))


def fastavro_writer(parsed: Any) -> RecordWriter:
    """fastavro's writer with a RecordWriter's signature; values validated first, as the compiled one does."""

    def write(record: Any, prefix: bytes = b"", /) -> bytes:
        try:
            fastavro.validation.validate(record, parsed, raise_errors=True)
        except fastavro.validation.ValidationError as exc:
            raise EncodeError(str(exc)) from exc
        out = io.BytesIO()
        out.write(prefix)
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue()

    return write


def fastavro_reader(parsed: Any) -> RecordReader:
    """fastavro's reader with a RecordReader's signature: the input must be consumed exactly."""

    def read(data: bytes, pos: int = 0, /) -> Any:
        stream = io.BytesIO(data)
        stream.seek(pos)
        value = fastavro.schemaless_reader(stream, parsed)
        if stream.tell() != len(data):
            raise DecodeError(f"data continues past the value ({len(data) - stream.tell()} bytes)")
        return value

    return read


class WireFormat(Protocol):
    """A framing other than the single-object encoding (the Confluent one, in processors.kafka)."""

    def encode(self, name: RecordType, record: Mapping[str, Any], topic: str) -> bytes: ...

    def decode(self, name: RecordType, data: bytes, topic: str) -> dict[str, Any]: ...


class Codec:
    """Encodes and decodes kycstream's record types. Build one per process and share it."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        definitions = load_definitions(schema_dir)
        self._schemas = {name: _schema(name, definitions) for name in RECORD_TYPES}
        # Writer schemas a reader may meet: the current ones plus retired versions in history/.
        self._writers: dict[bytes, Any] = {s.fingerprint: s.parsed for s in self._schemas.values()}
        self._writers.update((retired.fingerprint, retired.parsed) for retired in retired_schemas(schema_dir))
        # Compiled: fastavro, which validates a value against every union branch it tries, takes
        # 2-4 times as long to encode, 1.5-2 to decode.
        self._codecs: dict[str, tuple[bytes, RecordWriter, RecordReader]] = {}
        fallbacks = set()
        for name, s in self._schemas.items():
            try:
                write, read = compile_writer(s.json), compile_reader(s.json)
            except UnsupportedSchemaError:
                write, read = fastavro_writer(s.parsed), fastavro_reader(s.parsed)
                fallbacks.add(name)
            self._codecs[name] = (SINGLE_OBJECT_MAGIC + s.fingerprint, write, read)
        self.fastavro_types = frozenset(fallbacks)  # the compiler does not support their schemas
        self._wire: WireFormat | None = None
        self._wired: frozenset[RecordType] = frozenset()

    def use_wire_format(self, wire: WireFormat, types: Iterable[RecordType] = RECORD_TYPES) -> None:
        """Frame the records of `types` (default: all) with `wire` instead of the single-object encoding."""
        self._wire, self._wired = wire, frozenset(types)

    @property
    def single_object(self) -> bool:
        """Whether every record is framed with the single-object encoding (no other wire format)."""
        return not self._wired

    def single_object_for(self, name: RecordType) -> bool:
        return name not in self._wired

    def schema_json(self, name: RecordType) -> dict[str, Any]:
        return self._schemas[name].json

    def encode(self, name: RecordType, record: Mapping[str, Any], topic: str = "") -> bytes:
        if self._wire is not None and name in self._wired:
            return self._wire.encode(name, record, topic)
        header, write, _ = self._codecs[name]
        try:
            return write(record, header)
        except (ValueError, TypeError, KeyError) as exc:
            raise SerdeError(f"cannot encode {name}: {exc}") from exc

    def decode(self, name: RecordType, data: bytes, topic: str = "") -> dict[str, Any]:
        if self._wire is not None and name in self._wired:
            return self._wire.decode(name, data, topic)
        header, _, compiled = self._codecs[name]
        read: Callable[[bytes, int], Any] = compiled
        if data[:10] != header:  # not the current schema (the usual case): a retired one, or not ours
            read = self._retired_reader(name, data)
        try:
            value = read(data, 10)
        except DecodeError as exc:
            raise SerdeError(f"corrupt {name} record: {exc}") from exc
        except Exception as exc:  # truncated or corrupt input raises a variety of errors
            raise SerdeError(f"corrupt {name} record: {type(exc).__name__}") from exc
        if not isinstance(value, dict):
            raise SerdeError(f"decoded {name} is not a record")
        return value

    def _retired_reader(self, name: RecordType, data: bytes) -> Callable[[bytes, int], Any]:
        if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
            raise SerdeError(f"not an Avro single-object encoded {name} (bad magic or too short)")
        writer = self._writers.get(data[2:10])
        if writer is None:
            raise SerdeError(
                f"unknown schema fingerprint {data[2:10].hex()} for {name}: the record was written "
                "with a schema this version does not have (add it to schemas/history/)"
            )
        current = self._schemas[name].parsed
        return lambda d, p: fastavro.schemaless_reader(io.BytesIO(d[p:]), writer, current)

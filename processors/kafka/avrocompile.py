"""Schema-specialised Avro binary codec: Python source generated from a schema and compiled once.

fastavro is driven by the schema at run time: every value goes through a generic dispatch, and a
union picks its branch by validating the value against each branch in turn (~1 µs per optional
field). For a schema known at start-up all of that can be decided once. `compile_writer` and
`compile_reader` turn a schema into the source of one function per named record type (each field's
encoding inlined: a `["null", X]` union is `if v is None`), compile it with `compile()` and return
the root's function.

The writer's bytes are those of `fastavro.schemaless_writer` and the reader returns what
`fastavro.schemaless_reader` returns (timestamps as aware UTC datetimes). A value is accepted where
fastavro's validation (`fastavro.validation.validate`) accepts it and a str encodes to UTF-8, and a
general union picks its branch as fastavro's writer does; anything else raises `EncodeError` (a
ValueError) naming the field. fastavro's writer alone takes more: any value for a null, an int for a
boolean, a bool or a value out of range for an int, a float for a long, a numeric string for a
double, a memoryview for bytes, any iterable for an array, tuple notation for a union branch. The
reader refuses bytes left over after the value, which fastavro ignores.

No schema resolution: a reader decodes data written with the schema it was compiled from. fastavro
stays the codec for the schema-registry mode and for records written with retired schemas.
"""

from __future__ import annotations

import array
import itertools
import linecache
import struct
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from numbers import Integral, Real
from typing import Any, Protocol, cast

from fastavro.read import LOGICAL_READERS
from fastavro.write import LOGICAL_WRITERS

__all__ = [
    "DecodeError",
    "EncodeError",
    "RecordReader",
    "RecordWriter",
    "UnsupportedSchemaError",
    "compile_reader",
    "compile_writer",
]


class EncodeError(ValueError):
    """A value the schema does not allow; `path` is the field (dotted through nested records)."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


class DecodeError(ValueError):
    """Bytes that are not a valid encoding (truncated input raises IndexError, struct.error or this)."""


class UnsupportedSchemaError(ValueError):
    """A schema feature this compiler does not implement (fastavro can still handle it)."""


class RecordWriter(Protocol):
    def __call__(self, record: Any, prefix: bytes = b"", /) -> bytes:
        """The Avro binary encoding of `record`, after `prefix`."""
        ...


class RecordReader(Protocol):
    def __call__(self, data: bytes, pos: int = 0, /) -> Any:
        """The value encoded in `data[pos:]`, which must be consumed exactly."""
        ...


def compile_writer(schema: Any) -> RecordWriter:
    """A function encoding values of `schema` (parsed JSON, named types defined at first use)."""
    return cast(RecordWriter, _WriterSource(_Types(schema)).build())


def compile_reader(schema: Any) -> RecordReader:
    """A function decoding the Avro binary encoding of values of `schema`."""
    return cast(RecordReader, _ReaderSource(_Types(schema)).build())


# --- the schema, names resolved ---------------------------------------------------------------

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_TIMESTAMPS = frozenset({"timestamp-millis", "timestamp-micros"})
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


class _Types:
    """The schema with every name resolved to its full name, and the named types by full name.

    A node is a primitive name, the full name of a named type, a list (union) or a dict (array, map,
    or a long with a timestamp logicalType). Named types are dicts with full names in `named`.
    """

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self.root = self._resolve(schema, "")

    def _resolve(self, node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = node if "." in node or not namespace else f"{namespace}.{node}"
            if full not in self.named:
                raise ValueError(f"unknown type {node!r}")
            return full
        if isinstance(node, list):
            branches = [self._resolve(branch, namespace) for branch in node]
            if any(isinstance(branch, list) for branch in branches):
                raise ValueError("a union cannot contain a union")
            if len(branches) > 63:
                raise UnsupportedSchemaError("unions of more than 63 branches")
            return branches
        if not isinstance(node, dict) or "type" not in node:
            raise ValueError(f"not an Avro schema: {node!r}")
        kind = node["type"]
        logical = node.get("logicalType")
        key = f"{kind}-{logical}"
        # Logical types fastavro does not know are ignored, as the spec says; the ones it knows must be ours.
        if key not in ("long-timestamp-millis", "long-timestamp-micros") and (
            key in LOGICAL_WRITERS or key in LOGICAL_READERS
        ):
            raise UnsupportedSchemaError(f"logicalType {logical} on {kind}")
        if kind in ("record", "enum", "fixed"):
            return self._define(node, namespace)
        if kind == "array":
            return {"type": "array", "items": self._resolve(node["items"], namespace)}
        if kind == "map":
            return {"type": "map", "values": self._resolve(node["values"], namespace)}
        if kind == "long" and logical in _TIMESTAMPS:
            return {"type": "long", "logicalType": logical}
        if isinstance(kind, str | list | dict) and kind not in ("error", "request"):
            return self._resolve(kind, namespace)  # {"type": "string"}, {"type": "a.Named"}
        raise UnsupportedSchemaError(f"type {kind!r}")

    def _define(self, node: dict[str, Any], namespace: str) -> str:
        name = node["name"]
        space = node.get("namespace", namespace) if "." not in name else ""
        full = name if "." in name or not space else f"{space}.{name}"
        if full in self.named or full in _PRIMITIVES:
            raise ValueError(f"{full} is defined twice")
        kind = node["type"]
        if kind == "enum":
            symbols = list(node["symbols"])
            if len(set(symbols)) != len(symbols) or not all(isinstance(s, str) for s in symbols):
                raise ValueError(f"bad symbols in {full}")
            self.named[full] = {"type": "enum", "name": full, "symbols": symbols}
        elif kind == "fixed":
            self.named[full] = {"type": "fixed", "name": full, "size": int(node["size"])}
        else:
            record: dict[str, Any] = {"type": "record", "name": full, "fields": []}
            self.named[full] = record  # before the fields: a record may refer to itself
            inner = full.rpartition(".")[0]
            for field in node["fields"]:
                resolved = {"name": field["name"], "type": self._resolve(field["type"], inner)}
                if "default" in field:
                    resolved["default"] = field["default"]
                record["fields"].append(resolved)
        return full

    def kind(self, node: Any) -> str:
        """The type of a node: a primitive name or record/enum/fixed/array/map/union."""
        if isinstance(node, list):
            return "union"
        if isinstance(node, dict):
            return str(node["type"])
        return node if node in _PRIMITIVES else str(self.named[node]["type"])

    def accepts_none(self, node: Any) -> bool:
        return node == "null" or (isinstance(node, list) and "null" in node)

    def describe(self, node: Any) -> str:
        if isinstance(node, list):
            return "[" + ", ".join(self.describe(b) for b in node) + "]"
        if isinstance(node, dict):
            if node["type"] == "array":
                return f"array<{self.describe(node['items'])}>"
            if node["type"] == "map":
                return f"map<{self.describe(node['values'])}>"
            return f"long ({node['logicalType']})"
        return str(node)

    def valid(self, value: Any, node: Any) -> bool:
        """fastavro's validation (fastavro/_validation_py.py) of `value` as `node`."""
        kind = self.kind(node)
        if kind == "null":
            return value is None
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "string":
            return isinstance(value, str)
        if kind == "bytes":
            return isinstance(value, bytes | bytearray)
        if kind in ("int", "long"):
            if isinstance(node, dict):
                value = _timestamp(value, node["logicalType"])
            low, high = (_INT_MIN, _INT_MAX) if kind == "int" else (_LONG_MIN, _LONG_MAX)
            return isinstance(value, Integral) and not isinstance(value, bool) and low <= int(value) <= high
        if kind in ("float", "double"):
            return isinstance(value, Real) and not isinstance(value, bool)
        if kind == "array":
            return (
                isinstance(value, Sequence | array.array)
                and not isinstance(value, str)
                and all(self.valid(item, node["items"]) for item in value)
            )
        if kind == "map":
            return (
                isinstance(value, Mapping)
                and all(isinstance(key, str) for key in value)
                and all(self.valid(item, node["values"]) for item in value.values())
            )
        if kind == "union":
            return any(self.valid(value, branch) for branch in node)
        named = self.named[node]
        if kind == "enum":
            return value in named["symbols"]
        if kind == "fixed":
            return isinstance(value, bytes) and len(value) == named["size"]
        return (
            isinstance(value, Mapping)
            and not ("-type" in value and value["-type"] != named["name"])
            and all(self.valid(value.get(f["name"], f.get("default")), f["type"]) for f in named["fields"])
        )

    def selector(self, union: list[Any]) -> Callable[[Any], int]:
        """The branch fastavro's writer picks for a value (fastavro/_write_py.py write_union)."""
        kinds = [self.kind(branch) for branch in union]
        field_names = [
            {f["name"] for f in self.named[b]["fields"]} if k == "record" else set()
            for b, k in zip(union, kinds, strict=True)
        ]

        def select(value: Any) -> int:
            best, most_fields, could_be_float = -1, -1, False
            for index, branch in enumerate(union):
                if could_be_float:
                    if kinds[index] == "double":
                        return index
                    continue  # only a double is preferred to a float
                if not self.valid(value, branch):
                    continue
                if kinds[index] == "record":
                    fields = len(field_names[index].intersection(value))
                    if fields > most_fields:
                        best, most_fields = index, fields
                elif kinds[index] == "float":
                    best, could_be_float = index, True
                else:
                    return index
            if best < 0:
                raise EncodeError(f"{type(value).__name__} value matches no branch of {self.describe(union)}")
            return best

        return select


# --- run-time helpers of the generated writers ------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _varint_tables() -> tuple[list[bytes], list[bytes]]:
    # 14 bits at a time: a 6-byte timestamp takes three lookups instead of six turns of a loop.
    pairs = bytearray(1 << 15)  # low 7 bits, high 7 bits, for every 14-bit value in order
    pairs[0::2] = bytes(range(0x80, 0x100)) * 128
    pairs[1::2] = b"".join(bytes((high,)) * 128 for high in range(0x80, 0x100))
    more = bytes(pairs)
    pairs[1::2] = b"".join(bytes((high,)) * 128 for high in range(0x80))
    last = bytes(pairs)
    return (
        [more[i : i + 2] for i in range(0, 1 << 15, 2)],
        [bytes((c,)) for c in range(0x80)] + [last[i : i + 2] for i in range(0x100, 1 << 15, 2)],
    )


_MORE14, _LAST14 = _varint_tables()


def _uvarint(n: int) -> bytes:
    """The varint of a non-negative (already zigzagged) n."""
    if n < 0x4000:
        return _LAST14[n]
    if n < 0x10000000:
        return _MORE14[n & 0x3FFF] + _LAST14[n >> 14]
    if n < 0x40000000000:
        return _MORE14[n & 0x3FFF] + _MORE14[(n >> 14) & 0x3FFF] + _LAST14[n >> 28]
    return _MORE14[n & 0x3FFF] + _MORE14[(n >> 14) & 0x3FFF] + _MORE14[(n >> 28) & 0x3FFF] + _uvarint(n >> 42)


def _zz_long(v: int) -> bytes:
    """The zigzag varint of a long: `_uvarint` inlined for the common sizes (timestamps take 6 bytes)."""
    if v >= 0:
        if v > _LONG_MAX:
            raise EncodeError(f"{v} is out of range for long")
        n = v + v
    else:
        if v < _LONG_MIN:
            raise EncodeError(f"{v} is out of range for long")
        n = -v - v - 1
    if n < 0x4000:
        return _LAST14[n]
    if n < 0x10000000:
        return _MORE14[n & 0x3FFF] + _LAST14[n >> 14]
    if n < 0x40000000000:
        return _MORE14[n & 0x3FFF] + _MORE14[(n >> 14) & 0x3FFF] + _LAST14[n >> 28]
    return _uvarint(n)


def _zz_int(v: int) -> bytes:
    if _INT_MIN <= v <= _INT_MAX:
        return _uvarint((v << 1) ^ (v >> 63))
    raise EncodeError(f"{v} is out of range for int")


def _expected(kind: str, value: Any) -> EncodeError:
    return EncodeError(f"expected {kind}, got {type(value).__name__}")


def _as_int(v: Any) -> int:
    if isinstance(v, Integral) and not isinstance(v, bool):
        return int(v)
    raise _expected("an integer", v)


def _as_float(v: Any) -> float:
    if isinstance(v, Real) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            raise EncodeError(f"{v} is out of range for double") from None
    raise _expected("a number", v)


_pack_d = struct.Struct("<d").pack
_pack_f = struct.Struct("<f").pack
_unpack_d = struct.Struct("<d").unpack_from
_unpack_f = struct.Struct("<f").unpack_from


def _float32(v: Any) -> bytes:
    if v.__class__ is not float:
        v = _as_float(v)
    try:
        return _pack_f(v)
    except OverflowError:  # fastavro casts to a C float, which gives an infinity
        return _pack_f(float("inf") if v > 0 else float("-inf"))


def _timestamp(v: Any, logical: str) -> Any:
    """fastavro's own prepare_timestamp_millis/micros: datetimes to an int (a naive one is local time,
    as fastavro has it), anything else unchanged. The generated code inlines the aware case."""
    return LOGICAL_WRITERS[f"long-{logical}"](v, {})


def _as_record(r: Any) -> dict[str, Any]:
    if isinstance(r, Mapping):
        return dict(r)
    raise _expected("a record (mapping)", r)


def _is_array(v: Any) -> bool:
    return isinstance(v, Sequence | array.array) and not isinstance(v, str)


def _enum_slow(v: Any, symbols: list[str], codes: tuple[Any, ...], name: str) -> Any:
    # `==` as fastavro's `symbols.index(v)`: also a str-like value that hashes differently.
    for symbol, code in zip(symbols, codes, strict=True):
        if v == symbol:
            return code
    raise EncodeError(f"{v!r} is not a symbol of {name}")


def _missing() -> EncodeError:
    return EncodeError("no value and no default")


def _located(
    exc: BaseException, starts: tuple[int, ...], names: tuple[str, ...], types: tuple[str, ...]
) -> EncodeError:
    """`exc` raised in a generated record function, as an EncodeError naming the field.

    The field is found from the line the exception passed through in that function, so the
    generated code keeps no per-field bookkeeping."""
    tb = exc.__traceback__
    index = bisect_right(starts, tb.tb_lineno if tb is not None else 0) - 1
    field = names[index] if index >= 0 else ""
    if isinstance(exc, EncodeError):
        return EncodeError(exc.reason, f"{field}.{exc.path}" if field and exc.path else field or exc.path)
    expected = types[index] if index >= 0 else "a value"
    return EncodeError(f"{str(exc) or type(exc).__name__} (expected {expected})", field)


def _rlong(d: bytes, p: int) -> tuple[int, int]:
    b = d[p]
    n, shift = b & 0x7F, 7
    while b > 0x7F:
        p += 1
        b = d[p]
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise DecodeError("varint longer than 64 bits")
    return (n >> 1) ^ -(n & 1), p + 1


def _rlen(d: bytes, p: int) -> tuple[int, int]:
    n, p = _rlong(d, p)
    if n < 0:
        raise DecodeError(f"negative length {n}")
    return n, p


def _rcount(d: bytes, p: int) -> tuple[int, int]:
    n, p = _rlong(d, p)
    if n < 0:  # a block with its size in bytes after the count
        n = -n
        p = _rlong(d, p)[1]
    return n, p


def _past_end(d: bytes, p: int) -> DecodeError:
    return DecodeError("truncated" if p > len(d) else f"data continues past the value ({len(d) - p} bytes)")


def _bad_index(kind: str, first_byte: int) -> DecodeError:
    return DecodeError(f"bad {kind} index (encoded as {first_byte:#04x}...)")


# --- code generation --------------------------------------------------------------------------

_compiled = itertools.count()


class _Source:
    """Shared by the writer and the reader generators: constants, function names, compilation."""

    prefix = ""

    def __init__(self, types: _Types) -> None:
        self.types = types
        self.env: dict[str, Any] = {}
        self.functions: dict[str, str] = {}  # record full name -> generated function name
        self.pending: list[str] = []
        self.chunks: list[tuple[list[str], Callable[[int], None]]] = []
        self.names = itertools.count()

    def const(self, value: Any, hint: str = "k") -> str:
        name = f"_{hint}{next(self.names)}"
        self.env[name] = value
        return name

    def var(self, hint: str = "v") -> str:
        return f"{hint}{next(self.names)}"

    def function(self, full: str) -> str:
        if full not in self.functions:
            self.functions[full] = f"{self.prefix}_{full.replace('.', '_')}_{len(self.functions)}"
            self.pending.append(full)
        return self.functions[full]

    def finish(self, root: list[str], entry: str, helpers: dict[str, Any]) -> Any:
        while self.pending:
            self.record(self.pending.pop())
        lines: list[str] = []
        for chunk, placed in [*self.chunks, (root, lambda _: None)]:
            placed(len(lines) + 1)
            lines += [*chunk, ""]
        source = "\n".join(lines)
        filename = f"<avrocompile {entry} {next(_compiled)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # for tracebacks
        env = {**helpers, **self.env, "__builtins__": __builtins__}
        exec(compile(source, filename, "exec"), env)
        return env[entry]

    def record(self, full: str) -> None:
        raise NotImplementedError


_WRITER_HELPERS: dict[str, Any] = {
    "EncodeError": EncodeError,
    "_ERRORS": (TypeError, ValueError, OverflowError),
    "_BYTES": (bytes, bytearray),
    "_Mapping": Mapping,
    "_datetime": datetime,
    "_EPOCH": _EPOCH,
    "_enc": str.encode,
    "_pack_d": _pack_d,
    "_float32": _float32,
    "_uvarint": _uvarint,
    "_MORE14": _MORE14,
    "_LAST14": _LAST14,
    "_zz_int": _zz_int,
    "_zz_long": _zz_long,
    "_as_int": _as_int,
    "_as_float": _as_float,
    "_as_record": _as_record,
    "_is_array": _is_array,
    "_timestamp": _timestamp,
    "_expected": _expected,
    "_enum_slow": _enum_slow,
    "_missing": _missing,
    "_located": _located,
}


class _WriterSource(_Source):
    prefix = "write"

    def build(self) -> Any:
        root = ["def write(r, prefix=b''):", "    buf = bytearray(prefix)", "    a = buf.append", "    x = buf.extend"]
        if self.types.kind(self.types.root) == "record":
            root.append(f"    {self.function(self.types.root)}(r, a, x)")  # it names the field on errors
        else:
            root += ["    try:"]
            self.value(self.types.root, "r", "        ", root)
            root += [
                "    except EncodeError:",
                "        raise",
                "    except _ERRORS as e:",
                "        raise _located(e, (), (), ()) from e",
            ]
        root.append("    return bytes(buf)")
        return self.finish(root, "write", _WRITER_HELPERS)

    def record(self, full: str) -> None:
        fields = self.types.named[full]["fields"]
        lines = [
            f"def {self.functions[full]}(r, a, x):",
            "    if r.__class__ is not dict:",
            "        r = _as_record(r)",
            "    try:",
        ]
        starts: list[int] = []
        for field in fields:
            starts.append(len(lines))
            v = self.var()
            lines += ["        try:", f"            {v} = r[{field['name']!r}]", "        except KeyError:"]
            if "default" in field:
                lines.append(f"            {v} = {self.const(field['default'], 'default')}")
            elif self.types.accepts_none(field["type"]):
                lines.append(f"            {v} = None")
            else:
                lines.append("            raise _missing() from None")
            self.value(field["type"], v, "        ", lines)
        if not fields:
            lines.append("        pass")
        names = tuple(f["name"] for f in fields)
        types = tuple(self.types.describe(f["type"]) for f in fields)
        located = self.const(((), names, types), "fields")
        lines += ["    except _ERRORS as e:", f"        raise _located(e, *{located}) from e"]

        def placed(first_line: int) -> None:
            self.env[located] = (tuple(first_line + s for s in starts), names, types)

        self.chunks.append((lines, placed))

    def value(self, node: Any, v: str, ind: str, out: list[str], in_union: bool = False) -> None:
        """Lines that append the encoding of the value in variable `v` (`a` appends, `x` extends)."""
        kind = self.types.kind(node)
        if kind == "null":
            out += [f"{ind}if {v} is not None:", f"{ind}    raise _expected('null', {v})"]
        elif kind == "boolean":
            out += [
                *(f"{ind}{line}" for line in (f"if {v} is True:", "    a(1)", f"elif {v} is False:", "    a(0)")),
                *(f"{ind}{line}" for line in ("else:", f"    raise _expected('boolean', {v})")),
            ]
        elif kind in ("int", "long"):
            if isinstance(node, dict):  # a timestamp: aware datetimes inline, the rest as fastavro does
                delta = self.var("t")
                millis = node["logicalType"] == "timestamp-millis"
                out += [
                    f"{ind}if {v}.__class__ is _datetime and {v}.tzinfo is not None:",
                    f"{ind}    {delta} = {v} - _EPOCH",
                    f"{ind}    {v} = ({delta}.days * 86400 + {delta}.seconds) * "
                    + ("1000 + {0}.microseconds // 1000" if millis else "1000000 + {0}.microseconds").format(delta),
                    f"{ind}else:",
                    f"{ind}    {v} = _timestamp({v}, {node['logicalType']!r})",
                ]
            out += [f"{ind}if {v}.__class__ is not int:", f"{ind}    {v} = _as_int({v})"]
            if node == {"type": "long", "logicalType": "timestamp-millis"}:
                # 1970-01-02 to 2039 in milliseconds: a 5- or 6-byte varint, `_zz_long` inlined.
                n = self.var("n")
                out += [
                    f"{ind}if 0x8000000 <= {v} < 0x20000000000:",
                    f"{ind}    {n} = {v} + {v}",
                    f"{ind}    x(_MORE14[{n} & 16383] + _MORE14[{n} >> 14 & 16383] + _LAST14[{n} >> 28])",
                    f"{ind}elif 0 <= {v} < 64:",
                ]
            else:
                out.append(f"{ind}if 0 <= {v} < 64:")
            out += [f"{ind}    a({v} + {v})", f"{ind}else:", f"{ind}    x(_zz_{kind}({v}))"]
        elif kind == "double":
            out += [f"{ind}if {v}.__class__ is not float:", f"{ind}    {v} = _as_float({v})", f"{ind}x(_pack_d({v}))"]
        elif kind == "float":
            out.append(f"{ind}x(_float32({v}))")
        elif kind == "string":
            b = self.var("b")
            out.append(f"{ind}{b} = _enc({v})")
            self.length_and_bytes(b, ind, out)
        elif kind == "bytes":
            out += [f"{ind}if not isinstance({v}, _BYTES):", f"{ind}    raise _expected('bytes', {v})"]
            self.length_and_bytes(v, ind, out)
        elif kind == "array":
            item = self.var("i")
            out += [
                f"{ind}if {v}.__class__ is not list and not _is_array({v}):",
                f"{ind}    raise _expected('an array', {v})",
                f"{ind}if {v}:",
            ]
            self.count(f"len({v})", ind + "    ", out)
            out.append(f"{ind}    for {item} in {v}:")
            self.value(node["items"], item, ind + "        ", out)
            out.append(f"{ind}a(0)")
        elif kind == "map":
            key, item, b = self.var("k"), self.var("i"), self.var("b")
            out += [
                f"{ind}if {v}.__class__ is not dict and not isinstance({v}, _Mapping):",
                f"{ind}    raise _expected('a map', {v})",
                f"{ind}if {v}:",
            ]
            self.count(f"len({v})", ind + "    ", out)
            out += [f"{ind}    for {key}, {item} in {v}.items():", f"{ind}        {b} = _enc({key})"]
            self.length_and_bytes(b, ind + "        ", out)
            self.value(node["values"], item, ind + "        ", out)
            out.append(f"{ind}a(0)")
        elif kind == "union":
            self.union(node, v, ind, out)
        elif kind == "enum":
            self.enum(node, v, ind, out)
        elif kind == "fixed":
            size = self.types.named[node]["size"]
            out += [
                f"{ind}if not isinstance({v}, bytes) or len({v}) != {size}:",
                f"{ind}    raise _expected({f'{size} bytes'!r}, {v})",
                f"{ind}x({v})",
            ]
        else:
            if in_union:  # fastavro's validation: a "-type" key names the record
                out += [
                    f"{ind}if '-type' in {v} and {v}['-type'] != {node!r}:",
                    f"{ind}    raise _expected({node!r}, {v})",
                ]
            out.append(f"{ind}{self.function(node)}({v}, a, x)")

    def length_and_bytes(self, b: str, ind: str, out: list[str]) -> None:
        n = self.var("n")
        out.append(f"{ind}{n} = len({b})")
        self.count(n, ind, out)
        out.append(f"{ind}x({b})")

    def count(self, n: str, ind: str, out: list[str]) -> None:
        if not n.isidentifier():
            name = self.var("n")
            out.append(f"{ind}{name} = {n}")
            n = name
        out += [f"{ind}if {n} < 64:", f"{ind}    a({n} + {n})", f"{ind}else:", f"{ind}    x(_uvarint({n} + {n}))"]

    def union(self, node: list[Any], v: str, ind: str, out: list[str]) -> None:
        others = [i for i, branch in enumerate(node) if branch != "null"]
        if len(others) == 1 and len(node) <= 2:  # [X], ["null", X], [X, "null"]: None or not
            if len(node) == 2:
                out += [f"{ind}if {v} is None:", f"{ind}    a({2 * (1 - others[0])})", f"{ind}else:"]
                ind += "    "
            out.append(f"{ind}a({2 * others[0]})")
            self.value(node[others[0]], v, ind, out, in_union=True)
            return
        j = self.var("j")
        out.append(f"{ind}{j} = {self.const(self.types.selector(node), 'select')}({v})")
        for index, branch in enumerate(node):
            out += [f"{ind}{'if' if index == 0 else 'elif'} {j} == {index}:", f"{ind}    a({2 * index})"]
            self.value(branch, v, ind + "    ", out, in_union=True)

    def enum(self, node: str, v: str, ind: str, out: list[str]) -> None:
        symbols = self.types.named[node]["symbols"]
        small = len(symbols) <= 64  # every index a single byte: append an int
        codes = tuple(2 * i if small else _uvarint(2 * i) for i in range(len(symbols)))
        table = self.const(dict(zip(symbols, codes, strict=True)), "enum")
        code, codes_name = self.var("c"), self.const(codes, "codes")
        out += [
            f"{ind}try:",
            f"{ind}    {code} = {table}[{v}]",
            f"{ind}except (KeyError, TypeError):",
            f"{ind}    {code} = _enum_slow({v}, {self.const(symbols, 'symbols')}, {codes_name}, {node!r})",
            f"{ind}{'a' if small else 'x'}({code})",
        ]


_READER_HELPERS: dict[str, Any] = {
    "DecodeError": DecodeError,
    "_EPOCH": _EPOCH,
    "_td": timedelta,
    "_unpack_d": _unpack_d,
    "_unpack_f": _unpack_f,
    "_rlong": _rlong,
    "_rlen": _rlen,
    "_rcount": _rcount,
    "_bad_index": _bad_index,
    "_past_end": _past_end,
}


class _ReaderSource(_Source):
    prefix = "read"

    def build(self) -> Any:
        root = ["def read(d, p=0):", "    if d.__class__ is not bytes:", "        d = bytes(d)"]
        self.value(self.types.root, "v", "    ", root)
        root += [
            "    if p != len(d):",
            "        raise _past_end(d, p)",
            "    return v",
        ]
        return self.finish(root, "read", _READER_HELPERS)

    def record(self, full: str) -> None:
        fields = self.types.named[full]["fields"]
        lines = [f"def {self.functions[full]}(d, p):"]
        targets = []
        for field in fields:
            targets.append(self.var())
            self.value(field["type"], targets[-1], "    ", lines)
        items = ", ".join(f"{f['name']!r}: {t}" for f, t in zip(fields, targets, strict=True))
        lines.append(f"    return {{{items}}}, p")
        self.chunks.append((lines, lambda _: None))

    def value(self, node: Any, t: str, ind: str, out: list[str]) -> None:
        """Lines that decode a value at `d[p]` into variable `t` and move `p` past it."""
        kind = self.types.kind(node)
        if kind == "null":
            out.append(f"{ind}{t} = None")
        elif kind == "boolean":
            out += [f"{ind}{t} = d[p] != 0", f"{ind}p += 1"]
        elif kind in ("int", "long"):
            self.long(t, ind, out)
            if isinstance(node, dict):  # as fastavro's read_timestamp_millis/micros
                args = "0, 0, 0, " if node["logicalType"] == "timestamp-millis" else "0, 0, "
                out.append(f"{ind}{t} = _EPOCH + _td({args}{t})")
        elif kind in ("double", "float"):
            unpack, size = ("_unpack_d", 8) if kind == "double" else ("_unpack_f", 4)
            out += [f"{ind}{t} = {unpack}(d, p)[0]", f"{ind}p += {size}"]
        elif kind in ("string", "bytes"):
            n = self.var("n")
            self.count(n, "_rlen", ind, out)
            # A slice past the end is short, leaving p past len(d): read() then refuses the data.
            out += [f"{ind}{t} = d[p:p + {n}]{'.decode()' if kind == 'string' else ''}", f"{ind}p += {n}"]
        elif kind == "fixed":
            size = self.types.named[node]["size"]
            out += [f"{ind}{t} = d[p:p + {size}]", f"{ind}p += {size}"]
        elif kind == "enum":
            self.enum(node, t, ind, out)
        elif kind in ("array", "map"):
            n, item = self.var("n"), self.var("i")
            out.append(f"{ind}{t} = {'[]' if kind == 'array' else '{}'}")
            self.count(n, "_rcount", ind, out)
            out += [f"{ind}while {n}:", f"{ind}    for _ in range({n}):"]
            if kind == "map":
                key = self.var("k")
                self.value("string", key, ind + "        ", out)
                self.value(node["values"], item, ind + "        ", out)
                out.append(f"{ind}        {t}[{key}] = {item}")
            else:
                self.value(node["items"], item, ind + "        ", out)
                out.append(f"{ind}        {t}.append({item})")
            self.count(n, "_rcount", ind + "    ", out)
        elif kind == "union":
            out += [f"{ind}b = d[p]", f"{ind}p += 1"]
            for index, branch in enumerate(node):
                out.append(f"{ind}{'if' if index == 0 else 'elif'} b == {2 * index}:")
                self.value(branch, t, ind + "    ", out)
            out += [f"{ind}else:", f"{ind}    raise _bad_index('union', b)"]
        else:
            out.append(f"{ind}{t}, p = {self.function(node)}(d, p)")

    def long(self, t: str, ind: str, out: list[str]) -> None:
        # The loop inline, not a call: a timestamp is a 6-byte varint.
        out += [
            f"{ind}b = d[p]",
            f"{ind}p += 1",
            f"{ind}if b < 128:",
            f"{ind}    {t} = (b >> 1) ^ -(b & 1)",
            f"{ind}else:",
            f"{ind}    {t} = b & 127",
            f"{ind}    s = 7",
            f"{ind}    while b > 127:",
            f"{ind}        b = d[p]",
            f"{ind}        p += 1",
            f"{ind}        {t} |= (b & 127) << s",
            f"{ind}        s += 7",
            f"{ind}    if {t} >> 64:",
            f"{ind}        raise DecodeError('varint longer than 64 bits')",
            f"{ind}    {t} = ({t} >> 1) ^ -({t} & 1)",
        ]

    def count(self, n: str, slow: str, ind: str, out: list[str]) -> None:
        """A length or block count: one even byte inline, else `slow` (negative, multi-byte)."""
        out += [
            f"{ind}b = d[p]",
            f"{ind}if b & 129:",
            f"{ind}    {n}, p = {slow}(d, p)",
            f"{ind}else:",
            f"{ind}    {n} = b >> 1",
            f"{ind}    p += 1",
        ]

    def enum(self, node: str, t: str, ind: str, out: list[str]) -> None:
        symbols = self.types.named[node]["symbols"]
        if len(symbols) <= 64:  # indexed by the single byte of the encoded index
            table = self.const(
                tuple(symbols[b >> 1] if b % 2 == 0 and b >> 1 < len(symbols) else None for b in range(128)), "enum"
            )
            out += [
                f"{ind}b = d[p]",
                f"{ind}p += 1",
                f"{ind}{t} = {table}[b] if b < 128 else None",
                f"{ind}if {t} is None:",
                f"{ind}    raise _bad_index('enum', b)",
            ]
            return
        j = self.var("j")
        out += [
            f"{ind}{j}, p = _rlong(d, p)",
            f"{ind}if not 0 <= {j} < {len(symbols)}:",
            f"{ind}    raise DecodeError(f'bad enum index {{{j}}}')",
            f"{ind}{t} = {self.const(tuple(symbols), 'symbols')}[{j}]",
        ]

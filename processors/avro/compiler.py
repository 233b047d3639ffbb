"""Schema-specialised Avro binary codec: Python source generated from a schema and compiled once.

fastavro is driven by the schema at run time: every value goes through a generic dispatch, and a
union picks its branch by validating the value against each branch. For a schema known at start-up
all of that can be decided once: `compile_writer` and `compile_reader` turn a schema into the source
of one function per named record (each field's encoding inlined, `["null", X]` is `if v is None`).

Only what schemas/ uses is compiled: non-recursive records, enums of up to 64 symbols, string,
bytes, int, long, double, long timestamp-millis, arrays, maps and `["null", X]` unions. Any other
schema raises `UnsupportedSchemaError`, and the codec uses fastavro for it. The schema is taken
to be valid Avro (the codec parses it with fastavro first). No schema resolution: a reader decodes
data written with the schema it was compiled from.

The writer's bytes are the Avro binary encoding (the spec's; fastavro's and Apache Avro's are the
same); a value of the wrong type, out of range or missing without a default raises `EncodeError`
naming the field. The reader returns timestamps as aware UTC datetimes, raises `DecodeError`,
IndexError or UnicodeDecodeError on bytes that are no encoding, and refuses bytes left over.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any, Protocol, cast

from processors.avro import _runtime
from processors.avro._types import TIMESTAMP_MILLIS, Types, UnsupportedSchemaError

__all__ = [
    "DecodeError",
    "EncodeError",
    "RecordReader",
    "RecordWriter",
    "UnsupportedSchemaError",
    "compile_reader",
    "compile_writer",
]

DecodeError = _runtime.DecodeError
EncodeError = _runtime.EncodeError


class RecordWriter(Protocol):
    def __call__(self, record: Any, prefix: bytes = b"", /) -> bytes:
        """The Avro binary encoding of `record`, after `prefix`."""
        ...


class RecordReader(Protocol):
    def __call__(self, data: bytes, pos: int = 0, /) -> Any:
        """The value encoded in `data[pos:]`, which must be consumed exactly."""
        ...


def compile_writer(schema: Any) -> RecordWriter:
    """A function encoding records of `schema` (parsed JSON, named types defined at first use)."""
    return cast(RecordWriter, _WriterSource(Types(schema)).build())


def compile_reader(schema: Any) -> RecordReader:
    """A function decoding the Avro binary encoding of records of `schema`."""
    return cast(RecordReader, _ReaderSource(Types(schema)).build())


# --- code generation --------------------------------------------------------------------------

_compiled = itertools.count()


class _Source:
    """Shared by the writer and the reader generators: constants, function names, compilation."""

    prefix = ""

    def __init__(self, types: Types) -> None:
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
        filename = f"<avro compiler {entry} {next(_compiled)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # for tracebacks
        env = {**helpers, **self.env, "__builtins__": __builtins__}
        exec(compile(source, filename, "exec"), env)
        return env[entry]

    def record(self, full: str) -> None:
        raise NotImplementedError


class _WriterSource(_Source):
    prefix = "write"

    def build(self) -> Any:
        root = [
            "def write(r, prefix=b''):",
            "    buf = bytearray(prefix)",
            f"    {self.function(self.types.root)}(r, buf.append, buf.extend)",
            "    return bytes(buf)",
        ]
        return self.finish(root, "write", _runtime.WRITER_HELPERS)

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
            elif self.types.kind(field["type"]) == "union":
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

        def placed(first_line: int) -> None:  # where each field's lines start, for `_located`
            self.env[located] = (tuple(first_line + s for s in starts), names, types)

        self.chunks.append((lines, placed))

    def value(self, node: Any, v: str, ind: str, out: list[str]) -> None:
        """Lines that append the encoding of the value in variable `v` (`a` appends, `x` extends)."""
        kind = self.types.kind(node)
        if kind in ("int", "long", TIMESTAMP_MILLIS):
            self.integer(kind, v, ind, out)
        elif kind == "double":
            out += [f"{ind}if {v}.__class__ is not float:", f"{ind}    {v} = _as_float({v})", f"{ind}x(_pack_d({v}))"]
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
            out += [f"{ind}if {v} is None:", f"{ind}    a(0)", f"{ind}else:", f"{ind}    a(2)"]
            self.value(node[1], v, ind + "    ", out)
        elif kind == "enum":
            table = self.const({s: 2 * i for i, s in enumerate(self.types.named[node]["symbols"])}, "enum")
            code = self.var("c")
            out += [
                f"{ind}try:",
                f"{ind}    {code} = {table}[{v}]",
                f"{ind}except (KeyError, TypeError):",
                f"{ind}    raise _not_a_symbol({v}, {node!r}) from None",
                f"{ind}a({code})",
            ]
        else:
            out.append(f"{ind}{self.function(node)}({v}, a, x)")

    def integer(self, kind: str, v: str, ind: str, out: list[str]) -> None:
        if kind == TIMESTAMP_MILLIS:  # aware datetimes inline, the rest (naive, ints) as fastavro does
            delta, n = self.var("t"), self.var("n")
            out += [
                f"{ind}if {v}.__class__ is _datetime and {v}.tzinfo is not None:",
                f"{ind}    {delta} = {v} - _EPOCH",
                f"{ind}    {v} = ({delta}.days * 86400 + {delta}.seconds) * 1000 + {delta}.microseconds // 1000",
                f"{ind}else:",
                f"{ind}    {v} = _millis({v})",
                f"{ind}if {v}.__class__ is not int:",
                f"{ind}    {v} = _as_int({v})",
                # 1970-01-02 to 2039 in milliseconds: a 5- or 6-byte varint, `_zz_long` inlined.
                f"{ind}if 0x8000000 <= {v} < 0x20000000000:",
                f"{ind}    {n} = {v} + {v}",
                f"{ind}    x(_MORE14[{n} & 16383] + _MORE14[{n} >> 14 & 16383] + _LAST14[{n} >> 28])",
                f"{ind}elif 0 <= {v} < 64:",
            ]
        else:
            out += [f"{ind}if {v}.__class__ is not int:", f"{ind}    {v} = _as_int({v})", f"{ind}if 0 <= {v} < 64:"]
        out += [f"{ind}    a({v} + {v})", f"{ind}else:", f"{ind}    x(_zz_{'int' if kind == 'int' else 'long'}({v}))"]

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


class _ReaderSource(_Source):
    prefix = "read"

    def build(self) -> Any:
        root = ["def read(d, p=0):", "    if d.__class__ is not bytes:", "        d = bytes(d)"]
        self.value(self.types.root, "v", "    ", root)
        root += ["    if p != len(d):", "        raise _past_end(d, p)", "    return v"]
        return self.finish(root, "read", _runtime.READER_HELPERS)

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
        if kind in ("int", "long", TIMESTAMP_MILLIS):
            self.long(t, ind, out)
            if kind == TIMESTAMP_MILLIS:  # as fastavro's read_timestamp_millis
                out.append(f"{ind}{t} = _EPOCH + _td(0, 0, 0, {t})")
        elif kind == "double":
            out += [f"{ind}{t} = _unpack_d(d, p)[0]", f"{ind}p += 8"]
        elif kind in ("string", "bytes"):
            n = self.var("n")
            self.count(n, "_rlen", ind, out)
            # A slice past the end is short, leaving p past len(d): read() then refuses the data.
            out += [f"{ind}{t} = d[p:p + {n}]{'.decode()' if kind == 'string' else ''}", f"{ind}p += {n}"]
        elif kind == "enum":
            symbols = self.types.named[node]["symbols"]
            # Indexed by the encoded index's single byte (at most 64 symbols).
            table = self.const(
                tuple(symbols[b >> 1] if b % 2 == 0 and b >> 1 < len(symbols) else None for b in range(128)), "e"
            )
            out += [
                f"{ind}b = d[p]",
                f"{ind}p += 1",
                f"{ind}{t} = {table}[b] if b < 128 else None",
                f"{ind}if {t} is None:",
                f"{ind}    raise _bad_index('enum', b)",
            ]
        elif kind in ("array", "map"):
            self.block(node, kind, t, ind, out)
        elif kind == "union":
            out += [f"{ind}b = d[p]", f"{ind}p += 1", f"{ind}if b == 0:", f"{ind}    {t} = None", f"{ind}elif b == 2:"]
            self.value(node[1], t, ind + "    ", out)
            out += [f"{ind}else:", f"{ind}    raise _bad_index('union', b)"]
        else:
            out.append(f"{ind}{t}, p = {self.function(node)}(d, p)")

    def block(self, node: dict[str, Any], kind: str, t: str, ind: str, out: list[str]) -> None:
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

"""Hypothesis strategies for values of an Avro schema, built from the schema itself: a field added
to a schema is covered by the tests that use them without touching them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

ZONES = st.sampled_from([UTC, timezone(timedelta(hours=7)), timezone(-timedelta(hours=5, minutes=30))])
DATETIMES = st.datetimes(datetime(1900, 1, 1), datetime(2100, 1, 1), timezones=ZONES)
PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1) | st.integers(-300, 300),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False) | st.integers(-(2**53), 2**53),
    "string": st.text(max_size=80),
    "bytes": st.binary(max_size=80) | st.binary(max_size=8).map(bytearray),
}
# Whole milliseconds (what the processors write), sub-millisecond ones, and plain ints.
WHOLE_MILLIS = DATETIMES.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
TIMESTAMP_MILLIS = WHOLE_MILLIS | DATETIMES | st.integers(-(2**41), 2**41)


Strategies = dict[str, st.SearchStrategy[Any]]


def values(
    schema: Any,
    primitives: Strategies = PRIMITIVES,
    millis: st.SearchStrategy[Any] = TIMESTAMP_MILLIS,
    leave_out_defaults: bool = True,
) -> st.SearchStrategy[Any]:
    """Valid values of an Avro schema; named types resolved by full name, as Avro does. Fields with
    a default are sometimes left out (a writer writes the default) unless `leave_out_defaults` is false."""
    named: dict[str, st.SearchStrategy[Any]] = {}

    def build(node: Any, namespace: str) -> st.SearchStrategy[Any]:
        if isinstance(node, str):
            if node in primitives:
                return primitives[node]
            full = node if "." in node or not namespace else f"{namespace}.{node}"
            return st.deferred(lambda: named[full])
        if isinstance(node, list):
            return st.one_of([build(branch, namespace) for branch in node])
        kind = node["type"]
        if kind in ("record", "enum"):
            space = node.get("namespace", namespace)
            full = node["name"] if "." in node["name"] else f"{space}.{node['name']}"
            if kind == "enum":
                named[full] = st.sampled_from(node["symbols"])
                return named[full]
            inner = full.rpartition(".")[0]
            fields = {f["name"]: (build(f["type"], inner), "default" in f) for f in node["fields"]}
            named[full] = st.fixed_dictionaries(
                {name: s for name, (s, has_default) in fields.items() if not (has_default and leave_out_defaults)},
                optional={name: s for name, (s, has_default) in fields.items() if has_default and leave_out_defaults},
            )
            return named[full]
        if kind == "array":
            return st.lists(build(node["items"], namespace), max_size=3)
        if kind == "map":
            return st.dictionaries(st.text(max_size=10), build(node["values"], namespace), max_size=3)
        if node.get("logicalType") == "timestamp-millis":
            return millis
        if kind == "fixed":
            return st.binary(min_size=node["size"], max_size=node["size"])
        return build(kind, namespace)

    return build(schema, "")

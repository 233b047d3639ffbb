"""The schema as processors.avro.compiler sees it: names resolved, and only the features it compiles."""

from __future__ import annotations

from typing import Any


class UnsupportedSchemaError(ValueError):
    """A schema feature this compiler does not implement (fastavro handles it)."""


_PRIMITIVES = frozenset({"int", "long", "double", "bytes", "string"})
TIMESTAMP_MILLIS = "timestamp-millis"  # a node of its own: a long with that logicalType


class Types:
    """The schema with every name resolved to its full name, and the named types by full name.

    A node is a primitive name, `TIMESTAMP_MILLIS`, the full name of a record or enum, a
    `["null", node]` list, or a dict (an array or a map)."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self._defining: set[str] = set()
        self.root = self._resolve(schema, "")
        if self.kind(self.root) != "record":
            raise UnsupportedSchemaError("a schema that is not a record")

    def _resolve(self, node: Any, namespace: str) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = node if "." in node or not namespace else f"{namespace}.{node}"
            if full in self._defining:
                raise UnsupportedSchemaError(f"recursive type {full}")
            if full not in self.named:
                raise UnsupportedSchemaError(f"type {node!r}")  # boolean, float, null alone, a fixed
            return full
        if isinstance(node, list):
            if len(node) != 2 or node[0] != "null" or isinstance(node[1], list) or node[1] == "null":
                raise UnsupportedSchemaError(f"union {node!r} (only [null, X])")
            return ["null", self._resolve(node[1], namespace)]
        kind, logical = node["type"], node.get("logicalType")
        if logical is not None:
            if (kind, logical) == ("long", TIMESTAMP_MILLIS):
                return TIMESTAMP_MILLIS
            raise UnsupportedSchemaError(f"logicalType {logical} on {kind}")
        if kind in ("record", "enum"):
            return self._define(node, namespace)
        if kind == "array":
            return {"type": "array", "items": self._resolve(node["items"], namespace)}
        if kind == "map":
            return {"type": "map", "values": self._resolve(node["values"], namespace)}
        return self._resolve(kind, namespace)  # {"type": "string"}, {"type": "a.Named"}, fixed

    def _define(self, node: dict[str, Any], namespace: str) -> str:
        name = node["name"]
        space = node.get("namespace", namespace) if "." not in name else ""
        full = name if "." in name or not space else f"{space}.{name}"
        if node["type"] == "enum":
            if len(node["symbols"]) > 64:
                raise UnsupportedSchemaError(f"enum {full} of more than 64 symbols")
            self.named[full] = {"type": "enum", "name": full, "symbols": list(node["symbols"])}
            return full
        self._defining.add(full)
        inner = full.rpartition(".")[0]
        fields = []
        for field in node["fields"]:
            resolved = {"name": field["name"], "type": self._resolve(field["type"], inner)}
            if "default" in field:
                resolved["default"] = field["default"]
            fields.append(resolved)
        self._defining.discard(full)
        self.named[full] = {"type": "record", "name": full, "fields": fields}
        return full

    def kind(self, node: Any) -> str:
        """A primitive name, timestamp-millis, or record/enum/array/map/union."""
        if isinstance(node, list):
            return "union"
        if isinstance(node, dict):
            return str(node["type"])
        return node if node in _PRIMITIVES or node == TIMESTAMP_MILLIS else str(self.named[node]["type"])

    def describe(self, node: Any) -> str:
        if isinstance(node, list):
            return f"[null, {self.describe(node[1])}]"
        if isinstance(node, dict):
            inner = node["items"] if node["type"] == "array" else node["values"]
            return f"{node['type']}<{self.describe(inner)}>"
        return "long (timestamp-millis)" if node == TIMESTAMP_MILLIS else str(node)

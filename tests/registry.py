"""A Schema Registry stand-in speaking the REST API confluent-kafka's client and serializers use:
register, look up, latest version, compatibility (BACKWARD: the new schema reads what the latest
wrote), schema by id; every request authenticated (basic or bearer, as configured)."""

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def _fields(schema: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f for f in schema.get("fields", [])}


def backward_compatible(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Enough of Avro's rule for the stand-in: a field the old schema lacks needs a default, and a
    field both have keeps its type."""
    old_fields = _fields(old)
    for name, field in _fields(new).items():
        if name not in old_fields:
            if "default" not in field:
                return False
        elif json.dumps(field["type"], sort_keys=True) != json.dumps(old_fields[name]["type"], sort_keys=True):
            return False
    return True


class Registry:
    def __init__(self, *, basic: tuple[str, str] | None = None, bearer: str | None = None) -> None:
        self.ids: dict[int, str] = {}  # id -> schema string
        self.subjects: dict[str, list[int]] = {}  # subject -> ids of its versions, oldest first
        self.next_id = 101  # not 1: a test can tell the registry's ids from a counter of its own
        self.requests: list[tuple[str, str]] = []  # (method, path) of every authenticated request
        self.refused = 0
        self._auth = None
        if basic:
            self._auth = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
        elif bearer:
            self._auth = f"Bearer {bearer}"

    def add(self, subject: str, schema: str) -> int:
        """Register `schema` under `subject` (its id: the existing one for the same schema)."""
        same = [i for i, known in self.ids.items() if json.loads(known) == json.loads(schema)]
        if same:
            schema_id = same[0]
        else:
            schema_id, self.next_id = self.next_id, self.next_id + 1
            self.ids[schema_id] = schema
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def registrations(self) -> list[str]:
        return [path for method, path in self.requests if method == "POST" and path.endswith("/versions")]

    def _entry(self, subject: str, schema_id: int) -> dict[str, Any]:
        version = self.subjects[subject].index(schema_id) + 1
        return {"subject": subject, "id": schema_id, "version": version, "schema": self.ids[schema_id]}

    async def _dispatch(self, request: Request) -> Response:
        if self._auth is not None and request.headers.get("authorization") != self._auth:
            self.refused += 1
            return _error(401, 40101, "Unauthorized")
        self.requests.append((request.method, request.url.path))
        subject = request.path_params.get("subject", "")
        body = json.loads(await request.body() or b"{}")
        route = request.scope["route"].name
        if route == "schema_by_id":
            schema_id = int(request.path_params["id"])
            if schema_id not in self.ids:
                return _error(404, 40403, "Schema not found")
            return JSONResponse({"schema": self.ids[schema_id]})
        if route == "register":
            return JSONResponse({"id": self.add(subject, body["schema"])})
        if subject not in self.subjects:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        latest = self.subjects[subject][-1]
        if route == "latest":
            return JSONResponse(self._entry(subject, latest))
        if route == "compatibility":
            ok = backward_compatible(json.loads(body["schema"]), json.loads(self.ids[latest]))
            return JSONResponse({"is_compatible": ok})
        for schema_id in self.subjects[subject]:  # lookup
            if json.loads(self.ids[schema_id]) == json.loads(body["schema"]):
                return JSONResponse(self._entry(subject, schema_id))
        return _error(404, 40403, "Schema not found")

    def app(self) -> Starlette:
        handle = self._dispatch
        return Starlette(
            routes=[
                Route("/schemas/ids/{id:int}", handle, methods=["GET"], name="schema_by_id"),
                Route("/subjects/{subject}/versions/latest", handle, methods=["GET"], name="latest"),
                Route("/subjects/{subject}/versions", handle, methods=["POST"], name="register"),
                Route("/subjects/{subject}", handle, methods=["POST"], name="lookup"),
                Route(
                    "/compatibility/subjects/{subject}/versions/latest",
                    handle,
                    methods=["POST"],
                    name="compatibility",
                ),
            ]
        )


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)

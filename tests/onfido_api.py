"""A local stand-in of Onfido's checks API (`GET /v3.6/checks/{check_id}`), for the tests.

It answers what Onfido's check object holds (id, created_at, status, result, report_ids, ...),
from a script per check, else by a rule on the check id:

    id contains "consider" -> complete + consider    "late" -> in_progress twice, then complete + clear
    anything else          -> complete + clear

Calls without `Authorization: Token token=<api token>` get 401 with Onfido's error shape.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEV_API_TOKEN = "dev-onfido-api-token"


def check(check_id: str, status: str, result: str | None) -> dict[str, Any]:
    return {
        "id": check_id,
        "created_at": "2026-01-01T09:00:00Z",
        "href": f"/v3.6/checks/{check_id}",
        "status": status,
        "result": result,
        "report_ids": ["6f0a5e8b-2c4d-4e1f-9a3b-7c8d9e0f1a2b"],
        "applicant_id": "f8cae1d5-2b6d-4a0c-a3b1-0b41d7c0e6a1",
        "sandbox": True,
        "version": "3.6",
    }


class OnfidoStandIn:
    def __init__(self, api_token: str = DEV_API_TOKEN) -> None:
        self.api_token = api_token
        self.scripts: dict[str, list[tuple[int, Any]]] = {}
        self.calls: Counter[str] = Counter()  # check fetches per check id, refused ones too

    def answer_by_rule(self, check_id: str, call: int) -> tuple[int, Any]:
        if "consider" in check_id:
            return 200, check(check_id, "complete", "consider")
        if "late" in check_id and call <= 2:
            return 200, check(check_id, "in_progress", None)
        return 200, check(check_id, "complete", "clear")

    async def find_check(self, request: Request) -> Response:
        check_id = request.path_params["check_id"]
        self.calls[check_id] += 1
        if request.headers.get("authorization") != f"Token token={self.api_token}":
            return JSONResponse({"error": {"type": "authorization_error", "message": "Authorization error"}}, 401)
        script = self.scripts.get(check_id)
        call = self.calls[check_id]
        status, body = script[min(call, len(script)) - 1] if script else self.answer_by_rule(check_id, call)
        return JSONResponse(body, status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v3.6/checks/{check_id}", self.find_check, methods=["GET"])])

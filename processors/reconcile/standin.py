"""A local stand-in of Incode's result API, for `kycstream run --fake-provider-api` and the tests.

Never a real provider host: it answers on 127.0.0.1 what Incode's Fetch Scores and onboarding
status endpoints answer, from a script per interview, else by a rule on the interview id so a
person trying kycstream can pick the outcome:

    id contains "fail" -> overall FAIL     "warn" -> WARN     "late" -> UNKNOWN twice, then OK
    anything else      -> OK

`POST /_script/<interviewId>` with a JSON list of [http_status, body] pairs sets what the next
calls answer (the last one repeats). Calls without the configured x-api-key and executive token
(X-Incode-Hardware-Id) get 401, as from Incode.

Given a `login` (email, password), it serves Incode's executive login too: `POST /executive/log-in`
with the x-api-key and that JSON {"email", "password"} answers {"token"}, a token that Fetch Scores
accepts for `token_lifetime_s` (Incode: 24 hours), as well as the configured admin token if any.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEV_API_KEY = "dev-incode-api-key"
DEV_ADMIN_TOKEN = "dev-incode-admin-token"


def _score(word: str) -> dict[str, Any]:
    module = "OK" if word in ("OK", "UNKNOWN") else word
    return {
        "idValidation": {"overall": {"value": "100.0", "status": "OK"}},
        "liveness": {"overall": {"value": "98.3", "status": "OK"}},
        "faceRecognition": {"overall": {"value": "91.0", "status": module}},
        "governmentValidation": {"overall": {"value": "100.0", "status": "OK"}},
        "overall": {"value": "95.0" if word != "UNKNOWN" else None, "status": word},
    }


class IncodeStandIn:
    def __init__(
        self,
        api_key: str = DEV_API_KEY,
        admin_token: str | None = DEV_ADMIN_TOKEN,
        *,
        login: tuple[str, str] | None = None,
        token_lifetime_s: float = 24 * 3600.0,
    ) -> None:
        self.api_key = api_key
        self.admin_token = admin_token
        self.login = login
        self.token_lifetime_s = token_lifetime_s
        self.logins = 0  # executive logins answered, refused ones too
        self.issued: dict[str, float] = {}  # executive token -> when it expires (monotonic)
        self.scripts: dict[str, list[tuple[int, Any]]] = {}
        self.calls: Counter[str] = Counter()  # score fetches per interview id, refused ones too

    def answer_by_rule(self, interview_id: str, call: int) -> tuple[int, Any]:
        lowered = interview_id.lower()
        if "fail" in lowered:
            return 200, _score("FAIL")
        if "warn" in lowered:
            return 200, _score("WARN")
        if "late" in lowered and call <= 2:
            return 200, _score("UNKNOWN")
        return 200, _score("OK")

    def _authorized(self, request: Request, admin: bool) -> bool:
        if request.headers.get("x-api-key") != self.api_key:
            return False
        if not admin or (self.admin_token is None and self.login is None):
            return True
        token = request.headers.get("x-incode-hardware-id")
        return token is not None and (token == self.admin_token or self.issued.get(token, 0.0) > time.monotonic())

    async def executive_login(self, request: Request) -> Response:
        self.logins += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        given = (body.get("email"), body.get("password")) if isinstance(body, dict) else None
        if self.login is None or request.headers.get("x-api-key") != self.api_key or given != self.login:
            return JSONResponse({"status": 401, "error": "Unauthorized"}, status_code=401)
        token = secrets.token_urlsafe(24)
        self.issued[token] = time.monotonic() + self.token_lifetime_s
        return JSONResponse({"token": token})

    async def score(self, request: Request) -> Response:
        interview = request.query_params.get("id", "")
        self.calls[interview] += 1
        if not self._authorized(request, admin=True):
            return JSONResponse({"status": 401, "error": "Unauthorized"}, status_code=401)
        call = self.calls[interview]
        script = self.scripts.get(interview)
        status, body = script[min(call, len(script)) - 1] if script else self.answer_by_rule(interview, call)
        return JSONResponse(body, status_code=status)

    async def onboarding_status(self, request: Request) -> Response:
        if not self._authorized(request, admin=False):
            return JSONResponse({"status": 401, "error": "Unauthorized"}, status_code=401)
        return JSONResponse({"onboardingStatus": "ONBOARDING_FINISHED"})

    async def script(self, request: Request) -> Response:
        answers = await request.json()
        self.scripts[request.path_params["interview"]] = [(int(code), body) for code, body in answers]
        return JSONResponse({"scripted": len(answers)})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/omni/get/score", self.score, methods=["GET"]),
                Route("/omni/get/onboarding/status", self.onboarding_status, methods=["GET"]),
                Route("/executive/log-in", self.executive_login, methods=["POST"]),
                Route("/_script/{interview}", self.script, methods=["POST"]),
            ]
        )

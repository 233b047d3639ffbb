"""Headers that authenticate a body the way each auth scheme expects (as a provider would send), and
a local OAuth2 token endpoint with a provider API that accepts its live tokens only."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.settings import SourceSettings
from processors import signing


def auth_headers(source: SourceSettings, body: bytes, secret: str = "dev-secret") -> dict[str, str]:
    return signing.sign(source.declared_auth, body, secret.encode(), time.time())


CLIENT = ("kycstream-client", "s3cret")


class FakeOAuth:
    """A token endpoint (client_secret_basic) and a MetaMap-like API that accepts live tokens only."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.live: dict[str, float] = {}  # token -> expiry (monotonic)
        self.token_requests = 0
        self.client_revoked = False  # the token endpoint refuses the client
        self.api_refuses_all = False  # the API refuses every token (e.g. the client lost its rights)
        self.api_calls: list[int] = []  # statuses answered
        self.token_times: list[float] = []  # when each token request arrived (monotonic)
        self.calls: list[tuple[str, str, int]] = []  # (verification id, token sent, status answered)
        self.call_times: list[float] = []  # when each API call arrived (monotonic)

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        self.token_times.append(time.monotonic())
        form = dict(parse_qsl((await request.body()).decode()))
        basic = "Basic " + base64.b64encode(":".join(CLIENT).encode()).decode()
        if self.client_revoked or request.headers.get("authorization") != basic:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        token = uuid.uuid4().hex
        self.live[token] = time.monotonic() + self.lifetime_s
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": self.lifetime_s})

    async def verification(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        alive = self.live.get(token, 0.0) > time.monotonic()
        status = 200 if alive and not self.api_refuses_all else 401
        self.api_calls.append(status)
        self.calls.append((request.path_params["vid"], token, status))
        self.call_times.append(time.monotonic())
        if status == 401:
            return JSONResponse({"code": 401, "message": "invalid or expired token"}, status_code=401)
        return JSONResponse({"id": request.path_params["vid"], "identity": {"status": "verified"}})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/token", self.token, methods=["POST"]),
                Route("/v2/verifications/{vid}", self.verification, methods=["GET"]),
            ]
        )

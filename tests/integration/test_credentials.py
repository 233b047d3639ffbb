"""Provider API credentials that expire: OAuth2 client credentials against a local token endpoint and a
provider API that accepts only live tokens, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processors.model import Expectation
from processors.polling import Poller
from processors.providers import REGISTRY
from processors.settings import PollSettings
from tests.conftest import serving_app

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

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
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


@pytest.fixture
def oauth() -> Iterator[tuple[FakeOAuth, str]]:
    fake = FakeOAuth(lifetime_s=2.0)
    with serving_app(fake.app()) as url:
        yield fake, url


async def _closed(poller: Poller) -> None:
    await poller.aclose()
    await poller.client.aclose()


def _poller(url: str, registry: CollectorRegistry) -> tuple[Poller, Counter]:
    settings = PollSettings.model_validate(
        {
            "base_url": url,
            "oauth2": {"token_url": f"{url}/oauth/token", "client_id": CLIENT[0], "client_secret": CLIENT[1]},
            "rate_per_s": 100,
        }
    )
    requests = Counter("kycstream_token_requests", "", ["provider", "outcome"], registry=registry)
    return Poller(REGISTRY["metamap"], settings, httpx.AsyncClient(), token_requests=requests), requests


def _expectation(vid: str) -> Expectation:
    return Expectation("metamap", "metamap", vid, datetime.now(UTC))


def test_tokens_that_expire_every_2s_are_renewed_before_they_fail(oauth: tuple[FakeOAuth, str]) -> None:
    fake, url = oauth
    registry = CollectorRegistry()
    poller, _ = _poller(url, registry)

    async def run(seconds: float) -> list[str]:
        verdicts = []
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            verdicts.append((await poller.poll(_expectation(uuid.uuid4().hex[:24]))).verdict)
            await asyncio.sleep(0.1)
        await _closed(poller)
        return verdicts

    seconds = 12.0
    verdicts = asyncio.run(run(seconds))
    assert set(verdicts) == {"result"}, f"{verdicts.count('unauthorized')} unauthorized of {len(verdicts)}"
    assert 401 not in fake.api_calls, "a token was used after it expired"
    expiries = seconds / fake.lifetime_s
    assert expiries <= fake.token_requests <= expiries + 2, f"{fake.token_requests} token requests in {seconds}s"
    assert registry.get_sample_value("kycstream_token_requests_total", {"provider": "metamap", "outcome": "ok"}) == (
        fake.token_requests
    )


def test_a_refused_token_is_replaced_once_and_only_a_fresh_refusal_is_unauthorized(
    oauth: tuple[FakeOAuth, str],
) -> None:
    fake, url = oauth
    poller, _ = _poller(url, CollectorRegistry())

    async def run() -> None:
        assert (await poller.poll(_expectation("a" * 24))).verdict == "result"
        fake.live.clear()  # the provider forgot every token (a key rotation on its side)
        assert (await poller.poll(_expectation("b" * 24))).verdict == "result", "a fresh token was fetched"
        assert fake.api_calls[-2:] == [401, 200] and fake.token_requests == 2
        fake.api_refuses_all = True
        assert (await poller.poll(_expectation("c" * 24))).verdict == "unauthorized"
        assert fake.api_calls[-2:] == [401, 401] and fake.token_requests == 3, "exactly one fresh token tried"
        await _closed(poller)

    asyncio.run(run())


def test_a_token_endpoint_that_fails_is_no_unauthorized_but_a_credential_failure(
    oauth: tuple[FakeOAuth, str],
) -> None:
    fake, url = oauth
    registry = CollectorRegistry()
    poller, _ = _poller(url, registry)

    async def run() -> None:
        fake.client_revoked = True
        outcome = await poller.poll(_expectation("d" * 24))
        assert outcome.verdict == "credential_failed" and "invalid_client" in outcome.detail
        assert CLIENT[1] not in outcome.detail
        assert fake.api_calls == [], "no API call without a credential"
        labels = {"provider": "metamap", "outcome": "failed"}
        assert registry.get_sample_value("kycstream_token_requests_total", labels) == 1
        fake.client_revoked = False
        assert (await poller.poll(_expectation("e" * 24))).verdict == "result", "the next try recovers"
        await _closed(poller)

    asyncio.run(run())

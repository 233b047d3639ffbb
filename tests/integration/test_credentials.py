"""Provider API credentials that expire: OAuth2 client credentials against a local token endpoint and a
provider API that accepts only live tokens, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from processors.errors import ConfigError
from processors.model import Expectation
from processors.providers import REGISTRY, incode
from processors.reconcile.credentials import ClientCredentials, ExecutiveLogin, _jwt_lifetime
from processors.reconcile.fetcher import fetcher_sources
from processors.reconcile.polling import Poller, PollOutcome
from processors.reconcile.pollsettings import PollSettings
from processors.reconcile.standin import DEV_API_KEY, IncodeStandIn
from processors.settings import ReconcileSettings
from tests.conftest import serving_app, wait_until
from tests.credentials import CLIENT, FakeOAuth


@pytest.fixture
def oauth() -> Iterator[tuple[FakeOAuth, str]]:
    fake = FakeOAuth(lifetime_s=2.0)
    with serving_app(fake.app()) as url:
        yield fake, url


async def _closed(poller: Poller) -> None:
    await poller.aclose()
    await poller.client.aclose()


def _poller(url: str, registry: CollectorRegistry, clock: Callable[[], float] | None = None) -> tuple[Poller, Counter]:
    """A MetaMap poller with OAuth2 against `url`; `clock` (seconds) drives its token cache's time."""
    settings = PollSettings.model_validate(
        {
            "base_url": url,
            "oauth2": {"token_url": f"{url}/oauth/token", "client_id": CLIENT[0], "client_secret": CLIENT[1]},
            "rate_per_s": 100,
        }
    )
    requests = Counter("kycstream_token_requests", "", ["provider", "outcome"], registry=registry)
    credentials = None
    if clock is not None:
        assert settings.oauth2 is not None
        credentials = ClientCredentials(
            settings.oauth2,
            None,
            on_token_request=lambda ok: requests.labels("metamap", "ok" if ok else "failed").inc(),
            clock=clock,
        )
    client = httpx.AsyncClient()
    return Poller(REGISTRY["metamap"], settings, client, credentials=credentials, token_requests=requests), requests


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
            await asyncio.sleep(0.1)  # sleep: pacing (polls at ~10/s for `seconds`)
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
    now = [1_000.0]
    poller, _ = _poller(url, registry, clock=lambda: now[0])

    async def run() -> None:
        fake.client_revoked = True
        outcome = await poller.poll(_expectation("d" * 24))
        assert outcome.verdict == "credential_failed" and "invalid_client" in outcome.detail
        assert CLIENT[1] not in outcome.detail
        assert fake.api_calls == [], "no API call without a credential"
        labels = {"provider": "metamap", "outcome": "failed"}
        assert registry.get_sample_value("kycstream_token_requests_total", labels) == 1
        fake.client_revoked = False
        within_backoff = await poller.poll(_expectation("e" * 24))
        assert within_backoff.verdict == "credential_failed" and "asked again in" in within_backoff.detail
        assert registry.get_sample_value("kycstream_token_requests_total", labels) == 1, "not asked within the backoff"
        now[0] += 1.0  # the first backoff (0.8-1 s) has passed
        assert (await poller.poll(_expectation("e" * 24))).verdict == "result"
        assert fake.token_requests == 2, "asked again once the backoff passed, and it recovered"
        await _closed(poller)

    asyncio.run(run())


# --- Incode's executive login: the executive token for Fetch Scores, against the Incode stand-in -----

LOGIN = ("ops@example.com", "dashboard-pass")


@pytest.fixture
def incode_api() -> Iterator[tuple[IncodeStandIn, str]]:
    standin = IncodeStandIn(DEV_API_KEY, admin_token=None, login=LOGIN, token_lifetime_s=1.0)
    with serving_app(standin.app()) as url:
        yield standin, url


def _incode_poller(url: str, registry: CollectorRegistry, **login: Any) -> Poller:
    settings = PollSettings.model_validate(
        {
            "base_url": url,
            "token": DEV_API_KEY,
            "executive_login": {"email": LOGIN[0], "password": LOGIN[1], "lifetime_s": 1.0, **login},
            "rate_per_s": 100,
        }
    )
    requests = Counter("kycstream_token_requests", "", ["provider", "outcome"], registry=registry)
    return Poller(REGISTRY["incode"], settings, httpx.AsyncClient(), token_requests=requests)


async def _score(poller: Poller, vid: str) -> int | str:
    """The Fetch Scores answer's status, or the verdict when no answer came."""
    answer = await poller.call_with(lambda c: incode.fetch_request("score", vid, c))
    return answer.verdict if isinstance(answer, PollOutcome) else answer.status_code


def test_the_incode_executive_token_is_logged_in_for_and_renewed_before_it_expires(
    incode_api: tuple[IncodeStandIn, str],
) -> None:
    standin, url = incode_api
    registry = CollectorRegistry()
    poller = _incode_poller(url, registry)

    async def run(seconds: float) -> list[int | str]:
        answers = []
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            # Four at once: they share one login.
            answers += await asyncio.gather(*(_score(poller, f"ok-{i}") for i in range(4)))
            await asyncio.sleep(0.05)  # sleep: pacing (rounds of four for `seconds`)
        await _closed(poller)
        return answers

    seconds = 5.0
    answers = asyncio.run(run(seconds))
    assert set(answers) == {200}, f"{len(answers) - answers.count(200)} refused of {len(answers)}"
    expiries = seconds / standin.token_lifetime_s
    assert expiries <= standin.logins <= expiries * 1.2 + 1, f"{standin.logins} logins in {seconds}s"
    labels = {"provider": "incode", "outcome": "ok"}
    assert registry.get_sample_value("kycstream_token_requests_total", labels) == standin.logins


def test_a_refused_executive_token_is_logged_in_for_once_and_a_refused_login_is_a_credential_failure(
    incode_api: tuple[IncodeStandIn, str],
) -> None:
    standin, url = incode_api
    registry = CollectorRegistry()
    poller = _incode_poller(url, registry, lifetime_s=3600)  # believed valid for an hour

    async def run() -> None:
        assert await _score(poller, "ok-1") == 200 and standin.logins == 1
        standin.issued.clear()  # Incode forgot the token (ended the executive's sessions)
        assert await _score(poller, "ok-2") == 200, "logged in again after the 401"
        assert standin.logins == 2
        standin.issued.clear()
        standin.login = (LOGIN[0], "rotated-at-incode")  # the password changed, the config not yet
        outcome = await poller.call_with(lambda c: incode.fetch_request("score", "ok-3", c))
        assert isinstance(outcome, PollOutcome) and outcome.verdict == "credential_failed", outcome
        assert "executive_login" in outcome.detail and LOGIN[1] not in outcome.detail
        assert standin.logins == 3, "one login tried, not one per retry"
        failed = {"provider": "incode", "outcome": "failed"}
        assert registry.get_sample_value("kycstream_token_requests_total", failed) == 1
        await _closed(poller)

    asyncio.run(run())


def test_the_executive_login_password_file_rotates_and_a_jwt_exp_comes_first(
    incode_api: tuple[IncodeStandIn, str], tmp_path: Path
) -> None:
    standin, url = incode_api
    password = tmp_path / "incode-password"
    password.write_text(f"{LOGIN[1]}\n")
    settings = PollSettings.model_validate(
        {
            "base_url": url,
            "token": DEV_API_KEY,
            "executive_login": {"email": LOGIN[0], "password_file": str(password)},
        }
    )
    assert settings.executive_login is not None
    clock = [1_000_000.0]
    login = ExecutiveLogin(settings, settings.executive_login, clock=lambda: clock[0])

    async def run() -> None:
        first = await login.current()
        assert first.token == DEV_API_KEY and first.admin_token in standin.issued
        clock[0] += 23 * 3600  # within Incode's 24 hours: the same token
        assert (await login.current()).admin_token == first.admin_token
        standin.login = (LOGIN[0], "rotated")
        os.replace(_written(tmp_path / "new", "rotated\n"), password)
        clock[0] += 3600  # past the 24 hours, less the leeway: logged in again, with the new password
        await asyncio.to_thread(wait_until, lambda: login._password() == "rotated", 5, "the new password read")
        second = await login.current()
        assert second.admin_token != first.admin_token and second.admin_token in standin.issued
        await login.aclose()

    asyncio.run(run())
    assert standin.logins == 2
    exp = int(time.time()) + 120
    payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    assert _jwt_lifetime(f"eyJhbGciOiJIUzI1NiJ9.{payload}.sig", exp - 100) == 100
    assert _jwt_lifetime("not-a-jwt", 0) is None
    assert _jwt_lifetime("a.%%%.c", 0) is None


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"provider": "metamap", "poll": {"token": "t", "executive_login": {"email": "a@b.c", "password": "p"}}},
            "metamap has no executive login",
        ),
        ({"poll": {"token": "k", "executive_login": {"email": "a@b.c"}}}, "give password or password_file"),
        ({"poll": {"token": "k", "executive_login": {"email": "ops", "password": "p"}}}, "'ops' is no email"),
        (
            {"poll": {"token": "k", "admin_token": "x", "executive_login": {"email": "a@b.c", "password": "p"}}},
            "admin_token and executive_login: give one of them",
        ),
        (
            {
                "poll": {
                    "oauth2": {"token_url": "https://t.example", "client_id": "c", "client_secret": "s"},
                    "executive_login": {"email": "a@b.c", "password": "p"},
                }
            },
            "executive_login needs the API key as token or token_file",
        ),
    ],
)
def test_an_executive_login_config_mistake_says_what_to_fix(
    source: dict[str, Any], message: str, tmp_path: Path
) -> None:
    entry = {"provider": "incode", **source}
    entry["poll"] = {"base_url": "https://api.incode.example", **entry["poll"]}
    config = tmp_path / "kycstream.yaml"
    config.write_text(json.dumps({"sources": {"src": entry}}))
    with pytest.raises(ConfigError) as raised:
        ReconcileSettings.load(config)
    assert message in str(raised.value), str(raised.value)
    assert "sources.src" in str(raised.value)


def test_a_logged_in_incode_source_needs_no_admin_token_to_fetch(tmp_path: Path) -> None:
    login = {"email": LOGIN[0], "password": LOGIN[1]}
    poll = {"base_url": "https://api.incode.example", "token": "k", "executive_login": login}
    settings = ReconcileSettings(sources={"incode": {"provider": "incode", "poll": poll}})
    assert set(fetcher_sources(settings)) == {"incode"}
    without = ReconcileSettings(sources={"incode": {"provider": "incode", "poll": {**poll, "executive_login": None}}})
    with pytest.raises(ConfigError, match="executive_login"):
        fetcher_sources(without)

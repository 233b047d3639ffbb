"""Calling a provider's status API politely: rate-limited, bounded concurrency, retries with
exponential backoff and jitter on 5xx and timeouts (tenacity), and a verdict the reconciler acts on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from prometheus_client import Counter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from processors.model import ApiCredentials, Expectation, PollRequest
from processors.providers import Provider
from processors.reconcile.credentials import CredentialError, Credentials, credentials_for
from processors.reconcile.pollsettings import PollSettings
from processors.reconcile.ratelimit import TokenBucket

Verdict = Literal["result", "unrecognized", "unauthorized", "not_found", "failed", "credential_failed"]


@dataclass(frozen=True)
class PollOutcome:
    verdict: Verdict
    detail: str
    body: dict[str, Any] | None = None
    http_status: int | None = None


class _Transient(Exception):
    """A 5xx answer or a transport error: worth another try."""


class Poller:
    """One per provider source: its own rate limit and concurrency."""

    def __init__(
        self,
        provider: Provider,
        settings: PollSettings,
        client: httpx.AsyncClient,
        credentials: Credentials | None = None,
        token_requests: Counter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`token_requests`: kycstream_token_requests_total{provider,outcome}, for OAuth2 sources."""
        self.provider = provider
        self.settings = settings
        self.client = client
        self.bucket = TokenBucket(settings.rate_per_s, max(1, int(settings.rate_per_s)))
        self.slots = asyncio.Semaphore(settings.concurrency)

        def counted(ok: bool) -> None:
            if token_requests is not None:
                token_requests.labels(provider.NAME, "ok" if ok else "failed").inc()

        self.credentials = credentials or credentials_for(settings, transport=transport, on_token_request=counted)

    async def aclose(self) -> None:
        """Close what the credentials hold (an OAuth2 client); the shared HTTP client is the caller's."""
        await self.credentials.aclose()

    async def poll(self, expectation: Expectation) -> PollOutcome:
        e = expectation
        response = await self.call_with(lambda c: self.provider.poll_request(e.verification_id, e.lookup, c))
        if isinstance(response, PollOutcome):
            return response
        return self._verdict(expectation, response)

    async def call_with(self, build: Callable[[ApiCredentials], PollRequest]) -> httpx.Response | PollOutcome:
        """The answer with the current credential; after a 401/403, once more with a fresh one (OAuth2,
        executive login): only a refusal of a fresh credential reaches the caller. `credential_failed` when the
        credential itself cannot be had (retried later, never dead-lettered)."""
        for fresh in (False, True):
            try:
                credentials = await self.credentials.current()
            except CredentialError as exc:
                return PollOutcome("credential_failed", str(exc))
            answer = await self.call(build(credentials))
            if isinstance(answer, PollOutcome) or answer.status_code not in (401, 403) or fresh:
                return answer
            if not self.credentials.refused(credentials):  # a static credential: nothing fresher to try
                return answer
        raise AssertionError("unreachable: the second round returns")

    async def call(self, request: PollRequest) -> httpx.Response | PollOutcome:
        """The answer, tried again on 5xx, 429 and transport errors; a `failed` outcome if none came."""
        async with self.slots:
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.settings.max_attempts),
                    wait=wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.2),
                    retry=retry_if_exception_type(_Transient),
                    reraise=True,
                ):
                    with attempt:
                        return await self._call(request.method, request.path, request.headers, request.params)
            except _Transient as exc:
                return PollOutcome("failed", f"gave up after {self.settings.max_attempts} tries: {exc}")
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _call(self, method: str, path: str, headers: dict[str, str], params: dict[str, str]) -> httpx.Response:
        while (wait := self.bucket.take()) > 0:
            await asyncio.sleep(wait)
        try:
            response = await self.client.request(
                method, self.settings.base_url + path, headers=headers, params=params, timeout=self.settings.timeout_s
            )
        except httpx.HTTPError as exc:
            raise _Transient(type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        return response

    def _verdict(self, expectation: Expectation, response: httpx.Response) -> PollOutcome:
        code = response.status_code
        if code in (401, 403):
            return PollOutcome("unauthorized", f"the status API refused the credential (HTTP {code})", None, code)
        if code == 404:
            return PollOutcome("not_found", "the status API does not know this verification (yet)", None, code)
        if code >= 400:
            return PollOutcome("failed", f"the status API answered HTTP {code}", None, code)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return PollOutcome("unrecognized", "the status API answer is not JSON", None, code)
        body = (
            self.provider.poll_result(expectation.verification_id, expectation.lookup, answer)
            if isinstance(answer, dict)
            else None
        )
        if body is None:
            return PollOutcome("unrecognized", "the status API answer carries no status", None, code)
        return PollOutcome("result", "ok", body, code)

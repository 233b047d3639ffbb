"""The token cache's pure logic: one fetch for concurrent callers, backoff after failures."""

from __future__ import annotations

import asyncio

import pytest

from processors.reconcile.credentials import BACKOFF_MAX_S, CredentialError, _CachedToken, backoff_s


class Endpoint:
    """A token endpoint answering from a script: a token, or a failure."""

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.asked = 0

    async def fetch(self) -> tuple[str, float]:
        answer = self.answers[self.asked]
        self.asked += 1
        if answer is None:
            raise CredentialError("the token endpoint https://idp.example/token failed: temporarily_unavailable")
        return answer, 300.0


def test_a_failing_token_endpoint_is_asked_again_only_after_a_growing_backoff() -> None:
    now = [1000.0]
    endpoint = Endpoint([None, None, None, "t-1"])
    cache = _CachedToken(endpoint.fetch, lambda: now[0])

    async def scenario() -> None:
        with pytest.raises(CredentialError):
            await cache.current()
        assert endpoint.asked == 1
        with pytest.raises(CredentialError, match="asked again in"):  # within the backoff: not asked
            await cache.current()
        assert endpoint.asked == 1
        now[0] += 1.0  # the first backoff (0.8-1 s) has passed
        with pytest.raises(CredentialError):
            await cache.current()
        assert endpoint.asked == 2 and cache.failures == 2
        now[0] += 1.5  # the second is 1.6-2 s: not yet
        with pytest.raises(CredentialError, match="asked again in"):
            await cache.current()
        assert endpoint.asked == 2
        now[0] += 0.5
        with pytest.raises(CredentialError):
            await cache.current()
        now[0] += 4.0
        assert await cache.current() == "t-1" and endpoint.asked == 4
        assert cache.failures == 0

    asyncio.run(scenario())


def test_concurrent_callers_share_one_fetch() -> None:
    endpoint = Endpoint(["t-1"])
    cache = _CachedToken(endpoint.fetch, lambda: 0.0)

    async def scenario() -> list[str]:
        return list(await asyncio.gather(*(cache.current() for _ in range(20))))

    assert asyncio.run(scenario()) == ["t-1"] * 20 and endpoint.asked == 1


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 0.8, 1.0), (2, 1.6, 2.0), (3, 3.2, 4.0), (12, 48.0, 60.0)])
def test_backoff_doubles_with_jitter_up_to_a_minute(failures: int, low: float, high: float) -> None:
    waits = [backoff_s(failures) for _ in range(200)]
    assert low <= min(waits) and max(waits) <= high <= BACKOFF_MAX_S

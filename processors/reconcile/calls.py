"""Provider API calls off the Kafka loop: one asyncio loop on its own thread.

The reconciler's main loop owns its consumers and must poll them well within
`max.poll.interval.ms`; a poll of a slow provider (timeouts, retries with backoff, a rate limit)
takes seconds. So calls run here: the main loop starts them and picks up the finished ones on its
next turn, never waiting for one. Everything the calls share (the HTTP client, each source's
poller with its rate limit, the gates) lives on this loop and is touched only by coroutines run
on it. One HTTP client for the reconciler's life: connections (and TLS sessions) to each provider
are reused from tick to tick.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
from prometheus_client import Counter

from processors.model import Expectation
from processors.providers import REGISTRY
from processors.reconcile.polling import Poller, PollOutcome
from processors.settings import ReconcileSettings

_T = TypeVar("_T")


class ProviderCalls:
    def __init__(
        self,
        settings: ReconcileSettings,
        token_requests: Counter,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`token_requests`: kycstream_token_requests_total{provider,outcome}."""
        self.settings = settings
        self.token_requests = token_requests
        self.transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None  # started at the first call
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._pollers: dict[str, Poller] = {}  # by source; their rate limits hold across ticks
        self._gates: dict[str, asyncio.Semaphore] = {}  # by source: polls let into its poller at once

    def poll(self, expectation: Expectation, deadline: float) -> concurrent.futures.Future[PollOutcome | None]:
        """Poll on the source's poller once its gate lets the poll in; None when that was not before
        `deadline` (time.monotonic). The gate keeps at most the source's concurrency of polls in its
        poller, so a fetch for that source waits behind those few, never behind a whole tick."""
        return self._start(self._poll(expectation, deadline))

    def call(self, source: str, call: Callable[[Poller], Awaitable[_T]]) -> concurrent.futures.Future[_T]:
        """`call` with the source's poller (its credentials, rate limit and concurrency), at once."""
        return self._start(self._with_poller(source, call))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the calls still running (their work is due again), close the HTTP client and the
        credentials, then stop the loop and its thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        self._loop, self._thread = None, None

    # --- on the loop --------------------------------------------------------------------------------

    def _start(self, call: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="kycstream-calls", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(call, self._loop)

    async def _poll(self, expectation: Expectation, deadline: float) -> PollOutcome | None:
        source = self.settings.sources[expectation.source]
        assert source.poll is not None
        gate = self._gates.setdefault(expectation.source, asyncio.Semaphore(source.poll.concurrency))
        async with gate:
            if time.monotonic() > deadline:
                return None
            return await self._poller(expectation.source).poll(expectation)

    async def _with_poller(self, source: str, call: Callable[[Poller], Awaitable[_T]]) -> _T:
        return await call(self._poller(source))

    def _poller(self, name: str) -> Poller:
        """The source's poller, shared by polls and fetches."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self.transport)
        if name not in self._pollers:
            source = self.settings.sources[name]
            assert source.poll is not None
            self._pollers[name] = Poller(
                REGISTRY[source.provider],
                source.poll,
                self._client,
                token_requests=self.token_requests,
                transport=self.transport,
            )
        return self._pollers[name]

    async def _aclose(self) -> None:
        running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for poller in self._pollers.values():
            await poller.aclose()
        if self._client is not None:
            await self._client.aclose()
        self._client, self._pollers, self._gates = None, {}, {}

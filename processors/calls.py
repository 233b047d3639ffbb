"""Provider API calls off the Kafka loop: one asyncio loop on its own thread.

The reconciler's main loop owns its consumers and must poll them well within
`max.poll.interval.ms`; a poll of a slow provider (timeouts, retries with backoff, a rate limit)
takes seconds. So calls run here, and the main loop submits them and picks up the finished ones
on its next turn: it never waits for one. Everything the calls share (the HTTP client, the
pollers, their rate limits) lives on this loop and is touched only by coroutines run on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class CallThread:
    def __init__(self, name: str = "kycstream-calls") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Start `call` on the loop; its future is done when it is (its result or its exception)."""
        return asyncio.run_coroutine_threadsafe(call, self._loop)

    def run(self, call: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run `call` on the loop and wait for it (closing what the calls hold)."""
        return self.submit(call).result(timeout)

    def close(self, last: Coroutine[Any, Any, None] | None = None, timeout: float = 10.0) -> None:
        """Cancel the calls still running, run `last` (closing what they shared), then stop the loop
        and its thread."""
        self.run(_cancel_others(), timeout)
        if last is not None:
            self.run(last, timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

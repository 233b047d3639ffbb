"""A token bucket per source, with an injected clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_second
        self.capacity = float(burst or math.ceil(per_second))
        self._tokens = self.capacity
        self._clock = clock
        self._at = clock()

    def take(self) -> float:
        """0.0 when a request may pass, else the seconds until one may."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

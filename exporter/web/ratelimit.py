"""``rate_limit``: the toolkit's token bucket, one per listener, in front of everything else.

The toolkit builds ``rate.NewLimiter(rate.Every(interval), burst)`` from golang.org/x/time/rate
and answers 429 when ``Allow()`` is false, before headers and basic auth. The same bucket:
it holds at most `burst` tokens, starts full, gains one token every `interval`; a request
takes one or is refused. ``burst`` 0 (or less) refuses everything; a negative interval (an
infinite rate in Go) refuses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(
        self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._tokens = float(max(burst, 0))
        self._last = clock()

    def allow(self) -> bool:
        """Take one token if there is one."""
        if self.interval < 0:
            return True
        now = self._clock()
        elapsed = max(now - self._last, 0.0)
        self._last = now
        self._tokens = min(float(self.burst), self._tokens + elapsed / self.interval)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

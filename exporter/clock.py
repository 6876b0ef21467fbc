"""The clock every time-dependent part takes as an argument.

Nothing reads the wall clock behind the caller's back: tests, the backtest and the demo pass
their own clock and move time instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Unix time in seconds, like :func:`time.time`."""

system_clock: Clock = time.time


class ManualClock:
    """A clock that stands still until it is set or advanced: the backtest's (it replays, it
    never waits) and the tests'."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""Spend, top-ups, burn rate and time to exhaustion, from a series of balance observations.

Spend is the sum of observed decreases; an increase is a top-up and never negative spend. So the
burn rate over a window is the spend inside it divided by the span it covers (shorter than the
window while less history exists). A top-up landing between two polls hides the spend of that one
interval: the estimate errs low by at most one poll interval's spend.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from decimal import Decimal

BURN_RATE_WINDOWS: dict[str, float] = {"1h": 3600.0, "6h": 6 * 3600.0, "24h": 24 * 3600.0}


class SpendTracker:
    """Observations of one account's balance in one currency."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.spent_total = Decimal(0)
        self.topups_total = 0
        self.last_balance: Decimal | None = None
        # (time, cumulative spend at that time), oldest first; times strictly increasing.
        self._times: deque[float] = deque()
        self._spent: deque[Decimal] = deque()

    def observe(self, at: float, balance: Decimal) -> None:
        if self._times and at <= self._times[-1]:
            return  # a clock step backwards or a duplicate: keep history monotonic
        if self.last_balance is not None:
            if balance < self.last_balance:
                self.spent_total += self.last_balance - balance
            elif balance > self.last_balance:
                self.topups_total += 1
        self.last_balance = balance
        self._times.append(at)
        self._spent.append(self.spent_total)
        # Keep one sample older than the retention so the longest window stays fully covered.
        while len(self._times) > 2 and self._times[1] <= at - self.retention:
            self._times.popleft()
            self._spent.popleft()

    def burn_rate(self, window: float, now: float) -> float | None:
        """Spend per second over the last ``window`` seconds; None without two observations."""
        if len(self._times) < 2:
            return None
        # The first sample inside the window, but at least the last two samples overall.
        start = min(bisect_left(self._times, now - window), len(self._times) - 2)
        span = self._times[-1] - self._times[start]
        if span <= 0:
            return None
        return float(self._spent[-1] - self._spent[start]) / span

    def exhaustion_seconds(self, window: float, now: float) -> float | None:
        """Seconds until zero at the burn rate of ``window``; +Inf when nothing is spent."""
        rate = self.burn_rate(window, now)
        if rate is None or self.last_balance is None:
            return None
        if self.last_balance <= 0:
            return 0.0
        if rate <= 0:
            return math.inf
        return float(self.last_balance) / rate

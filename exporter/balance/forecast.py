"""Spend, top-ups, burn rate, the usual burn rate and time to exhaustion of one balance.

Spend is the sum of observed decreases; an increase is a top-up and never negative spend. A top-up
landing between two polls hides the spend of that one interval: estimates err low by at most one
poll interval's spend.

The history is compacted to a fixed resolution: the first observation of every 5-minute slot is
kept, plus the latest observation. That is exactly what the history store persists
(:mod:`exporter.balance.store`), so a restarted exporter computes the same numbers as the one
that stopped. Burn rates divide the spend inside a window by the span the kept observations
cover (shorter than the window while less history exists). The forecast projects the balance
over the weekly spend profile (:mod:`exporter.balance.seasonal`).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from exporter.balance.seasonal import HOUR, WEEK, hourly_profile, seconds_until_spent, spend_between

BURN_RATE_WINDOWS: dict[str, float] = {"1h": HOUR, "6h": 6 * HOUR, "24h": 24 * HOUR}
RESOLUTION = 300.0  # seconds: one kept observation per slot
# What the forecast and the spike baseline need: four weeks of profile, plus the baseline's
# widest window (a day) and its one-hour tolerance, plus slack.
MIN_RETENTION = 5 * WEEK
BASELINE_WEEKS = 4
_TRIM_SLACK = 288  # trim old points in batches of about a day, not on every observation


@dataclass(frozen=True, slots=True)
class Observation:
    """The latest observation, with the running totals as of it (what the store persists)."""

    at: float
    balance: Decimal
    spent_total: Decimal
    topups_total: int


def slot_of(at: float) -> int:
    return math.floor(at / RESOLUTION)


class SpendTracker:
    """Observations of one account's balance in one currency."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.spent_total = Decimal(0)
        self.topups_total = 0
        self.last_balance: Decimal | None = None
        # Kept observations, oldest first, times strictly increasing: the first of each slot,
        # and last the latest observation (which may share its slot with the one before it).
        self._times = array("d")
        self._spent = array("d")  # cumulative spend at that time
        self._profile: tuple[tuple[int, int], list[float] | None] | None = None

    @classmethod
    def restore(
        cls, retention: float, points: Iterable[tuple[float, float]], latest: Observation
    ) -> SpendTracker:
        """A tracker as it was: the stored first-of-slot points and the latest observation."""
        tracker = cls(retention)
        for at, spent in points:
            if at < latest.at and (not tracker._times or at > tracker._times[-1]):
                tracker._times.append(at)
                tracker._spent.append(spent)
        tracker._times.append(latest.at)
        tracker._spent.append(float(latest.spent_total))
        tracker.spent_total = latest.spent_total
        tracker.topups_total = latest.topups_total
        tracker.last_balance = latest.balance
        tracker._trim(latest.at, slack=0)
        return tracker

    @property
    def latest(self) -> Observation | None:
        if self.last_balance is None:
            return None
        return Observation(self._times[-1], self.last_balance, self.spent_total, self.topups_total)

    @property
    def last_at(self) -> float | None:
        return self._times[-1] if self._times else None

    def points(self) -> list[tuple[float, float]]:
        """The kept observations as (time, cumulative spend), oldest first."""
        return list(zip(self._times, self._spent, strict=True))

    def observe(self, at: float, balance: Decimal) -> bool:
        """Record a balance; False (and nothing recorded) unless ``at`` is after the last one."""
        if self._times and at <= self._times[-1]:
            return False  # a clock step backwards or a duplicate: keep history monotonic
        if self.last_balance is not None:
            if balance < self.last_balance:
                self.spent_total += self.last_balance - balance
            elif balance > self.last_balance:
                self.topups_total += 1
        self.last_balance = balance
        times, spent = self._times, self._spent
        if len(times) >= 2 and slot_of(times[-2]) == slot_of(times[-1]):
            # The previous latest observation was not the first of its slot: it goes.
            times.pop()
            spent.pop()
        times.append(at)
        spent.append(float(self.spent_total))
        self._trim(at, slack=_TRIM_SLACK)
        return True

    def _trim(self, now: float, slack: int) -> None:
        # Keep one observation at or before the cutoff, so that the oldest window stays covered.
        keep_from = bisect_left(self._times, now - self.retention) - 1
        if keep_from > slack:
            del self._times[:keep_from]
            del self._spent[:keep_from]

    def burn_rate(self, window: float, now: float) -> float | None:
        """Spend per second over the last ``window`` seconds; None without two observations."""
        times = self._times
        if len(times) < 2:
            return None
        # The first observation inside the window, but at least the last two overall.
        start = min(bisect_left(times, now - window), len(times) - 2)
        span = times[-1] - times[start]
        if span <= 0:
            return None
        return (self._spent[-1] - self._spent[start]) / span

    def baseline_rate(self, window: float) -> float | None:
        """What is normal for this time of the week: the spend per second in the same ``window``
        one to four weeks ago, averaged over the weeks the history covers; or, when larger, the
        same average for the window one hour later (a bot that starts its day an hour early, a
        daylight-saving change). None until a week of history exists."""
        times, spent = self._times, self._spent
        if len(times) < 2:
            return None
        now = times[-1]
        best: float | None = None
        for shift in (0.0, HOUR):
            rates = []
            for weeks_back in range(1, BASELINE_WEEKS + 1):
                end = now - weeks_back * WEEK + shift
                start = end - window
                if start < times[0]:
                    break
                rates.append(spend_between(times, spent, start, end) / window)
            if rates:
                average = sum(rates) / len(rates)
                best = average if best is None else max(best, average)
        return best

    def exhaustion_seconds(self, window: float, now: float) -> float | None:
        """Seconds from ``now`` until the balance reaches zero, spending along the weekly profile
        learnt from the last ``window`` of history; +Inf when nothing is spent; None without two
        observations."""
        if len(self._times) < 2 or self.last_balance is None:
            return None
        if self.last_balance <= 0:
            return 0.0
        profile = self._hourly_profile(window)
        if profile is None:
            return None
        latest = self._times[-1]
        seconds = seconds_until_spent(profile, latest, float(self.last_balance))
        return max(0.0, seconds - max(0.0, now - latest))

    def _hourly_profile(self, window: float) -> list[float] | None:
        # The profile changes only when an hour completes or the window's first complete hour
        # moves; before the first complete hour it is the average so far, new at every poll.
        times = self._times
        first = math.ceil(max(times[0], times[-1] - window) / HOUR)
        last = math.floor(times[-1] / HOUR)
        if first >= last:
            return hourly_profile(times, self._spent, window)
        if self._profile is None or self._profile[0] != (first, last):
            self._profile = ((first, last), hourly_profile(times, self._spent, window))
        return self._profile[1]

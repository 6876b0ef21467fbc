"""A week of one account's balance in one currency, for the status page's sparkline, and since
when it has been empty.

Kept in memory, one point per five-minute bucket (the last point of a bucket wins, so the newest
observation is always there): at most about 2,000 points a week. With ``--storage.path`` a
restart refills it from the history store (:mod:`exporter.balance.store`, the first balance of
each five-minute slot), so the sparkline goes on where it stopped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from decimal import Decimal

WEEK = 7 * 86400.0
BUCKET = 300.0


class BalanceHistory:
    def __init__(self, retention: float = WEEK, bucket: float = BUCKET) -> None:
        self.retention = retention
        self.bucket = bucket
        self._times: deque[float] = deque()
        self._balances: deque[Decimal] = deque()
        # Time of the first observation at or below zero since the balance was last above it.
        self.empty_since: float | None = None

    def observe(self, at: float, balance: Decimal) -> None:
        if self._times and at < self._times[-1]:
            return  # a clock step backwards: keep the series in order
        if balance <= 0:
            if self.empty_since is None:
                self.empty_since = at
        else:
            self.empty_since = None
        if self._times and at // self.bucket == self._times[-1] // self.bucket:
            self._times[-1], self._balances[-1] = at, balance
        else:
            self._times.append(at)
            self._balances.append(balance)
        while self._times and self._times[0] < at - self.retention:
            self._times.popleft()
            self._balances.popleft()

    def since(self, start: float) -> list[tuple[float, Decimal]]:
        """The points at or after ``start``, oldest first."""
        first = bisect_left(self._times, start)
        return [(self._times[i], self._balances[i]) for i in range(first, len(self._times))]

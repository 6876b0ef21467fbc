"""Recent proxy traffic per account: the last hour, the last 24 hours, today.

Prometheus answers such questions with ``increase()``; the status page must answer them without
Prometheus. The proxy's counters only grow, so a window is the current totals minus a snapshot
taken at the window's start: snapshots of the cumulative per-account totals every minute, kept
for a little over a day, give every window to within a minute. Before the process has run for a
whole window, the window starts at start-up (when every counter was 0) and says so.

The totals are read in one place, :func:`read_totals`, from this process's proxy metrics; a
proxy that runs in several worker processes points it at totals summed across them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from exporter.clock import Clock
from exporter.proxy.metrics import ProxyMetrics

SNAPSHOT_INTERVAL = 60.0
KEEP = 25 * 3600.0  # the longest window (24 h) plus some


@dataclass(frozen=True)
class Totals:
    """Cumulative counts of one account's proxied traffic (or their increase over a window)."""

    requests: float = 0.0  # upstream responses, every status
    payment_required: float = 0.0  # 402 Insufficient Balance
    errors: float = 0.0  # every other 4xx and 5xx, and requests that got no upstream answer
    tokens: float = 0.0
    cost: Mapping[str, float] = field(default_factory=dict)  # currency -> estimated cost

    def minus(self, earlier: Totals) -> Totals:
        currencies = set(self.cost) | set(earlier.cost)
        return Totals(
            requests=self.requests - earlier.requests,
            payment_required=self.payment_required - earlier.payment_required,
            errors=self.errors - earlier.errors,
            tokens=self.tokens - earlier.tokens,
            cost={c: self.cost.get(c, 0.0) - earlier.cost.get(c, 0.0) for c in sorted(currencies)},
        )


TotalsReader = Callable[[], dict[str, Totals]]


def read_totals(metrics: ProxyMetrics) -> dict[str, Totals]:
    """Cumulative per-account totals from the proxy's counters (this process's registry)."""
    requests: dict[str, float] = {}
    payment: dict[str, float] = {}
    errors: dict[str, float] = {}
    tokens: dict[str, float] = {}
    cost: dict[str, dict[str, float]] = {}
    for sample in _samples(metrics.requests, "_total"):
        account, code = sample.labels["account"], sample.labels["code"]
        requests[account] = requests.get(account, 0.0) + sample.value
        if code == "402":
            payment[account] = payment.get(account, 0.0) + sample.value
        elif code[:1] in ("4", "5"):
            errors[account] = errors.get(account, 0.0) + sample.value
    for sample in _samples(metrics.upstream_errors, "_total"):
        account = sample.labels["account"]
        errors[account] = errors.get(account, 0.0) + sample.value
    for sample in _samples(metrics.tokens, "_total"):
        account = sample.labels["account"]
        tokens[account] = tokens.get(account, 0.0) + sample.value
    for sample in _samples(metrics.cost, "_total"):
        by_currency = cost.setdefault(sample.labels["account"], {})
        currency = sample.labels["currency"]
        by_currency[currency] = by_currency.get(currency, 0.0) + sample.value
    accounts = set(requests) | set(errors) | set(tokens) | set(cost)
    return {
        account: Totals(
            requests=requests.get(account, 0.0),
            payment_required=payment.get(account, 0.0),
            errors=errors.get(account, 0.0),
            tokens=tokens.get(account, 0.0),
            cost=cost.get(account, {}),
        )
        for account in accounts
    }


def _samples(counter: object, suffix: str) -> Iterable:  # prometheus_client Sample objects
    for family in counter.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


@dataclass(frozen=True)
class Window:
    """Traffic per account since ``start`` (later than asked when history is shorter)."""

    start: float
    by_account: dict[str, Totals]

    def of(self, account: str) -> Totals:
        return self.by_account.get(account, Totals())


class RecentTraffic:
    """Snapshots of cumulative totals, and windows computed from them."""

    def __init__(
        self, read: TotalsReader, clock: Clock, interval: float = SNAPSHOT_INTERVAL
    ) -> None:
        self.read = read
        self.clock = clock
        self.interval = interval
        # Every counter is 0 when the process starts: the first snapshot is that zero.
        self._snapshots: deque[tuple[float, dict[str, Totals]]] = deque([(clock(), {})])

    def snapshot(self) -> None:
        now = self.clock()
        if now <= self._snapshots[-1][0]:
            return
        self._snapshots.append((now, self.read()))
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - KEEP:
            self._snapshots.popleft()

    def since(self, start: float) -> Window:
        """Traffic from the last snapshot at or before ``start`` (or the oldest one) to now."""
        base_time, base = self._snapshots[0]
        for taken, totals in self._snapshots:
            if taken > start:
                break
            base_time, base = taken, totals
        current = self.read()
        return Window(
            start=base_time,
            by_account={
                account: totals.minus(base.get(account, Totals()))
                for account, totals in current.items()
            },
        )

    async def run(self) -> None:
        """Take a snapshot every interval, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.snapshot()

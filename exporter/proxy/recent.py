"""Recent proxy traffic per account: the last hour, the last 24 hours, today.

Prometheus answers such questions with ``increase()``; the status page must answer them without
Prometheus. The proxy's counters only grow, so a window is the current totals minus a snapshot
taken at the window's start: snapshots of the cumulative per-account totals every minute, kept
for a little over a day, give every window to within a minute. Before the process has run for a
whole window, the window starts at start-up (when every counter was 0) and says so.

The totals are read in one place, :func:`read_totals`: from this process's proxy metrics, or,
when worker processes serve the proxy (``--proxy.workers``), from their metrics summed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class MetricSource(Protocol):
    """Anything with prometheus_client's ``collect()``: a registry, a custom collector."""

    def collect(self) -> Iterable[Any]: ...


def read_totals(source: ProxyMetrics | MetricSource) -> dict[str, Totals]:
    """Cumulative per-account totals from the proxy's counters: this process's
    :class:`ProxyMetrics`, or a collector of the same families (with ``--proxy.workers``, the
    workers' metrics summed by the main process: exporter.workers.WorkerMetrics)."""
    requests: dict[str, float] = {}
    payment: dict[str, float] = {}
    errors: dict[str, float] = {}
    tokens: dict[str, float] = {}
    cost: dict[str, dict[str, float]] = {}
    for family, sample in _samples(source):
        if not sample.name.endswith("_total"):
            continue
        labels = sample.labels
        account = labels["account"]
        if family == "deepseek_requests":
            requests[account] = requests.get(account, 0.0) + sample.value
            code = labels["code"]
            if code == "402":
                payment[account] = payment.get(account, 0.0) + sample.value
            elif code[:1] in ("4", "5"):
                errors[account] = errors.get(account, 0.0) + sample.value
        elif family == "deepseek_upstream_errors":
            errors[account] = errors.get(account, 0.0) + sample.value
        elif family == "deepseek_tokens":
            tokens[account] = tokens.get(account, 0.0) + sample.value
        else:
            by_currency = cost.setdefault(account, {})
            currency = labels["currency"]
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


_TOTALS_FAMILIES = frozenset(
    {"deepseek_requests", "deepseek_upstream_errors", "deepseek_tokens", "deepseek_estimated_cost"}
)


def _samples(source: ProxyMetrics | MetricSource) -> Iterator[tuple[str, Any]]:
    """(family name, sample) of the families the totals are made of."""
    if isinstance(source, ProxyMetrics):
        counters = (source.requests, source.upstream_errors, source.tokens, source.cost)
        families: Iterable[Any] = (f for counter in counters for f in counter.collect())
    else:
        families = source.collect()
    for family in families:
        if family.name in _TOTALS_FAMILIES:
            for sample in family.samples:
                yield family.name, sample


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

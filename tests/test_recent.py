"""The status page's two memories: recent proxy traffic from snapshots of cumulative totals, and
a week of balance for the sparkline. An injected clock stands in for the days."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from exporter.balance.history import BUCKET, WEEK, BalanceHistory
from exporter.proxy.metrics import ProxyMetrics
from exporter.proxy.recent import KEEP, RecentTraffic, Totals, read_totals
from tests.conftest import FakeClock


def test_read_totals_sums_the_proxy_counters_per_account() -> None:
    metrics = ProxyMetrics(CollectorRegistry(auto_describe=False))
    metrics.requests.labels("prod", "deepseek-flash", "200").inc(5)
    metrics.requests.labels("prod", "deepseek-v4-pro", "200").inc(2)
    metrics.requests.labels("prod", "deepseek-flash", "402").inc(3)
    metrics.requests.labels("prod", "other", "400").inc(1)
    metrics.requests.labels("prod", "deepseek-flash", "503").inc(1)
    metrics.upstream_errors.labels("prod", "timeout").inc(2)
    metrics.tokens.labels("prod", "deepseek-flash", "output").inc(100)
    metrics.tokens.labels("prod", "deepseek-flash", "input_cache_miss").inc(20)
    metrics.cost.labels("prod", "deepseek-flash", "CNY").inc(0.5)
    metrics.cost.labels("prod", "deepseek-v4-pro", "CNY").inc(0.25)
    metrics.requests.labels("unknown", "other", "401").inc(4)
    totals = read_totals(metrics)
    assert totals["prod"] == Totals(
        requests=12, payment_required=3, errors=4, tokens=120, cost={"CNY": 0.75}
    )
    assert totals["unknown"] == Totals(requests=4, errors=4)


class Counting:
    """A totals reader whose counts a test sets."""

    def __init__(self) -> None:
        self.requests = 0.0

    def __call__(self) -> dict[str, Totals]:
        return {"prod": Totals(requests=self.requests, cost={"USD": self.requests / 10})}


def test_windows_come_from_snapshots_and_say_when_they_start() -> None:
    clock, reader = FakeClock(1_000_000.0), Counting()
    started = clock.now
    recent = RecentTraffic(reader, clock)
    reader.requests = 5  # before the first snapshot: counted since start-up
    window = recent.since(clock.now - 3600)
    assert window.start == started and window.of("prod").requests == 5
    for _ in range(120):  # two hours, a snapshot a minute, one request a minute
        clock.advance(60)
        reader.requests += 1
        recent.snapshot()
    reader.requests += 3  # since the last snapshot: in every window
    hour = recent.since(clock.now - 3600)
    assert hour.start == clock.now - 3600
    assert hour.of("prod").requests == 60 + 3
    assert hour.of("prod").cost == {"USD": pytest.approx(6.3)}
    day = recent.since(clock.now - 86400)
    assert day.start == started  # the exporter has run two hours, not a day
    assert day.of("prod").requests == 5 + 120 + 3
    assert day.of("nobody") == Totals()


def test_snapshots_are_kept_for_a_day_and_a_bit() -> None:
    clock, reader = FakeClock(), Counting()
    recent = RecentTraffic(reader, clock)
    for _ in range(int(2 * KEEP / 60)):
        clock.advance(60)
        reader.requests += 1
        recent.snapshot()
    assert len(recent._snapshots) <= KEEP / 60 + 2
    day = recent.since(clock.now - 86400)
    assert day.start == clock.now - 86400
    assert day.of("prod").requests == 86400 / 60


def test_balance_history_keeps_a_week_in_five_minute_buckets() -> None:
    history = BalanceHistory()
    start = 1_000_000_200.0  # on a bucket boundary
    for minute in range(0, 8 * 24 * 60):  # eight days, a poll a minute
        history.observe(start + minute * 60, Decimal(10_000 - minute))
    points = history.since(0)
    now = start + (8 * 24 * 60 - 1) * 60
    assert points[-1] == (now, Decimal(10_000 - (8 * 24 * 60 - 1)))  # the newest is exact
    assert points[0][0] >= now - WEEK
    assert len(points) <= WEEK / BUCKET + 1
    assert [t for t, _ in points] == sorted(t for t, _ in points)
    assert history.since(now - 3600) == [p for p in points if p[0] >= now - 3600]


def test_balance_history_knows_since_when_it_is_empty() -> None:
    history = BalanceHistory()
    history.observe(100.0, Decimal("1.00"))
    assert history.empty_since is None
    history.observe(400.0, Decimal("0"))
    history.observe(700.0, Decimal("0"))
    assert history.empty_since == 400.0
    history.observe(1000.0, Decimal("5.00"))  # topped up
    assert history.empty_since is None
    history.observe(1300.0, Decimal("0"))
    assert history.empty_since == 1300.0

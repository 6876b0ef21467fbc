"""Spend, top-ups, burn rate and exhaustion arithmetic, on explicit timestamps."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from exporter.balance.forecast import MIN_RETENTION, RESOLUTION, SpendTracker
from exporter.balance.seasonal import WEEK

HOUR = 3600.0


def tracker_with(points: list[tuple[float, str]], retention: float = 24 * HOUR) -> SpendTracker:
    tracker = SpendTracker(retention)
    for at, balance in points:
        tracker.observe(at, Decimal(balance))
    return tracker


def test_spend_is_the_sum_of_decreases_and_topups_are_counted_not_subtracted() -> None:
    tracker = tracker_with([(0, "100"), (60, "90"), (120, "85.5"), (180, "185.5"), (240, "180")])
    assert tracker.spent_total == Decimal("20.0")
    assert tracker.topups_total == 1
    assert tracker.last_balance == Decimal("180")


def test_burn_rate_uses_the_covered_span_while_history_is_short() -> None:
    tracker = tracker_with([(0, "100"), (600, "94")])
    # 6 spent over 600 s, whatever the window asked for.
    for window in (HOUR, 6 * HOUR, 24 * HOUR):
        assert tracker.burn_rate(window, now=600) == pytest.approx(0.01)


def test_burn_rate_covers_only_the_window() -> None:
    # Fast spend in the first hour, slow spend in the second.
    points = [(i * 60.0, str(1000 - i * 2)) for i in range(61)]  # 120 spent in hour 1
    points += [(3600 + i * 60.0, str(880 - i * 0.5)) for i in range(1, 61)]  # 30 in hour 2
    tracker = tracker_with(points)
    now = 7200.0
    assert tracker.burn_rate(HOUR, now) == pytest.approx(30 / 3600)
    assert tracker.burn_rate(6 * HOUR, now) == pytest.approx(150 / 7200)


def test_topup_does_not_reduce_the_burn_rate() -> None:
    tracker = tracker_with([(0, "10"), (1800, "9"), (1801, "109"), (3600, "108")])
    assert tracker.burn_rate(HOUR, 3600) == pytest.approx(2 / 3600)


def test_exhaustion_forecast() -> None:
    tracker = tracker_with([(0, "100"), (3600, "90")])
    assert tracker.exhaustion_seconds(6 * HOUR, 3600) == pytest.approx(90 / (10 / 3600))


def test_exhaustion_is_infinite_when_nothing_is_spent_and_zero_when_empty() -> None:
    assert tracker_with([(0, "5"), (60, "5")]).exhaustion_seconds(HOUR, 60) == math.inf
    assert tracker_with([(0, "5"), (60, "0")]).exhaustion_seconds(HOUR, 60) == 0


def test_no_estimate_from_a_single_observation() -> None:
    tracker = tracker_with([(0, "5")])
    assert tracker.burn_rate(HOUR, 0) is None
    assert tracker.exhaustion_seconds(HOUR, 0) is None


def test_history_is_compacted_to_one_observation_per_slot_and_bounded_by_retention() -> None:
    # A poll a minute for ~3.5 days, kept for an hour: one observation per 5-minute slot (plus
    # the latest), old ones dropped in batches of about a day.
    tracker = tracker_with([(i * 60.0, str(10000 - i)) for i in range(5000)], retention=HOUR)
    points = tracker.points()
    assert [t for t, _ in points[:-1]] == [t for t in range(int(points[0][0]), 299_941, 300)]
    assert points[-1] == (299_940.0, 4999.0)
    assert points[0][0] >= 299_940 - HOUR - RESOLUTION - 288 * RESOLUTION
    assert tracker.burn_rate(HOUR, 4999 * 60) == pytest.approx(1 / 60)


def test_the_latest_observation_is_kept_until_the_next_slot_begins() -> None:
    tracker = tracker_with([(0, "10"), (60, "9"), (120, "8")])
    assert tracker.points() == [(0.0, 0.0), (120.0, 2.0)]
    tracker.observe(300, Decimal("7"))  # a new slot: 120 was not its slot's first, it goes
    assert tracker.points() == [(0.0, 0.0), (300.0, 3.0)]
    assert tracker.spent_total == 3


def test_clock_going_backwards_is_ignored() -> None:
    tracker = tracker_with([(100, "10"), (50, "5"), (160, "9")])
    assert tracker.spent_total == Decimal("1")


def test_reload_with_a_longer_forecast_window_extends_kept_history() -> None:
    from dataclasses import replace

    from exporter.balance.poller import BalancePoller
    from exporter.config import AccountConfig, BalanceConfig, DeepSeekConfig, Secret

    account = AccountConfig("prod", Secret("k"))
    balance = BalanceConfig(forecast_window=HOUR)
    poller = BalancePoller(DeepSeekConfig(), balance, (account,))
    state = poller.states["prod"]
    assert state.retention == MIN_RETENTION  # five weeks at least, whatever the window
    state.trackers["CNY"] = SpendTracker(state.retention)
    poller.reconfigure(DeepSeekConfig(), replace(balance, forecast_window=8 * WEEK), (account,))
    assert poller.states["prod"].trackers["CNY"].retention == 8 * WEEK

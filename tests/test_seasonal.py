"""The weekly profile, the projection over it, the usual burn rate, and restoring a tracker."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from exporter.balance.forecast import MIN_RETENTION, SpendTracker
from exporter.balance.seasonal import (
    DAY,
    HOUR,
    WEEK,
    hour_of_week,
    hourly_profile,
    is_weekend,
    seconds_until_spent,
)

MONDAY = datetime(2026, 11, 2, tzinfo=UTC).timestamp()  # 00:00 UTC


def office(at: float) -> float:
    """Spend per hour of a bot busy 09:00-18:00 UTC on weekdays: 2 an hour, else nothing."""
    index = hour_of_week(math.floor(at / HOUR))
    return 2.0 if not is_weekend(index) and 9 <= index % 24 < 18 else 0.0


def feed(tracker: SpendTracker, start: float, end: float, balance: float, step: float = 300.0):
    """Observe a balance spending along office() from start to end; the balance at the end."""
    at = start
    while at <= end:
        tracker.observe(at, Decimal(f"{balance:.2f}"))
        balance -= office(at) * step / HOUR
        at += step
    return balance


def test_hour_of_week_starts_on_monday_utc() -> None:
    assert hour_of_week(int(MONDAY // HOUR)) == 0
    assert hour_of_week(int((MONDAY + WEEK - HOUR) // HOUR)) == 167
    assert not is_weekend(4 * 24 + 23) and is_weekend(5 * 24) and is_weekend(167)


def test_projection_walks_the_profile_hour_by_hour() -> None:
    flat = [1.0] * 168
    assert seconds_until_spent(flat, MONDAY, 5) == pytest.approx(5 * HOUR)
    assert seconds_until_spent(flat, MONDAY + 1800, 1) == pytest.approx(HOUR)
    profile = [office(MONDAY + h * HOUR) for h in range(168)]
    friday_5pm = MONDAY + 4 * DAY + 17 * HOUR
    # One hour left on Friday, the other on Monday 09:00-10:00: over the weekend.
    assert seconds_until_spent(profile, friday_5pm, 4) == pytest.approx(2 * DAY + 17 * HOUR)
    # Ten whole weeks (90 a week) and then 3 on the next Monday morning.
    assert seconds_until_spent(profile, MONDAY, 903) == pytest.approx(10 * WEEK + 10.5 * HOUR)


def test_projection_of_nothing() -> None:
    assert seconds_until_spent([0.0] * 168, MONDAY, 10) == math.inf
    assert seconds_until_spent([1.0] * 168, MONDAY, 0) == 0


def test_a_full_week_gives_every_hour_its_own_value() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    feed(tracker, MONDAY, MONDAY + WEEK + HOUR, 1000)
    profile = hourly_profile(tracker._times, tracker._spent, 28 * DAY)
    assert profile == pytest.approx([office(MONDAY + h * HOUR) for h in range(168)], abs=1e-9)


def test_unseen_hours_come_from_the_same_hour_on_days_of_the_same_kind() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    # Monday and Tuesday only: Wednesday to Friday are weekdays like them; no weekend day has
    # been seen, so weekends are taken from any day (predicting spend that may not come: a
    # forecast errs early, never late).
    feed(tracker, MONDAY, MONDAY + 2 * DAY, 1000)
    profile = hourly_profile(tracker._times, tracker._spent, 28 * DAY)
    assert profile is not None
    assert profile[2 * 24 + 10] == pytest.approx(2.0)  # Wednesday 10:00
    assert profile[5 * 24 + 10] == pytest.approx(2.0)  # Saturday 10:00
    assert profile[3 * 24 + 3] == pytest.approx(0.0)  # Thursday 03:00
    # From Monday to Saturday noon: Saturday's morning is seen (nothing), so Sunday is quiet.
    feed(tracker, MONDAY + 2 * DAY + 300, MONDAY + 5.5 * DAY, 1000)
    profile = hourly_profile(tracker._times, tracker._spent, 28 * DAY)
    assert profile is not None
    assert profile[6 * 24 + 10] == pytest.approx(0.0)  # Sunday 10:00, from Saturday 10:00


def test_in_the_first_hour_the_forecast_is_the_average_so_far() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    tracker.observe(MONDAY + 600, Decimal("100"))
    tracker.observe(MONDAY + 1800, Decimal("99"))  # 1 in 20 minutes: 3 an hour
    assert tracker.exhaustion_seconds(28 * DAY, MONDAY + 1800) == pytest.approx(33 * HOUR)


def test_forecast_follows_the_week_and_ignores_top_ups() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    balance = feed(tracker, MONDAY, MONDAY + 2 * WEEK, 1000)  # 90 a week: 820 left
    tracker.observe(MONDAY + 2 * WEEK + 150, Decimal(f"{balance + 500:.2f}"))  # a top-up
    now = MONDAY + 2 * WEEK + 150
    left = balance + 500  # 1320: 14 weeks (1260) and 60 more, which is 30 office hours
    expected = seconds_until_spent([office(MONDAY + h * HOUR) for h in range(168)], now, left)
    assert tracker.exhaustion_seconds(28 * DAY, now) == pytest.approx(expected, rel=1e-3)
    assert tracker.topups_total == 1 and tracker.spent_total == Decimal("180.00")
    # A scrape a little later counts down from the last observation.
    later = tracker.exhaustion_seconds(28 * DAY, now + 60)
    assert later == pytest.approx(expected - 60, rel=1e-3)


def test_baseline_is_the_same_time_of_the_week_or_the_hour_after() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    feed(tracker, MONDAY, MONDAY + WEEK + 9.5 * HOUR, 1000)  # until Monday 09:30 of week 2
    # A week ago, 08:30-09:30 cost 1; the hour after it (09:30-10:30) cost 2: the larger.
    assert tracker.baseline_rate(HOUR) == pytest.approx(2 / HOUR)
    # The whole window, a week back, must be history: not yet for a day.
    assert tracker.baseline_rate(24 * HOUR) is None
    feed(tracker, MONDAY + WEEK + 9.5 * HOUR + 300, MONDAY + WEEK + DAY + 9.5 * HOUR, 900)
    # Monday 09:30 to Tuesday 09:30 a week ago: 8.5 office hours, then half an hour.
    assert tracker.baseline_rate(24 * HOUR) == pytest.approx(18 / DAY, rel=1e-3)


def test_no_baseline_before_a_week_of_history() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    feed(tracker, MONDAY, MONDAY + WEEK - 600, 1000)
    assert tracker.baseline_rate(HOUR) is None
    tracker.observe(MONDAY + WEEK + HOUR, Decimal("900"))
    assert tracker.baseline_rate(HOUR) is not None


def test_baseline_averages_up_to_four_weeks() -> None:
    tracker = SpendTracker(MIN_RETENTION)
    balance = 10_000.0
    for week in range(6):  # a week's office hours cost 2, 4, 6, ... an hour
        start = MONDAY + week * WEEK
        at = start
        while at < start + WEEK:
            tracker.observe(at, Decimal(f"{balance:.2f}"))
            balance -= office(at) * (week + 1) * 300 / HOUR
            at += 300
    # Monday 10:00 after them: the four weeks before (6, 8, 10, 12 an hour); not the first two.
    now = MONDAY + 6 * WEEK + 10 * HOUR
    tracker.observe(now, Decimal(f"{balance:.2f}"))
    assert tracker.baseline_rate(HOUR) == pytest.approx(((6 + 8 + 10 + 12) / 4) / HOUR, rel=1e-3)


def test_a_restored_tracker_computes_what_the_original_did() -> None:
    original = SpendTracker(MIN_RETENTION)
    feed(original, MONDAY, MONDAY + 9 * DAY + 37 * 60, 1000, step=60)
    latest = original.latest
    assert latest is not None
    copy = SpendTracker.restore(MIN_RETENTION, original.points()[:-1], latest)
    assert copy.points() == original.points()
    assert (copy.spent_total, copy.topups_total, copy.last_balance) == (
        original.spent_total,
        original.topups_total,
        original.last_balance,
    )
    for extra in range(0, 3 * 3600, 60):  # and they go on alike
        at = latest.at + 60 + extra
        for tracker in (original, copy):
            tracker.observe(at, Decimal("900") - Decimal(extra) / 1000)
        now = at + 30
        for window in (HOUR, 6 * HOUR, DAY):
            assert copy.burn_rate(window, now) == original.burn_rate(window, now)
            assert copy.baseline_rate(window) == original.baseline_rate(window)
        assert copy.exhaustion_seconds(28 * DAY, now) == original.exhaustion_seconds(28 * DAY, now)

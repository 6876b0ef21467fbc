"""The weekly spend profile, and projecting a balance forward over it.

Spend has a daily and a weekly cycle: bots are busy in office hours, exactly when DeepSeek charges
its peak price, and quiet at night and at weekends. A forecast from the last few hours predicts
the cycle, not the trend. So the forecast learns what each of the 168 hours of the week (UTC)
costs, from the complete hours of the last ``forecast_window`` of history, and spends the balance
hour by hour along that profile until nothing is left.

An hour of the week that the history does not cover yet is estimated, in this order, from:

1. the same hour of the week (the average over the weeks seen: after a week, every hour);
2. the same hour of the day on days of the same kind (Monday-Friday or Saturday-Sunday, UTC);
3. the same hour of the day on any day seen;
4. the average hourly spend of the whole history (all there is in the first hours).

Spend inside an hour is taken from the cumulative spend between observations, linearly
interpolated at the hour boundaries. Everything here is plain arithmetic on lists of floats.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
HOURS_PER_WEEK = 168
# 1970-01-01, hour 0 of Unix time, was a Thursday: shift so that index 0 is Monday 00:00 UTC.
_EPOCH_HOUR_OF_WEEK = 3 * 24


def hour_of_week(hour: int) -> int:
    """Index 0..167 (Monday 00:00-01:00 UTC is 0) of the hour that starts at ``hour * 3600``."""
    return (hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


def is_weekend(index: int) -> bool:
    """Whether hour-of-week ``index`` falls on a Saturday or Sunday (UTC)."""
    return index // 24 >= 5


def spend_at(times: Sequence[float], spent: Sequence[float], at: float, hint: int = 0) -> float:
    """Cumulative spend at ``at`` (times[0] <= at <= times[-1]), linear between observations.

    ``hint`` is an index at or before the answer's interval, to walk forward from.
    """
    i = max(hint, 0)
    while i + 1 < len(times) and times[i + 1] < at:
        i += 1
    if i + 1 >= len(times) or at <= times[i]:
        return spent[i]
    t0, t1 = times[i], times[i + 1]
    return spent[i] + (spent[i + 1] - spent[i]) * (at - t0) / (t1 - t0)


def spend_between(
    times: Sequence[float], spent: Sequence[float], start: float, end: float
) -> float:
    """Spend in [start, end], which must lie inside the observed span."""
    return spend_at(times, spent, end, bisect_right(times, end) - 1) - spend_at(
        times, spent, start, bisect_right(times, start) - 1
    )


def hourly_profile(
    times: Sequence[float], spent: Sequence[float], window: float
) -> list[float] | None:
    """Spend per hour for each hour of the week, learnt from the last ``window`` of history.

    None with fewer than two observations or an empty span.
    """
    if len(times) < 2:
        return None
    end = times[-1]
    start = max(times[0], end - window)
    if end <= start:
        return None
    sums = [0.0] * HOURS_PER_WEEK
    counts = [0] * HOURS_PER_WEEK
    first, last = math.ceil(start / HOUR), math.floor(end / HOUR)  # complete hours [first, last)
    hint = 0
    previous = None
    for hour in range(first, last + 1):
        at = hour * HOUR
        while hint + 1 < len(times) and times[hint + 1] < at:
            hint += 1
        current = spend_at(times, spent, at, hint)
        if previous is not None:
            index = hour_of_week(hour - 1)
            sums[index] += current - previous
            counts[index] += 1
        previous = current
    complete = sum(counts)
    if complete:
        average = sum(sums) / complete
    else:  # the first hour: only the average since the first observation
        average = (spent[-1] - spend_at(times, spent, start)) / ((end - start) / HOUR)
    return _fill(sums, counts, average)


def _fill(sums: list[float], counts: list[int], average: float) -> list[float]:
    # Pooled sums and counts per hour of the day: for days of each kind, and for any day.
    kind_sums, kind_counts = [0.0] * 48, [0] * 48  # index: hour of day + 24 if weekend
    day_sums, day_counts = [0.0] * 24, [0] * 24
    for index in range(HOURS_PER_WEEK):
        if counts[index]:
            kind = index % 24 + (24 if is_weekend(index) else 0)
            kind_sums[kind] += sums[index]
            kind_counts[kind] += counts[index]
            day_sums[index % 24] += sums[index]
            day_counts[index % 24] += counts[index]
    profile: list[float] = []
    for index in range(HOURS_PER_WEEK):
        kind = index % 24 + (24 if is_weekend(index) else 0)
        if counts[index]:
            profile.append(sums[index] / counts[index])
        elif kind_counts[kind]:
            profile.append(kind_sums[kind] / kind_counts[kind])
        elif day_counts[index % 24]:
            profile.append(day_sums[index % 24] / day_counts[index % 24])
        else:
            profile.append(average)
    return profile


def seconds_until_spent(profile: Sequence[float], start: float, amount: float) -> float:
    """Seconds from ``start`` until spending along ``profile`` adds up to ``amount``.

    +Inf when the profile spends nothing; 0 when there is nothing left to spend.
    """
    if amount <= 0:
        return 0.0
    weekly = sum(profile)
    if weekly <= 0:
        return math.inf
    remaining, at = amount, start
    skipped = False
    while True:
        hour = math.floor(at / HOUR)
        rate = profile[hour_of_week(hour)]  # spend per hour
        hour_end = (hour + 1) * HOUR
        cost = rate * (hour_end - at) / HOUR
        if rate > 0 and cost >= remaining:
            return at + remaining / rate * HOUR - start
        remaining -= cost
        at = hour_end
        if not skipped:  # on an hour boundary now: whole weeks at once, the rest hour by hour
            skipped = True
            weeks = math.ceil(remaining / weekly) - 1
            if weeks > 0:
                remaining -= weeks * weekly
                at += weeks * WEEK

"""Generated balance histories of the shapes real bots have, with the truth to judge a forecast by.

Used by the tests and by ``bench/forecast_bench.py`` to prove the forecast and the alert rules on
weeks of data (``deepseek-exporter backtest`` replays them). A history is sampled every 5 minutes
as the API reports it: amounts rounded to the cent, never below zero. Spend per hour follows the
shape's profile times a random factor between 0.7 and 1.3 (±30 % hourly noise), and, for the
shapes with peak prices, the peak / off-peak price of the bundled price table (double at peak).

Office hours are 09:00-18:00 Beijing time (UTC+8), Monday to Friday. Shapes:

========================  ===============================================================
``flat``                  the same spend every hour; runs out after 30 days
``office_peak``           office hours at peak prices, a tenth of it at night and at weekends
``office_only``           office hours only, nothing at night or at weekends
``office_peak_topup``     ``office_peak``, topped up on day 12, six days before it would have
                          run out
``small_bot``             the seed's small bot: 0.50 USD a day, 15 USD in the account
``runaway_night`` ...     ``office_only`` for three weeks, plus a 3-hour loop spending 10x
``runaway_office``        the weekly average on top, at night (day 15), in office hours at
``runaway_weekend``       peak (day 16) or on a Saturday afternoon (day 19)
``runaway_small``         ``small_bot`` plus 10x its spend for 3 hours on day 16
``runaway_large``         1,000 USD, normally 1.44 a day, a 20x loop for 3 hours on day 17
========================  ===============================================================

The truth for the forecast (:meth:`History.seconds_left`) is the time until the future spend
adds up to the balance at that moment, ignoring later top-ups: the forecast answers "when does
the money run out if nobody tops up", so that is what it is judged against.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import Any

from exporter.proxy.pricing import PriceTable

STEP = 300.0
HOUR = 3600.0
DAY = 86400.0
BEIJING = timedelta(hours=8)
# Monday 2026-11-02 00:00 in Beijing: a week with peak pricing and no Chinese public holiday.
DEFAULT_START = datetime(2026, 11, 2, tzinfo=UTC) - BEIJING
NOISE = 0.3
# The API reports cents: below half a cent the balance shows as 0.00 and the money has run out.
EMPTY = 0.005


@dataclass(frozen=True)
class Runaway:
    """Extra spend of ``factor`` x the normal weekly average rate, for ``hours`` from ``day``
    (days since the start) at ``hour`` Beijing time."""

    day: int
    hour: int
    factor: float
    hours: float = 3.0


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    profile: Callable[[datetime], float]  # relative spend per hour at a (UTC) time, before noise
    currency: str = "CNY"
    # Either the balance runs out after `empty_after_days` (spend scaled to it) or it is
    # `balance` with `per_day` of average spend.
    empty_after_days: float | None = 30.0
    balance: float | None = None
    per_day: float | None = None
    days: float | None = None  # a fixed length; otherwise until the balance runs out
    topup_day: float | None = None  # a top-up on this day (Beijing 10:30), that many days...
    topup_extends_to: float | None = None  # ...before it would run out, lasting until this day
    runaway: Runaway | None = None


def _beijing(at: datetime) -> datetime:
    return at + BEIJING


def _office_hours(at: datetime) -> bool:
    local = _beijing(at)
    return local.weekday() < 5 and 9 <= local.hour < 18


_PRICES = PriceTable.load()


def _workday_afternoon(day: datetime) -> datetime:
    """13:30 Beijing time on the Beijing date of ``day``, or on the Friday before a weekend.

    Balances are sized to run out then: in the middle of office hours, where a forecast that is
    a little off is a little off in time too (at 18:00 on a Friday, spending 1 % less than
    forecast moves the end by a whole weekend)."""
    local = _beijing(day)
    local -= timedelta(days=max(0, local.weekday() - 4))
    afternoon = local.replace(hour=13, minute=30, second=0, microsecond=0)
    return afternoon - BEIJING


def _flat(at: datetime) -> float:
    return 1.0


def _office_peak(at: datetime) -> float:
    tokens = 1.0 if _office_hours(at) else 0.1
    return tokens * (2.0 if _PRICES.is_peak(at) else 1.0)


def _office_only(at: datetime) -> float:
    return 1.0 if _office_hours(at) else 0.0


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("flat", "flat spend", _flat),
        Shape(
            "office_peak",
            "office hours with peak prices, quiet nights and weekends",
            _office_peak,
        ),
        Shape("office_only", "office hours only, nothing at night or at weekends", _office_only),
        Shape(
            "office_peak_topup",
            "the second shape with a top-up on day 12",
            _office_peak,
            empty_after_days=18.0,
            topup_day=12.0,
            topup_extends_to=30.0,
        ),
        Shape(
            "small_bot",
            "the seed's small bot (0.50 a day, 15 in the account)",
            _flat,
            currency="USD",
            empty_after_days=None,
            balance=15.0,
            per_day=0.5,
        ),
        Shape(
            "runaway_night",
            "office hours only plus a 3-hour runaway loop (10x the weekly average) at night",
            _office_only,
            days=21.0,
            runaway=Runaway(day=15, hour=2, factor=10.0),
        ),
        Shape(
            "runaway_office",
            "office hours only plus a 3-hour runaway loop (10x the weekly average) "
            "in office hours, at peak prices",
            _office_only,
            days=21.0,
            runaway=Runaway(day=16, hour=10, factor=10.0),
        ),
        Shape(
            "runaway_weekend",
            "office hours only plus a 3-hour runaway loop (10x the weekly average) "
            "on a Saturday afternoon",
            _office_only,
            days=21.0,
            runaway=Runaway(day=19, hour=14, factor=10.0),
        ),
        Shape(
            "runaway_small",
            "the small bot plus a 3-hour runaway loop (10x its spend)",
            _flat,
            currency="USD",
            empty_after_days=None,
            balance=15.0,
            per_day=0.5,
            days=21.0,
            runaway=Runaway(day=16, hour=20, factor=10.0),
        ),
        Shape(
            "runaway_large",
            "a well-funded account (1,000, normally 1.44 a day) with a 20x runaway for 3 hours",
            _flat,
            currency="USD",
            empty_after_days=None,
            balance=1000.0,
            per_day=1.44,
            days=21.0,
            runaway=Runaway(day=17, hour=11, factor=20.0),
        ),
    )
}


@dataclass
class History:
    """One generated history: what the API reported every 5 minutes, and what really happened."""

    shape: Shape
    account: str
    start: float  # Unix time of the first sample
    step: float  # seconds between samples
    times: list[float]  # sample times, every `step` seconds
    balances: list[Decimal]  # reported: rounded to the cent, never below zero
    exact: list[float]  # the exact balance at each sample time
    spend: list[float]  # exact spend in step i (from start + i * step), over a longer horizon
    topups: list[tuple[float, Decimal]] = field(default_factory=list)
    runaways: list[tuple[float, float]] = field(default_factory=list)  # [start, end) Unix time
    exhausted_at: float | None = None  # when the balance reached 0.00
    _cumulative: list[float] | None = field(default=None, repr=False)

    @property
    def currency(self) -> str:
        return self.shape.currency

    def seconds_left(self, i: int) -> float | None:
        """True seconds from sample ``i`` until the money runs out without a later top-up; None
        beyond the generated horizon."""
        left = self.exact[i] - EMPTY
        if left <= 0:
            return 0.0
        if self._cumulative is None:
            self._cumulative = [0.0, *accumulate(self.spend)]
        cumulative = self._cumulative
        first = round((self.times[i] - self.start) / self.step)
        target = cumulative[first] + left
        j = bisect_left(cumulative, target) - 1  # spend[j] takes the total past the target
        if j >= len(self.spend):
            return None
        fraction = (target - cumulative[j]) / self.spend[j]
        return (j - first + fraction) * self.step

    def rows(self) -> Iterator[tuple[float, str, str, Decimal]]:
        """(timestamp, account, currency, balance): the rows of a backtest CSV."""
        for at, balance in zip(self.times, self.balances, strict=True):
            yield at, self.account, self.currency, balance

    def csv(self) -> str:
        lines = ["timestamp,account,currency,balance"]
        lines += [f"{at:.0f},{a},{c},{b}" for at, a, c, b in self.rows()]
        return "\n".join(lines) + "\n"


def generate(
    name: str,
    *,
    start: datetime = DEFAULT_START,
    seed: int = 1,
    account: str | None = None,
    horizon_days: float = 45.0,
    step: float = STEP,
    **changes: Any,
) -> History:
    """The history of shape ``name``, starting at ``start``; the same seed, the same history.

    ``step`` other than 5 minutes and ``changes`` to the shape (``empty_after_days=16``, ...)
    make shorter, coarser histories for fast tests.
    """
    shape = replace(SHAPES[name], **changes)
    rng = random.Random(f"{name}/{seed}/{start.isoformat()}")
    t0 = start.timestamp()
    days = shape.days or shape.topup_extends_to or shape.empty_after_days or 30.0
    horizon = max(days, horizon_days) * DAY
    steps = int(horizon // step)

    # Relative spend per step: the profile, constant within an hour, times the hour's noise.
    base: list[float] = []
    noise = 1.0
    for i in range(steps):
        at = start + timedelta(seconds=i * step)
        if i % int(HOUR // step) == 0:
            noise = rng.uniform(1 - NOISE, 1 + NOISE)
        base.append(shape.profile(at) * noise)
    weekly_average = sum(base[: int(7 * DAY // step)]) / (7 * DAY / step)  # per step

    def steps_until(day: float) -> int:
        return round(
            (_workday_afternoon(start + timedelta(days=day)) - start).total_seconds() / step
        )

    if shape.per_day is not None:
        scale = shape.per_day / (weekly_average * DAY / step)
        opening = float(shape.balance or 0)
    else:
        assert shape.empty_after_days is not None
        scale = 1.0
        opening = sum(base[: steps_until(shape.empty_after_days)])
    spend = [b * scale for b in base]

    runaways: list[tuple[float, float]] = []
    if shape.runaway is not None:
        r = shape.runaway
        local_midnight = start + timedelta(days=r.day)
        begin = local_midnight + timedelta(hours=r.hour)
        first = round((begin - start).total_seconds() / step)
        extra = r.factor * weekly_average * scale
        for i in range(first, first + round(r.hours * HOUR / step)):
            spend[i] += extra
        runaways.append((begin.timestamp(), begin.timestamp() + r.hours * HOUR))

    topups: list[tuple[int, float]] = []  # (step after which it lands, amount)
    if shape.topup_day is not None:
        assert shape.topup_extends_to is not None and shape.empty_after_days is not None
        lands = start + timedelta(days=shape.topup_day, hours=10.5)
        lands_in = round((lands - start).total_seconds() / step)
        amount = sum(
            spend[steps_until(shape.empty_after_days) : steps_until(shape.topup_extends_to)]
        )
        topups.append((lands_in, amount))

    times: list[float] = []
    balances: list[Decimal] = []
    exact: list[float] = []
    landed: list[tuple[float, Decimal]] = []
    balance = opening
    exhausted_at = None
    limit = int(days * DAY // step) if shape.days else steps
    for i in range(limit + 1):
        times.append(t0 + i * step)
        exact.append(balance)
        balances.append(Decimal(f"{max(balance, 0.0):.2f}"))
        if balance < EMPTY or i == limit or i >= len(spend):
            break
        if balance - spend[i] < EMPTY and exhausted_at is None:
            exhausted_at = t0 + (i + (balance - EMPTY) / spend[i]) * step
        balance -= spend[i]
        for lands_in, amount in topups:
            if lands_in == i:  # lands in the middle of this step: its spend is hidden from a poller
                balance += amount
                landed.append((t0 + (i + 0.5) * step, Decimal(f"{amount:.2f}")))
    return History(
        shape=shape,
        account=account or name.replace("_", "-"),
        start=t0,
        step=step,
        times=times,
        balances=balances,
        exact=exact,
        spend=spend,
        topups=landed,
        runaways=runaways,
        exhausted_at=exhausted_at,
    )

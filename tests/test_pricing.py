"""Price table: the bundled data against the API sheet, strict validation, exact arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.proxy.pricing import Price, PriceTable, PricingError
from exporter.proxy.usage import Usage

TESTDATA = Path(__file__).parent / "testdata" / "pricing"
BUNDLED = Path(__file__).parent.parent / "exporter" / "data" / "prices.yaml"

TUESDAY = datetime(2026, 11, 3, tzinfo=UTC)  # a Tuesday after the 2026-09-10 table took effect
SATURDAY = datetime(2026, 11, 7, tzinfo=UTC)
# 1 M cache hits, 2 M misses, 0.5 M output of which 0.4 M reasoning: easy to check by hand.
USAGE = Usage(
    input_cache_hit=1_000_000, input_cache_miss=2_000_000, output=500_000, reasoning=400_000
)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def at(day: datetime, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return day + timedelta(hours=hour, minutes=minute, seconds=second)


def D(text: str) -> Decimal:
    return Decimal(text)


# --- the bundled table is the sheet ----------------------------------------------------------


def test_models_are_the_canonical_names(table: PriceTable) -> None:
    assert table.models == {
        "deepseek-chat",
        "deepseek-reasoner",
        "deepseek-flash",
        "deepseek-v4-pro",
    }


def test_canonical_model(table: PriceTable) -> None:
    assert table.canonical_model("deepseek-flash") == "deepseek-flash"
    assert table.canonical_model("deepseek-v4-flash") == "deepseek-flash"
    assert table.canonical_model("deepseek-v4-pro") == "deepseek-v4-pro"
    assert table.canonical_model("DeepSeek-Flash") is None  # case-sensitive, as the API is
    assert table.canonical_model("gpt-4o") is None
    assert "deepseek-v4-flash" not in table.models


def test_explicit_path_loads_the_same_table(table: PriceTable) -> None:
    other = PriceTable.load(BUNDLED)
    assert other.models == table.models
    assert other.price("deepseek-flash", "CNY", at(TUESDAY, 2)) == table.price(
        "deepseek-flash", "CNY", at(TUESDAY, 2)
    )
    assert PriceTable.load(str(BUNDLED)).models == table.models


@pytest.mark.parametrize(
    ("instant", "peak"),
    [
        (at(TUESDAY, 2), True),
        (at(TUESDAY, 5), False),
        (at(SATURDAY, 2), False),
        (at(SATURDAY + timedelta(days=1), 7), False),  # Sunday
        (at(TUESDAY, 0, 59, 59), False),
        (at(TUESDAY, 1), True),
        (at(TUESDAY, 3, 59, 59), True),
        (at(TUESDAY, 4), False),
        (at(TUESDAY, 6), True),
        (at(TUESDAY, 9, 59, 59), True),
        (at(TUESDAY, 10), False),
        (at(TUESDAY, 23, 30), False),
        (datetime(2026, 8, 14, 2, tzinfo=UTC), False),  # Friday before peak billing began
        (datetime(2026, 8, 17, 2, tzinfo=UTC), True),  # Monday after
        # 2025 night discount: standard ("peak") 00:30-16:30 UTC every day
        (datetime(2025, 3, 1, 12, tzinfo=UTC), True),
        (datetime(2025, 3, 1, 20, tzinfo=UTC), False),
        (datetime(2025, 3, 2, 0, 15, tzinfo=UTC), False),
        (datetime(2025, 2, 26, 16, 29, tzinfo=UTC), False),  # no schedule yet: flat
        (datetime(2025, 2, 27, 0, 29, tzinfo=UTC), False),  # first discount window
        (datetime(2025, 1, 1, 20, tzinfo=UTC), False),  # before any schedule
        (datetime(2025, 10, 1, 12, tzinfo=UTC), False),  # flat period
    ],
)
def test_is_peak(table: PriceTable, instant: datetime, peak: bool) -> None:
    assert table.is_peak(instant) is peak


def test_is_peak_judges_any_time_zone_in_utc(table: PriceTable) -> None:
    beijing = timezone(timedelta(hours=8))
    assert table.is_peak(datetime(2026, 11, 3, 10, tzinfo=beijing))  # Tue 02:00 UTC
    assert not table.is_peak(datetime(2026, 11, 3, 8, 30, tzinfo=beijing))  # Tue 00:30 UTC


def test_naive_datetime_is_refused(table: PriceTable) -> None:
    naive = datetime(2026, 11, 3, 2)
    with pytest.raises(ValueError, match="time zone"):
        table.is_peak(naive)
    with pytest.raises(ValueError, match="time zone"):
        table.price("deepseek-flash", "USD", naive)
    with pytest.raises(ValueError, match="time zone"):
        table.cost("deepseek-flash", "USD", USAGE, naive)


@pytest.mark.parametrize(
    ("model", "currency", "instant", "expected"),
    [
        ("deepseek-flash", "USD", at(TUESDAY, 2), ("0.006", "0.30", "1.20")),
        ("deepseek-flash", "USD", at(TUESDAY, 5), ("0.003", "0.15", "0.60")),
        ("deepseek-flash", "USD", at(SATURDAY, 2), ("0.003", "0.15", "0.60")),
        ("deepseek-flash", "CNY", at(TUESDAY, 2), ("0.04", "2", "8")),
        ("deepseek-flash", "CNY", at(TUESDAY, 5), ("0.02", "1", "4")),
        ("deepseek-v4-pro", "USD", at(TUESDAY, 2), ("0.044", "1.32", "3.96")),
        ("deepseek-v4-pro", "USD", at(SATURDAY, 2), ("0.022", "0.66", "1.98")),
        ("deepseek-v4-pro", "CNY", at(TUESDAY, 7), ("0.30", "9", "27")),
        ("deepseek-v4-pro", "CNY", at(TUESDAY, 5), ("0.15", "4.5", "13.5")),
        ("deepseek-v4-flash", "USD", at(TUESDAY, 2), ("0.006", "0.30", "1.20")),
    ],
)
def test_current_prices(
    table: PriceTable, model: str, currency: str, instant: datetime, expected: tuple[str, ...]
) -> None:
    assert table.price(model, currency, instant) == Price(*map(D, expected))


@pytest.mark.parametrize(
    ("model", "currency", "instant", "expected"),
    [
        # (1 M x hit + 2 M x miss + 0.5 M x output) / 1 M; reasoning is inside output
        ("deepseek-flash", "USD", at(TUESDAY, 2), "1.206"),  # 0.006 + 0.60 + 0.60
        ("deepseek-flash", "USD", at(TUESDAY, 5), "0.603"),
        ("deepseek-flash", "USD", at(SATURDAY, 2), "0.603"),
        ("deepseek-flash", "CNY", at(TUESDAY, 2), "8.04"),  # 0.04 + 4 + 4
        ("deepseek-flash", "CNY", at(SATURDAY, 2), "4.02"),
        ("deepseek-v4-pro", "USD", at(TUESDAY, 9), "4.664"),  # 0.044 + 2.64 + 1.98
        ("deepseek-v4-pro", "USD", at(TUESDAY, 12), "2.332"),
        ("deepseek-v4-pro", "CNY", at(TUESDAY, 1), "31.8"),  # 0.30 + 18 + 13.5
        ("deepseek-v4-pro", "CNY", at(TUESDAY, 0), "15.9"),
        ("deepseek-v4-flash", "CNY", at(TUESDAY, 2), "8.04"),  # legacy alias
    ],
)
def test_cost(
    table: PriceTable, model: str, currency: str, instant: datetime, expected: str
) -> None:
    assert table.cost(model, currency, USAGE, instant) == D(expected)


def test_cost_does_not_add_reasoning_again(table: PriceTable) -> None:
    without = Usage(USAGE.input_cache_hit, USAGE.input_cache_miss, USAGE.output, 0)
    instant = at(TUESDAY, 2)
    assert table.cost("deepseek-flash", "USD", USAGE, instant) == table.cost(
        "deepseek-flash", "USD", without, instant
    )


def test_cost_of_small_request_is_exact(table: PriceTable) -> None:
    # 3 hit, 7 miss, 11 output at flash peak USD: 3*0.006 + 7*0.30 + 11*1.20 = 15.318 per 1M
    cost = table.cost("deepseek-flash", "USD", Usage(3, 7, 11, 5), at(TUESDAY, 2))
    assert cost == D("0.000015318")


def test_cost_ignores_callers_decimal_precision(table: PriceTable) -> None:
    huge = Usage(10**30 + 1, 10**30 + 3, 10**30 + 7, 0)
    with localcontext(prec=5):
        cost = table.cost("deepseek-flash", "USD", huge, at(TUESDAY, 2))
    # 1.506e24 + (0.006 + 0.90 + 8.40)e-6: 31 significant digits, none lost
    assert cost == D("1506000000000000000000000.000009306")


@pytest.mark.parametrize(
    ("model", "instant", "expected"),
    [
        ("deepseek-chat", datetime(2025, 1, 1, 20, tzinfo=UTC), ("0.07", "0.27", "1.10")),
        ("deepseek-chat", datetime(2025, 2, 26, 16, 29, tzinfo=UTC), ("0.07", "0.27", "1.10")),
        ("deepseek-chat", datetime(2025, 2, 26, 16, 30, tzinfo=UTC), ("0.035", "0.135", "0.55")),
        ("deepseek-chat", datetime(2025, 3, 1, 12, tzinfo=UTC), ("0.07", "0.27", "1.10")),
        ("deepseek-chat", datetime(2025, 3, 1, 20, tzinfo=UTC), ("0.035", "0.135", "0.55")),
        ("deepseek-reasoner", datetime(2025, 1, 20, tzinfo=UTC), ("0.14", "0.55", "2.19")),
        ("deepseek-reasoner", datetime(2025, 3, 1, 12, tzinfo=UTC), ("0.14", "0.55", "2.19")),
        (
            "deepseek-reasoner",
            datetime(2025, 3, 1, 20, tzinfo=UTC),
            ("0.035", "0.1375", "0.5475"),  # -75 %
        ),
        ("deepseek-chat", datetime(2025, 9, 5, 20, tzinfo=UTC), ("0.07", "0.56", "1.68")),
        ("deepseek-reasoner", datetime(2025, 9, 10, tzinfo=UTC), ("0.07", "0.56", "1.68")),
        ("deepseek-chat", datetime(2025, 9, 29, tzinfo=UTC), ("0.028", "0.28", "0.42")),
        ("deepseek-reasoner", datetime(2026, 7, 23, 23, tzinfo=UTC), ("0.028", "0.28", "0.42")),
        ("deepseek-flash", datetime(2026, 4, 25, tzinfo=UTC), ("0.028", "0.14", "0.28")),
        ("deepseek-flash", datetime(2026, 4, 26, tzinfo=UTC), ("0.0028", "0.14", "0.28")),
        ("deepseek-v4-flash", datetime(2026, 5, 1, tzinfo=UTC), ("0.0028", "0.14", "0.28")),
    ],
)
def test_price_history(
    table: PriceTable, model: str, instant: datetime, expected: tuple[str, ...]
) -> None:
    assert table.price(model, "USD", instant) == Price(*map(D, expected))


def test_historical_cost(table: PriceTable) -> None:
    usage = Usage(1_000_000, 1_000_000, 1_000_000, 0)
    assert table.cost("deepseek-chat", "USD", usage, datetime(2025, 3, 1, 12, tzinfo=UTC)) == D(
        "1.44"
    )


@pytest.mark.parametrize(
    ("model", "currency", "instant"),
    [
        ("deepseek-chat", "USD", datetime(2026, 7, 24, tzinfo=UTC)),  # retired
        ("deepseek-reasoner", "USD", datetime(2026, 11, 3, 2, tzinfo=UTC)),  # retired
        ("deepseek-chat", "USD", datetime(2024, 12, 25, 23, 59, tzinfo=UTC)),  # before launch
        ("deepseek-reasoner", "USD", datetime(2025, 1, 19, tzinfo=UTC)),
        ("deepseek-flash", "USD", datetime(2026, 4, 23, tzinfo=UTC)),
        ("deepseek-v4-pro", "USD", datetime(2026, 9, 9, 23, tzinfo=UTC)),
        ("deepseek-flash", "USD", datetime(2026, 8, 20, 2, tzinfo=UTC)),  # not published
        ("deepseek-chat", "CNY", datetime(2025, 3, 1, tzinfo=UTC)),  # no CNY in the sheet
        ("deepseek-flash", "CNY", datetime(2026, 5, 1, tzinfo=UTC)),
        ("deepseek-flash", "EUR", at(TUESDAY, 2)),  # unknown currency
        ("deepseek-flash", "usd", at(TUESDAY, 2)),
        ("gpt-4o", "USD", at(TUESDAY, 2)),  # unknown model
        ("Deepseek-flash", "USD", at(TUESDAY, 2)),
    ],
)
def test_no_price(table: PriceTable, model: str, currency: str, instant: datetime) -> None:
    assert table.price(model, currency, instant) is None
    assert table.cost(model, currency, USAGE, instant) is None


@given(
    hit=st.integers(min_value=0, max_value=10**40),
    miss=st.integers(min_value=0, max_value=10**40),
    output=st.integers(min_value=0, max_value=10**40),
    reasoning=st.integers(min_value=0, max_value=10**40),
    model=st.sampled_from(["deepseek-flash", "deepseek-v4-pro", "deepseek-v4-flash"]),
    currency=st.sampled_from(["USD", "CNY"]),
    instant=st.datetimes(
        min_value=datetime(2026, 9, 10), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
)
def test_cost_is_exact_and_non_negative(
    hit: int, miss: int, output: int, reasoning: int, model: str, currency: str, instant: datetime
) -> None:
    table = PriceTable.load()  # cheap enough, and a module fixture does not mix with @given
    price = table.price(model, currency, instant)
    assert price is not None
    cost = table.cost(model, currency, Usage(hit, miss, output, reasoning), instant)
    assert cost is not None
    assert cost >= 0
    with localcontext(prec=200):  # wide enough that nothing below rounds
        expected = (
            hit * price.input_cache_hit + miss * price.input_cache_miss + output * price.output
        ) / 1_000_000
    assert cost == expected


# --- strict validation: one fixture per error ------------------------------------------------

ERRORS = {
    "alias_shadows_model.yaml": "aliases.deepseek-flash: is already a model name",
    "alias_unknown_model.yaml": "aliases.deepseek-v4-flash: unknown model 'deepseek-flsh'",
    "aliases_not_mapping.yaml": "aliases: must be a mapping, got a list",
    "dates_duplicate.yaml": "models.deepseek-flash.prices[1].from: duplicates "
    "models.deepseek-flash.prices[0].from (2026-09-10)",
    "dates_unsorted.yaml": "models.deepseek-flash.prices[1].from: must be later than "
    "models.deepseek-flash.prices[0].from (2026-09-10)",
    "duplicate_key.yaml": "line 7: duplicate key 'version'",
    "empty.yaml": "must be a mapping, got nothing",
    "entry_not_mapping.yaml": "models.deepseek-flash.prices[0]: must be a mapping, got 2026-09-10",
    "entry_unknown_key.yaml": "models.deepseek-flash.prices[0].eur: unknown key",
    "from_impossible_date.yaml": "line 5: invalid date '2026-13-01': month must be in 1..12",
    "from_missing.yaml": "models.deepseek-flash.prices[0].from: is required",
    "from_naive_timestamp.yaml": "models.deepseek-flash.prices[0].from: "
    "must be a date or a timestamp with a time zone",
    "from_not_a_date.yaml": "models.deepseek-flash.prices[0].from: "
    "must be a date or a timestamp with a time zone",
    "model_name_space.yaml": "models.deepseek flash: must be a model name without white space, "
    "got 'deepseek flash'",
    "model_unknown_key.yaml": "models.deepseek-flash.price: unknown key",
    "models_empty.yaml": "models: must not be empty",
    "not_a_mapping.yaml": "must be a mapping, got a list",
    "note_not_string.yaml": "models.deepseek-flash.prices[0].note: must be a string, got a list",
    "price_bool.yaml": "models.deepseek-flash.prices[0].usd.output: must be a non-negative number",
    "price_infinite.yaml": "models.deepseek-flash.prices[0].usd.output: "
    "must be a non-negative number",
    "price_missing_field.yaml": "models.deepseek-flash.prices[0].usd.output: is required",
    "price_negative.yaml": "models.deepseek-flash.prices[0].usd.output: "
    "must be a non-negative number",
    "price_not_mapping.yaml": "models.deepseek-flash.prices[0].usd: must be a mapping, got 1.20",
    "price_string.yaml": "models.deepseek-flash.prices[0].usd.output: "
    "must be a non-negative number",
    "price_unknown_field.yaml": "models.deepseek-flash.prices[0].usd.input_cache_hits: unknown key",
    "per_request_bad_tool.yaml": "per_request.web-search.tool: must be a tool name, "
    "got 'web search'",
    "per_request_dates_unsorted.yaml": "per_request.web-search.tool_call_prices[1].from: "
    "must be later than per_request.web-search.tool_call_prices[0].from (2026-02-01)",
    "per_request_is_a_model.yaml": "per_request.m: is already a model name",
    "per_request_negative_price.yaml": "per_request.web-search.prices[0].cny: "
    "must be a non-negative number",
    "per_request_path_claimed_twice.yaml": "per_request.web-fetch: /search is already billed "
    "as web-search",
    "per_request_relative_path.yaml": "per_request.web-search.paths[0]: "
    "must be an absolute path, got 'search'",
    "per_request_unknown_key.yaml": "per_request.web-search.price: unknown key",
    "per_request_unseen.yaml": "per_request.web-search: needs paths or a tool, "
    "or the proxy never sees it",
    "prices_empty.yaml": "models.deepseek-flash.prices: must not be empty",
    "prices_not_list.yaml": "models.deepseek-flash.prices: must be a list, got a mapping",
    "schedule_bad_offset.yaml": 'peak_schedule[0].utc_offset: must be a UTC offset "+HH:MM" '
    "or \"-HH:MM\", got '+8'",
    "schedule_bad_day.yaml": "peak_schedule[0].days[1]: must be one of "
    "mon, tue, wed, thu, fri, sat, sun, got 'monday'",
    "schedule_missing_hours.yaml": "peak_schedule[0].hours: is required",
    "schedule_not_list.yaml": "peak_schedule: must be a list, got a mapping",
    "schedule_off_peak_date_timestamp.yaml": "peak_schedule[0].off_peak_dates[0]: "
    "must be a date (YYYY-MM-DD)",
    "schedule_unknown_key.yaml": "peak_schedule[0].timezone: unknown key",
    "schedule_unsorted.yaml": "peak_schedule[1].from: must be later than "
    "peak_schedule[0].from (2026-08-16)",
    "schedule_window_past_midnight.yaml": 'peak_schedule[0].hours[0]: must be "HH:MM-HH:MM" '
    "(local time, start before end, end at most 24:00), got '16:30-24:30'",
    "schedule_window_reversed.yaml": 'peak_schedule[0].hours[1]: must be "HH:MM-HH:MM" '
    "(local time, start before end, end at most 24:00), got '10:00-06:00'",
    "schedule_window_unquoted.yaml": 'peak_schedule[0].hours[0]: must be "HH:MM-HH:MM" '
    "(local time, start before end, end at most 24:00), got 600",
    "split_bad_off_peak_price.yaml": "models.deepseek-flash.prices[0].usd.off_peak."
    "input_cache_miss: must be a non-negative number",
    "split_missing_off_peak.yaml": "models.deepseek-flash.prices[0].usd.off_peak: is required",
    "split_mixed_with_flat.yaml": "models.deepseek-flash.prices[0].usd.output: unknown key",
    "unknown_top_key.yaml": "currency: unknown key",
    "version_missing.yaml": "version: is required",
    "version_wrong.yaml": "version: must be 1, got 2",
    "yaml_syntax.yaml": "line 3: expected the node content, but found '<stream end>'",
}


def test_every_fixture_has_an_expected_error() -> None:
    assert sorted(p.name for p in TESTDATA.glob("*.yaml")) == sorted(ERRORS)


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_invalid_file(name: str) -> None:
    path = TESTDATA / name
    with pytest.raises(PricingError) as caught:
        PriceTable.load(path)
    assert str(caught.value) == f"{path}: {ERRORS[name]}"
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PricingError, match=r"^.*nope\.yaml: cannot read: "):
        PriceTable.load(path)


def test_minimal_override_file(tmp_path: Path) -> None:
    """A user's own table: flat price, integer prices, a timestamp `from`, an alias."""
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\n"
        "models:\n"
        "  m:\n"
        "    prices:\n"
        "      - from: 2030-01-01T08:00:00+08:00\n"
        "        cny: {input_cache_hit: 0, input_cache_miss: 1, output: 2_000}\n"
        "aliases:\n"
        "  m-legacy: m\n"
    )
    table = PriceTable.load(path)
    assert table.models == {"m"}
    assert table.price("m", "CNY", datetime(2029, 12, 31, 23, 59, tzinfo=UTC)) is None
    assert table.price("m-legacy", "CNY", datetime(2030, 1, 1, tzinfo=UTC)) == Price(
        D("0"), D("1"), D("2000")
    )
    assert table.price("m", "USD", datetime(2030, 1, 1, tzinfo=UTC)) is None
    assert not table.is_peak(datetime(2030, 1, 1, 2, tzinfo=UTC))  # no schedule: never peak


def test_off_peak_dates(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\n"
        "peak_schedule:\n"
        "  - from: 2026-08-16\n"
        "    days: [mon, tue, wed, thu, fri]\n"
        '    hours: ["01:00-04:00"]\n'
        "    off_peak_dates: [2026-11-03]\n"
        "models:\n"
        "  m:\n"
        "    prices:\n"
        "      - from: 2026-01-01\n"
        "        usd:\n"
        "          peak: {input_cache_hit: 2, input_cache_miss: 2, output: 2}\n"
        "          off_peak: {input_cache_hit: 1, input_cache_miss: 1, output: 1}\n"
    )
    table = PriceTable.load(path)
    assert not table.is_peak(at(TUESDAY, 2))
    assert table.is_peak(at(TUESDAY + timedelta(days=1), 2))
    assert table.cost("m", "USD", Usage(0, 1_000_000, 0, 0), at(TUESDAY, 2)) == 1


# --- holidays and local time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "peak"),
    [
        # National Day: Thursday 2026-10-01, 10:00 in Beijing, inside a weekday peak window.
        (datetime(2026, 10, 1, 2, tzinfo=UTC), False),
        (datetime(2026, 10, 7, 7, tzinfo=UTC), False),  # last day off
        (datetime(2026, 10, 8, 2, tzinfo=UTC), True),  # back to work
        (datetime(2026, 10, 9, 2, tzinfo=UTC), True),  # an ordinary Friday
        (datetime(2026, 9, 25, 1, 30, tzinfo=UTC), False),  # Mid-Autumn, Friday
        (datetime(2026, 9, 24, 1, 30, tzinfo=UTC), True),
        # 12:00-14:00 Beijing is lunch: off-peak between the two windows.
        (datetime(2026, 10, 9, 4, 30, tzinfo=UTC), False),
        (datetime(2026, 10, 9, 6, tzinfo=UTC), True),
        (datetime(2026, 10, 9, 9, 59, tzinfo=UTC), True),
        (datetime(2026, 10, 9, 10, tzinfo=UTC), False),
    ],
)
def test_holidays_are_off_peak_in_beijing_time(
    table: PriceTable, instant: datetime, peak: bool
) -> None:
    assert table.is_peak(instant) is peak


def test_a_holiday_request_is_billed_at_the_off_peak_price(table: PriceTable) -> None:
    holiday = table.cost("deepseek-flash", "CNY", USAGE, datetime(2026, 10, 1, 2, tzinfo=UTC))
    workday = table.cost("deepseek-flash", "CNY", USAGE, datetime(2026, 10, 9, 2, tzinfo=UTC))
    assert (holiday, workday) == (D("4.02"), D("8.04"))  # 1M x 0.02 + 2M x 1 + 0.5M x 4


def test_every_bundled_holiday_is_a_listed_statutory_day_off(table: PriceTable) -> None:
    """The sheet's 2026 list, day by day: each is off-peak at 10:00 Beijing time."""
    ranges = [
        ("2026-01-01", 3), ("2026-02-15", 9), ("2026-04-04", 3), ("2026-05-01", 5),
        ("2026-06-19", 3), ("2026-09-25", 3), ("2026-10-01", 7),
    ]  # fmt: skip
    for first, days in ranges:
        for n in range(days):
            day = datetime.fromisoformat(first).replace(tzinfo=UTC) + timedelta(days=n)
            assert not table.is_peak(day + timedelta(hours=2)), day.date()


def test_utc_offset_moves_days_and_windows(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\n"
        "peak_schedule:\n"
        "  - from: 2026-01-01\n"
        '    utc_offset: "-05:30"\n'
        "    days: [mon]\n"
        '    hours: ["22:00-24:00"]\n'
        "models:\n"
        "  m:\n"
        "    prices:\n"
        "      - from: 2026-01-01\n"
        "        usd: {input_cache_hit: 1, input_cache_miss: 1, output: 1}\n"
    )
    table = PriceTable.load(path)
    # Monday 2026-11-02 22:30 at -05:30 is Tuesday 04:00 UTC.
    assert table.is_peak(datetime(2026, 11, 3, 4, tzinfo=UTC))
    assert not table.is_peak(datetime(2026, 11, 2, 22, 30, tzinfo=UTC))


# --- per-request prices ------------------------------------------------------------------------


def test_search_and_fetch_are_billed_per_request(table: PriceTable) -> None:
    assert table.request_items == {"web-search", "web-fetch"}
    assert not table.request_items & table.models
    assert table.item_for_path("/search") == table.item_for_path("/v1/search") == "web-search"
    assert table.item_for_path("/v1/fetch") == "web-fetch"
    assert table.item_for_path("/chat/completions") is None
    assert table.item_for_tool("web_search") == "web-search"
    assert table.item_for_tool("code_interpreter") is None
    after = datetime(2026, 11, 1, tzinfo=UTC)  # 08:00 Beijing: billing has begun
    for item in ("web-search", "web-fetch"):
        assert table.request_price(item, "CNY", after) == D("0.005")
        assert table.request_price(item, "CNY", after, tool_call=True) == D("0.005")
        assert table.request_price(item, "USD", after) is None  # no USD price published
    # Tool calls are billed from 2026-11-01 00:00 Beijing, which is 16:00 UTC the day before.
    assert (
        table.request_price(
            "web-search", "CNY", datetime(2026, 10, 31, 15, 59, tzinfo=UTC), tool_call=True
        )
        is None
    )
    assert table.request_price(
        "web-search", "CNY", datetime(2026, 10, 31, 16, tzinfo=UTC), tool_call=True
    ) == D("0.005")
    assert table.request_price("deepseek-flash", "CNY", after) is None  # a model, not an item


def test_per_request_item_with_only_a_tool(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "version: 1\n"
        "models:\n"
        "  m:\n"
        "    prices:\n"
        "      - from: 2026-01-01\n"
        "        usd: {input_cache_hit: 1, input_cache_miss: 1, output: 1}\n"
        "per_request:\n"
        "  ocr:\n"
        "    tool: file_parse\n"
        "    tool_call_prices:\n"
        "      - from: 2026-01-01\n"
        "        usd: 0.0015\n"
        "        cny: 0.0015\n"
    )
    table = PriceTable.load(path)
    assert table.item_for_tool("file_parse") == "ocr"
    assert table.item_for_path("/ocr") is None
    assert table.request_price("ocr", "USD", datetime(2026, 2, 1, tzinfo=UTC)) is None
    assert table.request_price("ocr", "USD", datetime(2026, 2, 1, tzinfo=UTC), tool_call=True) == D(
        "0.0015"
    )

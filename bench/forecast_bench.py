"""The forecast and the alert rules on month-long balance histories of the shapes real bots have.

    python bench/forecast_bench.py           # full run (~10 min); rewrites its section of the docs
    python bench/forecast_bench.py --quick   # one start day per shape (~3 min); prints only

For each shape of ``exporter/simulator/histories.py`` (5-minute samples, amounts rounded to the
cent, +-30 % hourly noise; the balance lasts a month), seven histories are generated, one per day
of the week the exporter's history starts on (00:00 Beijing time), because what the forecast can
know in its first week depends on it (a deployment on a Monday sees no weekend for five days).
Then, as a user would:

1. ``deepseek-exporter backtest --history <csv>`` replays them (one account per start day) and
   writes OpenMetrics;
2. the forecast error: ``deepseek_balance_exhaustion_seconds`` at every sample against the true
   time left (the time until the generated future spend adds up to the balance, ignoring later
   top-ups), pooled over the seven starts, apart for 1 to 7 days and 7 days or more of history;
3. the rule file (alerts/deepseek-rules.yml, unchanged) through ``promtool test rules`` over the
   replay (exporter/balance/ruletest.py), asking at every 5-minute step which alerts fire: when
   each DeepSeekBalanceRunningOut first fires, in days before the money runs out, and at how many
   hourly checks DeepSeekSpendSpike fires outside a runaway. A runaway's own checks run from its
   start to one hour after its end, the window of the 1-hour burn rate that still holds its spend.

The runaway shapes (a 3-hour loop at night, in office hours at peak price, on a Saturday, on the
small bot, on a well-funded account) start on a Monday: their loop is placed by day of the week.

The issue's table (issue 10), measured the same way on the code before it, is quoted beside.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from exporter.balance.backtest import iter_samples
from exporter.balance.forecast import MIN_RETENTION, Observation
from exporter.balance.ruletest import alert_timeline, grid
from exporter.balance.store import FILENAME, HistoryStore
from exporter.simulator.histories import DAY, DEFAULT_START, HOUR, History, generate

import benchlib as bl

SECTION = "forecast_bench"
DOC = bl.REPO / "docs" / "benchmarks.md"
RULES = bl.REPO / "alerts" / "deepseek-rules.yml"
SHAPES = ("flat", "office_peak", "office_only", "office_peak_topup", "small_bot")
RUNAWAYS = ("runaway_night", "runaway_office", "runaway_weekend", "runaway_small", "runaway_large")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
RUNNING_OUT = "DeepSeekBalanceRunningOut"
SPIKE = "DeepSeekSpendSpike"
# Targets of issue 10.
MEDIAN_AFTER_A_WEEK, MEDIAN_FIRST_WEEK = 0.10, 0.25
WARNING_WINDOW, PAGE_WINDOW = (2.5, 3.5), (0.75, 1.25)  # days before the money runs out
# The table: today's code before it (6-hour burn rate, trailing-day spike rule).
TODAY = {
    "flat": ("5 %", "3.2 days before", "1.0 day before", "never"),
    "office_peak": ("98 %", "7.0 days before", "2.0 days before", "at 22 hourly checks"),
    "office_only": ("2,710 %", "7.9 days before", "2.9 days before", "at 55 hourly checks"),
    "office_peak_topup": ("73 %", "5.9 days before", "2.9 days before", "at 26 hourly checks"),
    "small_bot": ("4 %", "2.8 days before", "0.9 days before", "never"),
    "runaway_office_only": ("-", "-", "-", "fires in the runaway, and at 95 other hourly checks"),
}


@dataclass
class Result:
    shape: str
    description: str
    errors_week: list[float] = field(default_factory=list)  # 7 days of history or more
    errors_first: list[float] = field(default_factory=list)  # 1 to 7 days
    first_week_by_start: dict[str, list[float]] = field(default_factory=dict)
    warning_days: list[float] = field(default_factory=list)  # per start: days before empty
    page_days: list[float] = field(default_factory=list)
    never_warned: int = 0
    never_paged: int = 0
    spike_elsewhere: int = 0  # hourly checks firing outside runaways
    spike_runaway_minutes: list[float] = field(default_factory=list)  # first fire after start
    runaways_missed: int = 0
    starts: int = 0


def replay(histories: list[History], tmp: Path) -> str:
    """The backtest's output for these histories, through the command line."""
    csv = tmp / "history.csv"
    lines = ["timestamp,account,currency,balance"]
    for h in histories:
        lines += [f"{at:.0f},{a},{c},{b}" for at, a, c, b in h.rows()]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp / "replay.om"
    with out.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "backtest", "--history", str(csv)],
            stdout=handle,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"backtest failed: {done.stderr}")
    return out.read_text()


def measure(shape: str, histories: list[History], tmp: Path) -> Result:
    result = Result(shape, histories[0].shape.description, starts=len(histories))
    text = replay(histories, tmp)
    samples = list(iter_samples(text))
    by_account = {h.account: h for h in histories}
    forecasts: dict[str, dict[float, float]] = defaultdict(dict)
    for name, labels, value, at in samples:
        if name == "deepseek_balance_exhaustion_seconds":
            forecasts[labels["account"]][at] = value
    for account, h in by_account.items():
        for i, at in enumerate(h.times):
            age = at - h.start
            truth = h.seconds_left(i)
            if age < DAY or not truth or at not in forecasts[account]:
                continue
            estimate = forecasts[account][at]
            error = math.inf if math.isinf(estimate) else abs(estimate - truth) / truth
            if age >= 7 * DAY:
                result.errors_week.append(error)
            else:
                result.errors_first.append(error)
                weekday = WEEKDAYS[dt.datetime.fromtimestamp(h.start + 8 * HOUR, dt.UTC).weekday()]
                result.first_week_by_start.setdefault(weekday, []).append(error)

    series = grid(samples)
    timeline = alert_timeline(series, RULES)
    firings: dict[tuple[str, str, str], list] = defaultdict(list)
    for f in timeline:
        firings[(f.alertname, f.severity, f.labels.get("account", ""))].append(f)
    for account, h in by_account.items():
        if h.exhausted_at is not None:
            for severity, days in (
                ("warning", result.warning_days),
                ("critical", result.page_days),
            ):
                fired = firings.get((RUNNING_OUT, severity, account))
                if fired:
                    days.append((h.exhausted_at - min(f.start for f in fired)) / DAY)
                elif severity == "warning":
                    result.never_warned += 1
                else:
                    result.never_paged += 1
        spikes = [t for f in firings.get((SPIKE, "warning", account), []) for t in f.times]
        hourly = {t for t in spikes if round(t - h.start) % round(HOUR) == 0}
        result.spike_elsewhere += sum(
            1 for t in hourly if not any(b <= t < e + HOUR for b, e in h.runaways)
        )
        for begin, end in h.runaways:
            inside = [t for t in spikes if begin <= t < end + HOUR]
            if inside:
                result.spike_runaway_minutes.append((min(inside) - begin) / 60)
            else:
                result.runaways_missed += 1
    return result


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    value = ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
    return "∞" if math.isinf(value) else f"{value:.1%}".replace("%", " %")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else math.nan


def worst_start(r: Result) -> str:
    """The start day whose first week is forecast worst, when there are several."""
    if len(r.first_week_by_start) < 2:
        return ""
    day, errors = max(r.first_week_by_start.items(), key=lambda item: median(item[1]))
    return f"; worst start day {day}: {pct(errors, 50)}"


def days_range(values: list[float]) -> str:
    if not values:
        return "never"
    low, high = min(values), max(values)
    word = "day" if high <= 1.0 else "days"
    return f"{low:.2f} {word} before" if low == high else f"{low:.2f}-{high:.2f} {word} before"


def verdict(r: Result) -> list[str]:
    failures = []
    if median(r.errors_week) > MEDIAN_AFTER_A_WEEK:
        failures.append("error after a week")
    if median(r.errors_first) > MEDIAN_FIRST_WEEK:
        failures.append("error in the first week")
    for name, days, (low, high), never in (
        ("warning", r.warning_days, WARNING_WINDOW, r.never_warned),
        ("page", r.page_days, PAGE_WINDOW, r.never_paged),
    ):
        if never or any(not low <= d <= high for d in days):
            failures.append(f"{name} timing")
    if r.spike_elsewhere:
        failures.append("spike outside a runaway")
    return failures


def store_size(days: int = 31, accounts: int = 3) -> tuple[int, int]:
    """Bytes of a store holding ``days`` of one-minute polls for ``accounts`` accounts, and the
    number of rows per account."""
    with tempfile.TemporaryDirectory(prefix="forecast-bench-store-") as tmp:
        start = DEFAULT_START.timestamp()
        store = HistoryStore.open(tmp, max(MIN_RETENTION, days * DAY), clock=lambda: start)
        assert store is not None
        for n in range(accounts):
            balance, spent = Decimal("1000.00"), Decimal(0)
            for minute in range(days * 24 * 60):
                at = start + minute * 60
                if minute % 7 == 0:
                    balance -= Decimal("0.07")
                    spent += Decimal("0.07")
                store.record(f"account-{n}", "CNY", Observation(at, balance, spent, 0))
        rows = store._db.execute("SELECT count(*) FROM points").fetchone()[0] // accounts
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store._db.execute("VACUUM")
        store.close()
        size = (Path(tmp) / FILENAME).stat().st_size
        with sqlite3.connect(Path(tmp) / FILENAME) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (1,)
    return size, rows


def report(results: list[Result], runaways: list[Result], size: tuple[int, int], meta: str) -> str:
    out = [
        "## Forecast and alerts on month-long histories",
        "",
        "Generated by `bench/forecast_bench.py`; do not edit by hand. Method in the script's "
        "docstring: each shape is replayed by `deepseek-exporter backtest` from seven start days "
        "(Monday to Sunday), the forecast judged against the true time left, and the unchanged "
        "rule file run over the replay by `promtool test rules` at every 5-minute step.",
        "",
        meta,
        "",
        "### This code",
        "",
    ]
    rows = []
    for r in results:
        failures = verdict(r)
        rows.append(
            (
                r.description,
                f"{pct(r.errors_week, 50)} (p90 {pct(r.errors_week, 90)})",
                f"{pct(r.errors_first, 50)} (p90 {pct(r.errors_first, 90)}){worst_start(r)}",
                days_range(r.warning_days)
                + (f", never {r.never_warned}x" if r.never_warned else ""),
                days_range(r.page_days) + (f", never {r.never_paged}x" if r.never_paged else ""),
                "never" if not r.spike_elsewhere else f"at {r.spike_elsewhere} hourly checks",
                "**PASS**" if not failures else "**FAIL**: " + ", ".join(failures),
            )
        )
    for r in runaways:
        fired = (
            f"fires in {len(r.spike_runaway_minutes)} of "
            f"{len(r.spike_runaway_minutes) + r.runaways_missed} runaway(s), "
            f"{min(r.spike_runaway_minutes):.0f} min after it starts"
            if r.spike_runaway_minutes
            else "**never fires in the runaway**"
        )
        other = (
            "never elsewhere"
            if not r.spike_elsewhere
            else f"and at {r.spike_elsewhere} other hourly checks"
        )
        ok = r.spike_runaway_minutes and not r.runaways_missed and not r.spike_elsewhere
        rows.append(
            (
                r.description,
                "-",
                "-",
                "-",
                "-",
                f"{fired}, {other}",
                "**PASS**" if ok else "**FAIL**",
            )
        )
    out.append(
        bl.table(
            (
                "history",
                "forecast error, >= 7 days of history: median (p90)",
                "1 to 7 days: median (p90)",
                '"runs out within 3 days" first fires',
                '"within 24 hours" page first fires',
                "SpendSpike outside any runaway",
                "targets",
            ),
            rows,
        )
    )
    out += [
        "",
        f"Targets: median error <= {MEDIAN_AFTER_A_WEEK:.0%} with 7 days of history or more, "
        f"<= {MEDIAN_FIRST_WEEK:.0%} with 1 to 7 days; the warning first fires "
        f"{WARNING_WINDOW[0]}-{WARNING_WINDOW[1]} days before the money runs out and the page "
        f"{PAGE_WINDOW[0]}-{PAGE_WINDOW[1]} days before, neither earlier (ranges over the seven "
        "start days); SpendSpike in every runaway and nowhere else. The first-week p90 is the "
        "price of not knowing yet: a deployment that starts on a Monday has seen no weekend for "
        "five days and forecasts office-hours spend on Saturday and Sunday too (errs early, "
        "about 28 % for office hours only), one that starts on a quiet weekend has seen no spend "
        "at all (+Inf until Monday's office hours).",
        "",
        "### Before (the issue's table, the code before issue 10)",
        "",
        bl.table(
            (
                "history",
                "forecast median error",
                '"runs out within 3 days" first fires',
                '"within 24 hours" page first fires',
                "SpendSpike outside any runaway",
            ),
            [
                (
                    {r.shape: r.description for r in results}.get(
                        shape,
                        "office hours only plus a 3-hour runaway loop (10x the weekly average)",
                    ),
                    *values,
                )
                for shape, values in TODAY.items()
            ],
        ),
        "",
        "The issue measured the old rules under the one job name they worked with, "
        "`deepseek-exporter`; this code's rules ran unchanged under the replay's job name, "
        "`backtest`.",
        "",
        "### History store size",
        "",
        f"31 days of one-minute polls for 3 accounts: {size[0] / 1e6:.2f} MB on disk, "
        f"{size[0] / 3 / 1e3:.0f} kB per account and currency and month ({size[1]:,} rows each: "
        "one per 5-minute slot). Five weeks are kept: about "
        f"{size[0] / 3 / 1e6 * 35 / 31:.2f} MB per account and currency at most.",
    ]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one start day per shape; no write")
    args = parser.parse_args()
    started = time.monotonic()
    starts = range(1) if args.quick else range(7)
    results, runaways = [], []
    with tempfile.TemporaryDirectory(prefix="forecast-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for shape in SHAPES:
            histories = [
                generate(
                    shape,
                    start=DEFAULT_START + dt.timedelta(days=k),
                    account=f"{shape.replace('_', '-')}-{WEEKDAYS[k].lower()}",
                )
                for k in starts
            ]
            results.append(measure(shape, histories, tmp))
            print(f"{shape}: done after {time.monotonic() - started:.0f} s", file=sys.stderr)
        for shape in RUNAWAYS:
            runaways.append(measure(shape, [generate(shape)], tmp))
            print(f"{shape}: done after {time.monotonic() - started:.0f} s", file=sys.stderr)
    size = store_size()
    meta = "\n".join(
        (
            f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"- Command: `python bench/forecast_bench.py{' --quick' if args.quick else ''}`",
            f"- Exporter: {bl.git_state(['exporter', 'alerts'])}",
            f"- promtool: {_promtool_version()}",
            f"- Start days per shape: {len(starts)}; wall time {time.monotonic() - started:.0f} s",
        )
    )
    text = report(results, runaways, size, meta)
    print(text)
    if not args.quick:
        bl.replace_section(DOC, SECTION, text, "Benchmarks")
        print(f"wrote {DOC}", file=sys.stderr)
    failed = [r for r in results if verdict(r)] + [
        r for r in runaways if not r.spike_runaway_minutes or r.runaways_missed or r.spike_elsewhere
    ]
    return 1 if failed else 0


def _promtool_version() -> str:
    done = subprocess.run(["promtool", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if done.returncode == 0 else "unknown"


if __name__ == "__main__":
    sys.exit(main())

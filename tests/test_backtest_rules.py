"""The alert rules over weeks of generated balance history, replayed through the backtest.

Every shape of exporter/simulator/histories.py becomes one account of a single history (two
weeks and a bit, a sample every 15 minutes, to run in seconds; bench/forecast_bench.py runs the
month-long 5-minute versions). The backtest replays it through the exporter's own code; its
output becomes the input series of a `promtool test rules` file, half of the accounts under one
job name and two replicas, half under another, with expectations derived from the generated
truth, never from the output:

- "runs out within 3 days" is silent until 3.5 days before the money runs out and firing 2.5
  days before; "within 24 hours" silent until 1.25 days before and firing 0.75 days before;
- DeepSeekSpendSpike is silent at every hourly check outside a runaway (or the hour after it,
  while the 1-hour burn rate still holds the loop's spend) and firing two hours into each;
- no other alert fires.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.balance.backtest import Row, iter_samples, replay
from exporter.balance.ruletest import Series, alert_timeline, grid, run_promtool
from exporter.config import Config
from exporter.simulator.histories import DAY, HOUR, History, Runaway, generate
from tests.conftest import require_binary

RULES = Path(__file__).resolve().parent.parent / "alerts" / "deepseek-rules.yml"
STEP = 900.0
JOBS = ("deepseek", "serviceMonitor/monitoring/deepseek-exporter/0")

# account -> (shape, changes): every shape of the issue, shortened to run out after 16 days
# (runaways: 13 days of history, the loop in the second week).
CASES: dict[str, tuple[str, dict]] = {
    "flat": ("flat", {"empty_after_days": 16}),
    "office-peak": ("office_peak", {"empty_after_days": 16}),
    "office-only": ("office_only", {"empty_after_days": 16}),
    "office-peak-topup": (
        "office_peak_topup",
        {"empty_after_days": 11, "topup_day": 8, "topup_extends_to": 16},
    ),
    "small-bot": ("small_bot", {"balance": 8.0}),
    "runaway-night": ("runaway_night", {"days": 13, "runaway": Runaway(9, 2, 10)}),
    "runaway-office": ("runaway_office", {"days": 13, "runaway": Runaway(10, 10, 10)}),
    "runaway-weekend": ("runaway_weekend", {"days": 13, "runaway": Runaway(12, 14, 10)}),
    "runaway-small": ("runaway_small", {"days": 13, "runaway": Runaway(9, 20, 10)}),
    "runaway-large": ("runaway_large", {"days": 13, "runaway": Runaway(10, 11, 20)}),
}


@dataclass
class Replay:
    histories: dict[str, History]
    series: Series


@pytest.fixture(scope="module")
def replayed() -> Replay:
    histories = {
        account: generate(shape, step=STEP, account=account, **changes)
        for account, (shape, changes) in CASES.items()
    }
    rows = [Row(at, a, c, b) for h in histories.values() for at, a, c, b in h.rows()]
    out = io.StringIO()
    asyncio.run(replay(rows, Config(), out))
    samples = list(iter_samples(out.getvalue()))
    first_half = set(list(CASES)[::2])
    parts = [
        grid([s for s in samples if s[1]["account"] in first_half], JOBS[0], "a:9402"),
        grid([s for s in samples if s[1]["account"] in first_half], JOBS[0], "b:9402"),
        grid([s for s in samples if s[1]["account"] not in first_half], JOBS[1], "10.0.0.7:9402"),
    ]
    assert len({(p.start, p.interval) for p in parts}) == 1
    merged = {key: values for part in parts for key, values in part.series.items()}
    return Replay(histories, Series(parts[0].start, parts[0].interval, merged))


def firing(alertname: str, account: str, severity: str, currency: str) -> list[dict]:
    labels = (
        f'alertname="{alertname}",alertstate="firing",severity="{severity}",'
        f'account="{account}",currency="{currency}"'
    )
    return [{"labels": f"ALERTS{{{labels}}}", "value": 1}]


def test_alerts_fire_when_they_should_and_never_earlier(replayed: Replay, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    series = replayed.series
    hourly = range(0, series.steps, round(HOUR / series.interval))
    checks: list[dict] = []

    def check(expr: str, step: int, expected: list[dict]) -> None:
        at = f"{step * series.interval:.0f}s"
        checks.append({"expr": expr, "eval_time": at, "exp_samples": expected})

    def step_at(at: float) -> int:
        return math.ceil((at - series.start) / series.interval)

    for account, history in replayed.histories.items():
        c = history.currency
        for severity, silent_until, firing_at in (
            ("warning", 3.5 * DAY, 2.5 * DAY),
            ("critical", 1.25 * DAY, 0.75 * DAY),
        ):
            expr = (
                f'ALERTS{{alertname="DeepSeekBalanceRunningOut",alertstate="firing",'
                f'severity="{severity}",account="{account}"}}'
            )
            if history.exhausted_at is None:
                for step in hourly:  # a balance that lasts: never
                    check(expr, step, [])
                continue
            for step in hourly:
                if series.time(step) < history.exhausted_at - silent_until:
                    check(expr, step, [])
            at = step_at(history.exhausted_at - firing_at)
            check(expr, at, firing("DeepSeekBalanceRunningOut", account, severity, c))
        spike = f'ALERTS{{alertname="DeepSeekSpendSpike",alertstate="firing",account="{account}"}}'
        for step in hourly:
            if not any(b <= series.time(step) < e + HOUR for b, e in history.runaways):
                check(spike, step, [])
        for begin, _end in history.runaways:
            check(
                spike,
                step_at(begin + 2 * HOUR),
                firing("DeepSeekSpendSpike", account, "warning", c),
            )
    others = (
        'ALERTS{alertstate="firing",'
        'alertname!~"DeepSeekBalanceRunningOut|DeepSeekSpendSpike|DeepSeekAccountUnavailable"}'
    )
    for step in hourly:
        check(others, step, [])

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": f"{series.interval:.0f}s",
        "tests": [
            {
                "name": "generated histories",
                "interval": f"{series.interval:.0f}s",
                "input_series": [
                    {"series": key, "values": " ".join(_value(v) for v in values)}
                    for key, values in series.series.items()
                ],
                "promql_expr_test": checks,
            }
        ],
    }
    (tmp_path / "generated.test.yml").write_text(json.dumps(test, indent=1))  # to debug with
    report = run_promtool(test, promtool)
    if "SUCCESS" not in report:
        timeline = alert_timeline(series, RULES, promtool, checks=hourly)
        pytest.fail(
            "promtool test rules failed; what fired (hourly checks):\n"
            + "\n".join(
                f"  {f.alertname} {f.labels} from {(f.start - series.start) / DAY:.2f} d"
                f" to {'end' if f.end is None else f'{(f.end - series.start) / DAY:.2f} d'}"
                for f in timeline
            )
            + "\n"
            + report[:3000],
            pytrace=False,
        )


def _value(v: float | None) -> str:
    if v is None:
        return "_"
    return "Inf" if math.isinf(v) else repr(v)


def test_the_histories_are_the_shapes_they_claim(replayed: Replay) -> None:
    """Guard against a generator that makes the tests above easy."""
    h = replayed.histories
    for account in ("flat", "office-peak", "office-only", "office-peak-topup", "small-bot"):
        assert h[account].exhausted_at is not None, account
        days = (h[account].exhausted_at - h[account].start) / DAY
        assert 15.5 < days < 16.8, (account, days)
    assert len(h["office-peak-topup"].topups) == 1
    assert all(len(h[a].runaways) == 1 for a in CASES if a.startswith("runaway"))
    # Office hours only: nothing spent at night or at weekends.
    office = h["office-only"]
    assert office.balances[0] == office.balances[round(9 * HOUR / STEP) - 1]
    assert sum(office.spend[: round(5 * DAY / STEP)]) > 0
    saturday = round(5 * DAY / STEP)
    assert sum(office.spend[saturday : saturday + round(2 * DAY / STEP)]) == 0

"""DeepSeekUnmeteredSpend on realistic series, through `promtool test rules`.

The balance moves in cent steps and DeepSeek deducts a few minutes after a request completes;
the exporter restarts. Generated minute by minute over six hours: every call through the proxy
must never page, whatever the traffic shape; a fifth of the spend around it must, within about
an hour, and read as about 20 %.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

RULES = Path(__file__).resolve().parent.parent / "alerts" / "deepseek-rules.yml"
MINUTES = 6 * 60
DELAY = 3  # minutes between a request and its deduction
CENT = Decimal("0.01")


def metered_per_minute(shape: str, rng: random.Random) -> list[Decimal]:
    """What the proxy meters each minute, in CNY."""
    out = []
    for minute in range(MINUTES):
        if shape == "steady":
            cost = 0.02 * (1 + 0.3 * rng.uniform(-1, 1))
        elif shape == "bursts":  # 20 minutes of heavy traffic every hour, silence between
            cost = 0.5 * rng.uniform(0.5, 1.5) if minute % 60 < 20 else 0.0
        elif shape == "daily cycle":
            cost = 0.05 * (1 + math.sin(minute / 60)) * rng.uniform(0.7, 1.3)
        elif shape == "small bot":  # 0.50 a day
            cost = 0.5 / 1440 * rng.uniform(0.7, 1.3)
        else:
            raise ValueError(shape)
        out.append(Decimal(str(round(cost, 6))))
    return out


def series(shape: str, leak: float, restart_at: int | None) -> tuple[str, str]:
    """The promtool value strings of the spent and the metered counter."""
    rng = random.Random(shape)
    metered = metered_per_minute(shape, rng)
    balance = Decimal(1000)
    start = balance.quantize(CENT, ROUND_DOWN)
    spent_values, metered_values = [], []
    metered_total = Decimal(0)
    for minute in range(MINUTES):
        if minute == restart_at:
            metered_total = Decimal(0)  # the proxy's counter starts again; spent is stored
        metered_total += metered[minute]
        deducted = metered[minute - DELAY] if minute >= DELAY else Decimal(0)
        balance -= deducted * Decimal(1 + leak / (1 - leak))  # leak: its share of all spend
        shown = balance.quantize(CENT, ROUND_DOWN)  # what /user/balance reports
        spent_values.append(str(start - shown))
        metered_values.append(str(metered_total))
    return " ".join(spent_values), " ".join(metered_values)


def run_promtool(tmp_path: Path, shape: str, leak: float, restart_at: int | None) -> list[float]:
    """The minutes at which the alert was firing, and the ratio at the end."""
    spent, metered = series(shape, leak, restart_at)
    account = 'job="deepseek",instance="a",account="main"'
    labels = f'{account},currency="CNY"'
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"deepseek_balance_spent_total{{{labels}}}", "values": spent},
                    {
                        "series": f'deepseek_estimated_cost_total{{{labels},model="x"}}',
                        "values": metered,
                    },
                    {
                        "series": f"deepseek_account_all_traffic_via_proxy{{{account}}}",
                        "values": f"1x{MINUTES}",
                    },
                ],
                # A deliberately wrong expectation: promtool prints what it got instead.
                "promql_expr_test": [
                    {
                        "expr": "sum(count_over_time(ALERTS{alertname='DeepSeekUnmeteredSpend',"
                        "alertstate='firing'}[6h])) or vector(0)",
                        "eval_time": f"{MINUTES - 1}m",
                        "exp_samples": [{"labels": "{}", "value": -1}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / f"{shape}.test.yml"
    path.write_text(yaml.safe_dump(test, width=1 << 20))
    done = subprocess.run(
        [require_binary("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "got:" in output, output
    # `got: {...} 2.16E+02` (a count of firing minutes) or `got: {} 0E+00`
    return [float(value) for value in re.findall(r"\} ([-+0-9.E]+)", output.split("got:", 1)[1])]


@pytest.mark.parametrize("shape", ["steady", "bursts", "daily cycle", "small bot"])
def test_all_traffic_through_the_proxy_never_pages(tmp_path: Path, shape: str) -> None:
    (firing,) = run_promtool(tmp_path, shape, leak=0.0, restart_at=150)
    assert firing == 0


@pytest.mark.parametrize("shape", ["steady", "bursts", "daily cycle"])
def test_a_fifth_of_the_spend_around_the_proxy_pages(tmp_path: Path, shape: str) -> None:
    (firing,) = run_promtool(tmp_path, shape, leak=0.2, restart_at=None)
    # Pending once the first hour's unexplained spend passes the floor, firing an hour later.
    assert firing >= MINUTES - 3 * 60


def test_the_unmetered_share_reads_about_20_percent(tmp_path: Path) -> None:
    spent, metered = series("steady", 0.2, None)
    spent_total = float(spent.split()[-1]) - float(spent.split()[-61])
    metered_total = float(metered.split()[-1 - DELAY]) - float(metered.split()[-61 - DELAY])
    assert (spent_total - metered_total) / spent_total == pytest.approx(0.2, abs=0.03)

"""Metered versus deducted, end to end with a real Prometheus 2.42.

    simulator (in process)  <-- polls, proxies --  exporter (a real process)  <-- scrapes --
         ^   a fifth of one account's calls                                  prometheus, with
         +-- straight to the simulator, with the same key               deepseek-rules.yml

Two accounts, both configured with ``all_traffic_via_proxy: true``: ``leaky`` sends one call in
five around the proxy, ``clean`` sends everything through it. The recording rules must read
about 20 % and about 0 %, and DeepSeekUnmeteredSpend must fire for ``leaky`` only. The rule file
is loaded as shipped except the alert's ``for: 1h`` (a test cannot wait an hour; the promtool
tests in alerts/deepseek-rules.test.yml and tests/test_unmetered_rules.py cover the duration).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from exporter.simulator import SimAccount, Simulator, SimulatorThread
from tests.conftest import require_binary
from tests.test_e2e_alerting import RULES, Processes, free_port, ready, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
LEAKY_KEY, CLEAN_KEY = "sk-e2e-leaky-5b1e9c", "sk-e2e-clean-77d0a2"
ALERT = "DeepSeekUnmeteredSpend"
CALLS = 40
# About 10,000 prompt tokens of deepseek-v4-pro: 0.045 CNY off-peak, well above a cent step.
PROMPT = "Tell me about the weather in Hangzhou. " * 1000


def rules_without_the_wait(tmp: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text())
    changed = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = "0s"
                changed += 1
    assert changed == 1
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=1 << 20))
    return path


class Stack:
    def __init__(self, prometheus: str, proxy: str, simulator: str, procs: Processes) -> None:
        self.prometheus, self.proxy, self.simulator, self.procs = (
            prometheus,
            proxy,
            simulator,
            procs,
        )

    def series(self, expr: str) -> dict[str, float]:
        reply = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}).json()
        assert reply["status"] == "success", reply
        return {
            r["metric"].get("account", ""): float(r["value"][1]) for r in reply["data"]["result"]
        }

    def wait(self, what: str, check: object, timeout: float) -> object:
        def details() -> str:
            return "\n".join(
                f"---- {name}\n{path.read_text(errors='replace')[-2000:]}"
                for name, path in self.procs.logs.items()
            )

        return wait_for(what, check, timeout, details=details)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("e2e-unmetered")
    procs = Processes(tmp)
    accounts = [
        SimAccount("leaky", LEAKY_KEY, {"CNY": (Decimal("0"), Decimal("500"))}),
        SimAccount("clean", CLEAN_KEY, {"CNY": (Decimal("0"), Decimal("500"))}),
    ]
    with SimulatorThread(Simulator(accounts)) as sim:
        try:
            web, proxy, prom = free_port(), free_port(), free_port()
            config = tmp / "deepseek.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "deepseek": {"base_url": sim.base_url},
                        "balance": {"poll_interval": "1s", "max_staleness": "30s"},
                        "accounts": [
                            {"name": "leaky", "api_key": LEAKY_KEY, "all_traffic_via_proxy": True},
                            {"name": "clean", "api_key": CLEAN_KEY, "all_traffic_via_proxy": True},
                        ],
                    }
                )
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
            procs.start(
                "exporter",
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{web}",
                    f"--proxy.listen-address=127.0.0.1:{proxy}",
                    "--storage.path=",
                ],
                cwd=tmp,
                env=env,
            )
            prom_config = tmp / "prometheus.yml"
            prom_config.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(rules_without_the_wait(tmp))],
                        "scrape_configs": [
                            {
                                "job_name": "billing",
                                "static_configs": [{"targets": [f"127.0.0.1:{web}"]}],
                            }
                        ],
                    }
                )
            )
            procs.start(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom}",
                ],
            )
            s = Stack(f"http://127.0.0.1:{prom}", f"http://127.0.0.1:{proxy}", sim.base_url, procs)
            client = httpx.Client()

            def up(url: str) -> bool:
                procs.check_alive()
                return ready(client, url)

            s.wait("the exporter", lambda: up(f"http://127.0.0.1:{web}/-/ready"), 30)
            s.wait("Prometheus", lambda: up(f"{s.prometheus}/-/ready"), 30)
            s.wait(
                "two scrapes with balances",
                lambda: len(s.series("deepseek_balance_spent_total")) == 2,
                30,
            )
            time.sleep(2)  # a few samples of the counters at rest before the traffic
            yield s
        finally:
            procs.stop_all()


def send(base_url: str, key: str, n: int) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    # A new first line each time: no prompt cache hit makes a call cheap.
    messages = [{"role": "user", "content": f"Call {n} at {time.time()}. {PROMPT}"}]
    client.chat.completions.create(model="deepseek-v4-pro", messages=messages)  # type: ignore[arg-type]


def test_spend_around_the_proxy_is_unmetered_and_pages(stack: Stack) -> None:
    for n in range(CALLS):
        send(stack.proxy, CLEAN_KEY, n)
        # leaky: four calls in five through the proxy, the fifth straight to the API
        send(stack.simulator if n % 5 == 4 else stack.proxy, LEAKY_KEY, n)

    ratio = "account_currency:deepseek_unmetered_spend:ratio1h"
    stack.wait(
        "the metered and deducted spend of the last call in Prometheus",
        lambda: (
            stack.series("account_currency:deepseek_balance_spent:increase1h").get("leaky", 0) > 1.0
            and stack.series(ratio).keys() == {"leaky", "clean"}
        ),
        60,
    )
    time.sleep(3)  # the last deductions and scrapes
    ratios = stack.series(ratio)
    print(f"\nunmetered share of the last hour: {ratios}")
    assert ratios["leaky"] == pytest.approx(0.2, abs=0.04), ratios
    assert ratios["clean"] < 0.03, ratios
    firing = stack.wait(
        f"{ALERT} to fire",
        lambda: stack.series(f'ALERTS{{alertname="{ALERT}",alertstate="firing"}}'),
        30,
    )
    assert set(firing) == {"leaky"}  # type: ignore[arg-type]
    time.sleep(3)
    assert set(stack.series(f'ALERTS{{alertname="{ALERT}"}}')) == {"leaky"}

"""Scale-out for real: three exporter replicas, one Prometheus, traffic spread across the proxies.

One simulated DeepSeek API; three ``python -m exporter`` processes on loopback with the same
configuration (the same accounts, each polling the balance every second); one real Prometheus
(scrape and evaluation every second) scraping all three and loading ``alerts/deepseek-rules.yml``.
The official ``openai`` SDK sends completions round-robin through the three proxies, then one
account is drained and the requests for it get 402. Through Prometheus's HTTP API:

- the requests summed over the replicas are exactly the requests sent, per account and code;
- the balance recording rules and the dashboard's panels give one value per account (the right
  one), not one per replica;
- ``DeepSeekInsufficientBalance`` fires once for the drained account, not three times.

Everything is polled with a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from exporter.simulator import SimAccount, Simulator, SimulatorThread
from tests.conftest import require_binary
from tests.test_deploy import ExporterProcess

ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = ROOT / "alerts" / "deepseek-rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "deepseek-overview.json"
# The job name a Prometheus Operator ServiceMonitor generates: the rules and the dashboard work
# under it unchanged (the end-to-end alerting test uses yet another, "deepseek").
JOB = "serviceMonitor/monitoring/deepseek-exporter/0"
REPLICAS = 3
RICH_KEY, DRAIN_KEY = "sk-test-rich-0123456789", "sk-test-drain-9876543210"
DEADLINE = 25.0  # seconds any one condition may take to become true

pytestmark = pytest.mark.e2e


# ----------------------------------------------------------------------------------------------
# Prometheus


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path, log: Path) -> None:
        self.log_path = log
        for _ in range(3):  # another process may take the free port between pick and bind
            self.url = f"http://127.0.0.1:{_free_port()}"
            with log.open("w") as out:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={data}",
                        f"--web.listen-address={self.url.removeprefix('http://')}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready():
                return
            self.stop()
        raise AssertionError(f"Prometheus did not start:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def _wait_ready(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def series(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """Instant vector as {labels without __name__: value}."""
        return {
            frozenset((k, v) for k, v in r["metric"].items() if k != "__name__"): float(
                r["value"][1]
            )
            for r in self.query(expr)
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def eventually(check: Any, what: str, timeout: float = DEADLINE) -> Any:
    """Call ``check`` until it returns without AssertionError; re-raise the last one at the end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}, still false after {timeout}s: {error}") from None
        time.sleep(0.2)


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


# ----------------------------------------------------------------------------------------------
# The stack and the traffic


@dataclass
class Stack:
    simulator: Simulator
    exporters: list[ExporterProcess]
    prometheus: Prometheus
    sent: Counter[tuple[str, str]]  # (account, code) -> requests the clients sent

    def balance(self, account: str, currency: str) -> float:
        """The total balance as DeepSeek (the simulator) reports it: rounded to cents."""
        key = self.simulator.account(account).api_key
        reply = httpx.get(
            f"{self.simulator.base_url}/user/balance",
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        ).json()
        (info,) = (i for i in reply["balance_infos"] if i["currency"] == currency)
        return float(info["total_balance"])


def _send(
    exporters: list[ExporterProcess], model: str, key: str, count: int, start: int
) -> Counter[str]:
    """``count`` completions round-robin over the proxies; the status codes the SDK saw."""
    codes: Counter[str] = Counter()
    for n in range(start, start + count):
        proxy = exporters[n % len(exporters)].proxy_url
        client = openai.OpenAI(base_url=proxy, api_key=key, max_retries=0, timeout=10)
        messages = [{"role": "user", "content": f"Question {n}: how many replicas?"}]
        try:
            if n % 2:
                stream = client.chat.completions.create(model=model, messages=messages, stream=True)
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            else:
                reply = client.chat.completions.create(model=model, messages=messages)
                assert reply.choices[0].message.content
            codes["200"] += 1
        except openai.APIStatusError as error:
            codes[str(error.status_code)] += 1
        finally:
            client.close()
    return codes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("replicas")
    simulator = Simulator(
        [
            SimAccount("rich", RICH_KEY, {"CNY": (Decimal("10.00"), Decimal("100.00"))}),
            SimAccount("drain", DRAIN_KEY, {"USD": (Decimal("0.00"), Decimal("5.00"))}),
        ]
    )
    with SimulatorThread(simulator) as server:
        config = tmp / "deepseek.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "deepseek": {"base_url": server.base_url, "timeout": "2s"},
                    "balance": {"poll_interval": "1s", "max_staleness": "30s"},
                    "accounts": [
                        {"name": "rich", "api_key": RICH_KEY, "low_balance_threshold": 5},
                        {"name": "drain", "api_key": DRAIN_KEY, "low_balance_threshold": 1},
                    ],
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DEEPSEEK_API_KEY", None)
        exporters = [
            ExporterProcess(
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    f"--config.file={config}",
                    "--web.listen-address=127.0.0.1:0",
                    "--proxy.listen-address=127.0.0.1:0",
                    "--web.shutdown-timeout=2s",
                    f"--storage.path={tmp / f'replica-{i}'}",
                ],
                env,
            )
            for i in range(REPLICAS)
        ]
        prometheus: Prometheus | None = None
        try:
            for exporter in exporters:
                exporter.wait_ready()
            targets = [e.web_url.removeprefix("http://") for e in exporters]
            prometheus_config = tmp / "prometheus.yml"
            prometheus_config.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(RULES_FILE)],
                        "scrape_configs": [
                            {"job_name": JOB, "static_configs": [{"targets": targets}]}
                        ],
                    }
                )
            )
            prometheus = Prometheus(
                prometheus_binary, prometheus_config, tmp / "data", tmp / "prometheus.log"
            )

            def all_up() -> None:
                up = prometheus.series(f'up{{job="{JOB}"}} == 1')
                assert len(up) == REPLICAS, up
                # Every replica's pre-initialised 402 counter is in the TSDB at 0 before the
                # first 402: increase() then sees the very first one.
                zeros = prometheus.series(f'deepseek_requests_total{{job="{JOB}", code="402"}}')
                assert {dict(k)["instance"] for k in zeros} == set(targets), zeros

            eventually(all_up, "Prometheus scrapes every replica")

            model = simulator.served_models()[0]  # a model the price table prices today
            sent: Counter[tuple[str, str]] = Counter()
            for account, key, count in (("rich", RICH_KEY, 9), ("drain", DRAIN_KEY, 6)):
                for code, n in _send(exporters, model, key, count, start=0).items():
                    sent[(account, code)] += n
            assert sent == {("rich", "200"): 9, ("drain", "200"): 6}, sent
            # Drain one account: from now on DeepSeek answers its calls with 402.
            simulator.set_balance("drain", "USD", 0, 0)
            for code, n in _send(exporters, model, DRAIN_KEY, 6, start=100).items():
                sent[("drain", code)] += n
            assert sent[("drain", "402")] == 6, sent
            yield Stack(simulator, exporters, prometheus, sent)
        finally:
            if prometheus is not None:
                prometheus.stop()
            for exporter in exporters:
                exporter.stop()


# ----------------------------------------------------------------------------------------------
# Tests


def test_requests_summed_over_replicas_equal_requests_sent(stack: Stack) -> None:
    prometheus = stack.prometheus
    expected = {labels(account=a, code=c): float(n) for (a, c), n in stack.sent.items()}

    def counted() -> None:
        got = prometheus.series(
            f'sum by (account, code) (deepseek_requests_total{{job="{JOB}"}}) > 0'
        )
        assert got == expected
        total = prometheus.series(f'sum(deepseek_requests_total{{job="{JOB}"}})')
        assert total == {frozenset(): float(sum(stack.sent.values()))}

    eventually(counted, "Prometheus counts the requests sent")
    # Each replica carried part of the traffic: a sum over parts, not copies of one count.
    per_replica = prometheus.series(f'sum by (instance) (deepseek_requests_total{{job="{JOB}"}})')
    assert len(per_replica) == REPLICAS and all(v > 0 for v in per_replica.values())
    assert sum(per_replica.values()) == sum(stack.sent.values())


def test_balance_gives_one_value_per_account(stack: Stack) -> None:
    prometheus = stack.prometheus
    expected = {
        labels(account="rich", currency="CNY"): stack.balance("rich", "CNY"),
        labels(account="drain", currency="USD"): 0.0,
    }

    def one_value_each() -> None:
        # Every replica polls: three copies of each balance in the TSDB ...
        copies = prometheus.series(
            f'count by (account, currency) (deepseek_balance{{job="{JOB}"}})'
        )
        assert copies == {k: float(REPLICAS) for k in expected}
        # ... and one value per account from the recording rule and the dashboard's max by.
        assert prometheus.series("account_currency:deepseek_balance:max") == expected
        assert (
            prometheus.series(f'max by (account, currency) (deepseek_balance{{job="{JOB}"}})')
            == expected
        )
        assert prometheus.series("account:deepseek_account_available:max") == {
            labels(account="rich"): 1.0,
            labels(account="drain"): 0.0,
        }
        assert prometheus.series("account:deepseek_up:max") == {
            labels(account="rich"): 1.0,
            labels(account="drain"): 1.0,
        }

    eventually(one_value_each, "one balance per account, equal to the simulator's")


def test_insufficient_balance_fires_once_per_drained_account(stack: Stack) -> None:
    prometheus = stack.prometheus
    firing = 'ALERTS{alertname="DeepSeekInsufficientBalance", alertstate="firing"}'

    def fires_once() -> None:
        alerts = prometheus.query(firing)
        assert [a["metric"]["account"] for a in alerts] == ["drain"], alerts
        assert "instance" not in alerts[0]["metric"]
        assert alerts[0]["metric"]["severity"] == "critical"

    eventually(fires_once, "DeepSeekInsufficientBalance fires for the drained account")
    # The alert's value is the number of 402s over all replicas (increase() extrapolates a
    # little over the 5m window, so at least the 402s sent, never three times them).
    active = httpx.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    ours = [a for a in active if a["labels"]["alertname"] == "DeepSeekInsufficientBalance"]
    assert len(ours) == 1 and ours[0]["state"] == "firing", ours
    value = float(ours[0]["value"])
    assert stack.sent[("drain", "402")] <= value < 2 * stack.sent[("drain", "402")], value
    # Still exactly one a few evaluations later (one per account, whatever the replica count).
    seen = prometheus.series(f"count_over_time({firing}[1m])")
    assert list(seen) == [
        labels(
            account="drain",
            alertname="DeepSeekInsufficientBalance",
            alertstate="firing",
            severity="critical",
        )
    ]


def _dashboard_targets() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [
        (panel.get("title", ""), target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _as_grafana_would(expr: str) -> str:
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "1s"),
        ("$__range", "1h"),
        ("$job", JOB),
        ("$account", ".*"),
    ):
        expr = expr.replace(variable, value).replace("${" + variable[1:] + "}", value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def test_dashboard_panels_give_one_series_per_account_not_per_replica(stack: Stack) -> None:
    prometheus = stack.prometheus
    targets = _dashboard_targets()
    assert targets, "the dashboard has no queries"

    def no_replica_copies() -> None:
        for title, expr, legend in targets:
            result = prometheus.query(_as_grafana_would(expr))
            if "{{instance}}" in legend:
                continue  # per-replica on purpose (exporter health)
            replicated = [r["metric"] for r in result if "instance" in r["metric"]]
            assert not replicated, f"panel {title!r} shows one series per replica: {expr}"
        # The balance stat: one value per account and currency, the simulator's.
        balance_panels = [
            expr
            for title, expr, _ in targets
            if title == "Balance" and "deepseek_balance{" in expr and "low_threshold" not in expr
        ]
        assert balance_panels, "the dashboard has a Balance panel"
        got = {
            (r["metric"]["account"], r["metric"]["currency"]): float(r["value"][1])
            for r in prometheus.query(_as_grafana_would(balance_panels[0]))
        }
        assert got == {("rich", "CNY"): stack.balance("rich", "CNY"), ("drain", "USD"): 0.0}

    eventually(no_replica_copies, "every dashboard panel aggregates the replicas")


def test_proxy_only_replica_meters_without_polling(tmp_path: Path) -> None:
    """``balance.poll_interval: 0s``, as deploy/README.md describes it: ready at once, no
    balance series and no ``deepseek_up``, requests and (with ``currency``) cost metered, and
    not one call to ``/user/balance``."""
    simulator = Simulator([SimAccount("rich", RICH_KEY, {"CNY": (Decimal("10"), Decimal("100"))})])
    with SimulatorThread(simulator) as server:
        config = tmp_path / "deepseek.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "deepseek": {"base_url": server.base_url},
                    "balance": {"poll_interval": "0s"},
                    "accounts": [{"name": "rich", "api_key": RICH_KEY, "currency": "CNY"}],
                }
            )
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        exporter = ExporterProcess(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={config}",
                "--web.listen-address=127.0.0.1:0",
                "--proxy.listen-address=127.0.0.1:0",
            ],
            env,
            cwd=tmp_path,
        )
        try:
            exporter.wait_for_listeners("metrics", "proxy")
            assert httpx.get(f"{exporter.web_url}/-/ready", timeout=5).status_code == 200
            codes = _send([exporter], simulator.served_models()[0], RICH_KEY, 2, start=0)
            assert codes == {"200": 2}
            samples = exporter.samples()
            names = {name for name, _ in samples}
            assert not {"deepseek_up", "deepseek_balance", "deepseek_account_available"} & names
            requests = sum(
                v
                for (name, lbl), v in samples.items()
                if name == "deepseek_requests_total" and ("account", "rich") in lbl
            )
            assert requests == 2
            cost = sum(
                v
                for (name, lbl), v in samples.items()
                if name == "deepseek_estimated_cost_total" and ("currency", "CNY") in lbl
            )
            assert cost > 0, "with `currency` set, a proxy-only replica prices the requests"
            assert not [r for r in simulator.requests() if r.endpoint == "balance"]
        finally:
            assert exporter.stop() == 0, exporter.log
        assert not (tmp_path / "data").exists(), "a proxy-only replica needs no store"

"""End to end with the real tools: the demo exporter, Prometheus 2.42 and Alertmanager 0.25.

One stack per module (starting it is the slow part):

    exporter --demo  <-- scrape every 1s --  prometheus  (alerts/deepseek-rules.yml, eval 1s)
        |  in-process simulator (control API under /_simulator/)      |  alerts
        v                                                             v
    tests drive balances and faults                     alertmanager (a copy of alerts/
                                                        alertmanager.yml: URLs to the local
    webhook receiver (this process) <-- notifications --  receiver, 1s group timings)

The binaries come from the Debian packages `prometheus` and `prometheus-alertmanager`
(./scripts/test installs them); without them these tests fail, they never skip.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from tests import promql
from tests.conftest import require_binary

pytestmark = pytest.mark.e2e

ROOT = promql.ROOT
RULES = ROOT / "alerts" / "deepseek-rules.yml"
ALERTMANAGER = ROOT / "alerts" / "alertmanager.yml"
# Not the name the rules were first written for: they select no job, and must alert under any.
JOB = "deepseek"
AS_SCRAPED = {"$job": JOB, "${job}": JOB}
STEADY, DRAINING = "demo-steady", "demo-draining"
INSUFFICIENT = "DeepSeekInsufficientBalance"
# An extra client of the demo's proxy with its own key (the proxy counts it as account
# "unknown"): it sends what the demo's bots never send (a thinking model, faulty replies).
EXTRA_KEY = "sk-e2e-extra-client-0123456789"

T = TypeVar("T")


# ---- plumbing -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    every: float = 0.2,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` (and `details()`, e.g.
    the processes' logs) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}{extra}", pytrace=False)
        time.sleep(every)


@dataclass
class Notification:
    path: str  # /page or /chat: which receiver the route chose
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived


@dataclass
class WebhookReceiver:
    """Records every notification Alertmanager POSTs to it."""

    received: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.received.append(Notification(self.path, body, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def notifications(self) -> list[Notification]:
        with self.lock:
            return list(self.received)


@dataclass
class Stack:
    exporter: str  # metrics listener
    proxy: str
    simulator: str
    prometheus: str
    alertmanager: str
    receiver: WebhookReceiver
    started: float  # unix time when Prometheus started scraping
    logs: dict[str, Path]
    http: httpx.Client

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query; the whole API reply (status, data, error, warnings)."""
        reply = self.http.get(f"{self.prometheus}/api/v1/query", params={"query": expr})
        return {"http_status": reply.status_code, **reply.json()}

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict[str, Any]:
        reply = self.http.get(
            f"{self.prometheus}/api/v1/query_range",
            params={"query": expr, "start": start, "end": end, "step": step},
        )
        return {"http_status": reply.status_code, **reply.json()}

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when the result is empty."""
        reply = self.query(expr)
        assert reply["status"] == "success", (expr, reply)
        result = reply["data"]["result"]
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def control(self, method: str, path: str, body: Any = None) -> Any:
        """The simulator's test-only control API."""
        reply = self.http.request(method, f"{self.simulator}/_simulator/{path}", json=body)
        assert reply.is_success, (method, path, reply.status_code, reply.text)
        return reply.json()

    def wait(
        self, what: str, check: Callable[[], T | None], timeout: float, every: float = 0.2
    ) -> T:
        return wait_for(what, check, timeout, every, details=self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"---- {name} ({path})\n" + "\n".join(text))
        return "\n".join(out)


class Processes:
    """Subprocesses started by the fixture, stopped in reverse order whatever happens."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self.running.append((name, popen))
        self.logs[name] = log
        return popen

    def check_alive(self) -> None:
        for name, popen in self.running:
            if popen.poll() is not None:
                text = self.logs[name].read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} exited with {popen.returncode}:\n{text}", pytrace=False)

    def stop_all(self) -> None:
        for _name, popen in reversed(self.running):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for _name, popen in reversed(self.running):
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(5)


def alertmanager_config(receiver: str) -> dict[str, Any]:
    """alerts/alertmanager.yml with the webhook URLs pointed at `receiver` and short timings."""
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    config.setdefault("global", {})["resolve_timeout"] = "10s"
    timings = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}

    def shorten(route: dict[str, Any], top: bool) -> None:
        for key, value in timings.items():
            if top or key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child, False)

    shorten(config["route"], True)
    rewritten = 0
    for r in config["receivers"]:
        for hook in r.get("webhook_configs", []):
            path = httpx.URL(hook["url"]).path
            assert path in ("/page", "/chat"), hook["url"]
            hook["url"] = receiver + path
            rewritten += 1
    assert rewritten == 2, config["receivers"]
    return config


def ready(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = shutil.which("alertmanager") or require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("e2e-alerting")
    procs = Processes(tmp)
    receiver = WebhookReceiver()
    receiver_url = receiver.start()
    client = httpx.Client(timeout=10)
    try:
        ports: dict[str, int] = {}
        for name in ("web", "proxy", "sim", "prom", "am"):
            while (port := free_port()) in ports.values():  # the kernel may hand one out twice
                pass
            ports[name] = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
        procs.start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "--demo",
                "--demo.simulator-address",
                f"127.0.0.1:{ports['sim']}",
                "--web.listen-address",
                f"127.0.0.1:{ports['web']}",
                "--proxy.listen-address",
                f"127.0.0.1:{ports['proxy']}",
                # What people reach it at: the runbook links start with it.
                f"--web.external-url=http://localhost:{ports['web']}/",
            ],
            cwd=ROOT,
            env=env,
        )

        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(receiver_url)))
        (tmp / "am-data").mkdir()
        procs.start(
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={am_config}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{ports['am']}",
                "--cluster.listen-address=",
            ],
        )

        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "alerting": {
                        "alertmanagers": [
                            {"static_configs": [{"targets": [f"127.0.0.1:{ports['am']}"]}]}
                        ]
                    },
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "static_configs": [{"targets": [f"127.0.0.1:{ports['web']}"]}],
                        }
                    ],
                }
            )
        )
        (tmp / "prom-data").mkdir()
        started = time.time()
        procs.start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
            ],
        )

        s = Stack(
            exporter=f"http://127.0.0.1:{ports['web']}",
            proxy=f"http://127.0.0.1:{ports['proxy']}",
            simulator=f"http://127.0.0.1:{ports['sim']}",
            prometheus=f"http://127.0.0.1:{ports['prom']}",
            alertmanager=f"http://127.0.0.1:{ports['am']}",
            receiver=receiver,
            started=started,
            logs=procs.logs,
            http=client,
        )

        def up(url: str) -> bool:
            procs.check_alive()
            return ready(client, url)

        s.wait("the exporter's /-/ready", lambda: up(s.exporter + "/-/ready"), 30)
        s.wait("Alertmanager's /-/ready", lambda: up(s.alertmanager + "/-/ready"), 30)
        s.wait("Prometheus's /-/ready", lambda: up(s.prometheus + "/-/ready"), 30)

        def prometheus_wired() -> bool:
            procs.check_alive()
            rules = client.get(s.prometheus + "/api/v1/rules").json()["data"]["groups"]
            ams = client.get(s.prometheus + "/api/v1/alertmanagers").json()["data"]
            return bool(rules and ams["activeAlertmanagers"])

        s.wait("Prometheus to load the rules and find Alertmanager", prometheus_wired, 30)
        s.wait(
            "the first successful scrape of the exporter",
            lambda: s.value(f'up{{job="{JOB}"}}') == 1,
            30,
        )
        yield s
    finally:
        client.close()
        procs.stop_all()
        receiver.stop()


# ---- 1. every expression evaluates; every dashboard panel has data ------------------------------


@dataclass(frozen=True)
class Target:
    panel: str  # "<file> panel <id> '<title>'"
    ref: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} target {self.ref}"


def dashboard_targets() -> list[Target]:
    out = []
    for path in promql.dashboard_files():
        dash = json.loads(path.read_text(encoding="utf-8"))
        for panel in promql.iter_panels(dash.get("panels", [])):
            for t in panel.get("targets", []):
                if t.get("expr"):
                    out.append(
                        Target(
                            f"{path.name} panel {panel['id']} {panel['title']!r}",
                            t["refId"],
                            promql.substitute(t["expr"], AS_SCRAPED),
                            bool(t.get("instant")),
                        )
                    )
    return out


# Panels, and single targets, that stay empty in the demo even after the test has produced
# everything the demo can produce (name -> why). Keep this minimal: the test fails when a
# listed entry has data.
EMPTY_PANELS: dict[str, str] = {}
_USUAL = "deepseek-overview.json panel 8 'Spend per hour: the last hour against the usual' target"
EMPTY_TARGETS: dict[str, str] = {
    f"{_USUAL} B": "the usual spend needs a week of history; the demo has run for a minute",
    f"{_USUAL} D": "the same, in CNY",
}


def has_data(reply: dict[str, Any]) -> bool:
    """At least one sample that Grafana would draw: NaN (0/0, no traffic) does not count."""
    result = reply["data"]["result"]
    if reply["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    for series in result:
        for _t, v in series.get("values") or [series["value"]]:
            if not math.isnan(float(v)):
                return True
    return False


def produce_rare_series(stack: Stack) -> None:
    """What the demo's own bots don't do, so that every target has something to show: a top-up,
    5xx / 429 replies, a stream cut by the upstream, a completion without usage, reasoning
    tokens. (Without them, "Balance over time, with top-ups" E and "Proxy problems" B and C
    are empty: their series appear only once it happens.) Faults go to /v1/chat/completions,
    which only our extra client uses (the demo's bots call /chat/completions), so they hit
    exactly our requests."""
    # A top-up of the steady account: panel "Balance over time, with top-ups", target E. Not
    # the draining account: a recent top-up there would delay its 402 page (see test 2).
    stack.control("POST", f"accounts/{STEADY}/top_up", {"currency": "CNY", "amount": "5"})
    stack.control(
        "POST",
        "accounts",
        {"name": "e2e-extra", "api_key": EXTRA_KEY, "balances": {"USD": ["0", "50"]}},
    )
    faults = [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 429},
        {"kind": "reset", "after_chunks": 2},  # a streaming reply cut mid-way
        {"kind": "no_usage"},
    ]
    url = f"{stack.proxy}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {EXTRA_KEY}"}
    for n, fault in enumerate(faults):
        stack.control("POST", "faults", {**fault, "path": "/v1/chat/completions", "times": 1})
        body = {
            "model": "deepseek-flash",
            "messages": [{"role": "user", "content": f"fault {n}"}],
            "stream": fault["kind"] == "reset",
        }
        try:
            with stack.http.stream("POST", url, json=body, headers=headers) as reply:
                reply.read()
        except httpx.HTTPError:
            pass  # the reset: the proxy passes the cut on
    # Thinking: reasoning tokens, so that target B of "Tokens per second by type and model" is
    # not only the zeros of the demo's non-thinking requests.
    reply = stack.http.post(
        url,
        json={
            "model": "deepseek-flash",
            "thinking": {"type": "enabled"},
            "messages": [{"role": "user", "content": "think"}],
        },
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    assert stack.control("GET", "faults") == [], "a fault was not consumed"


def test_every_expression_evaluates_against_real_prometheus(stack: Stack) -> None:
    produce_rare_series(stack)

    def scraped_a_while() -> bool:
        scrapes = stack.value(f'count_over_time(up{{job="{JOB}"}}[1m])') or 0
        ok = stack.value(f'sum(increase(deepseek_requests_total{{job="{JOB}", code="200"}}[1m]))')
        return scrapes >= 10 and (ok or 0) > 0

    stack.wait("10 scrapes in the last minute, and demo traffic", scraped_a_while, 40, every=0.5)

    # Every expression of the rules and the dashboards, as an instant query.
    failures = []
    for e in promql.all_expressions(AS_SCRAPED):
        reply = stack.query(e.expr)
        if reply["http_status"] != 200 or reply["status"] != "success" or reply.get("error"):
            failures.append(
                f"{e.where}: {reply.get('errorType')}: {reply.get('error')}\n  {e.expr}"
            )
    assert not failures, "expressions Prometheus refused:\n" + "\n".join(failures)

    # Every panel shows data, as Grafana would query it: stat panels (instant targets) now,
    # graphs over the time the stack has run. The rare series (top-up, faults) take a balance
    # poll (10 s in the demo) and a scrape to appear, so wait for them with a deadline.
    targets = dashboard_targets()
    assert targets, "no dashboard targets found"
    panels = sorted({t.panel for t in targets})

    def empty_targets() -> set[str]:
        now = time.time()
        empty = set()
        for t in targets:
            if t.instant:
                reply = stack.query(t.expr)
            else:
                reply = stack.query_range(t.expr, stack.started, now, 1)
            assert reply["status"] == "success", (t.name, reply)
            if not has_data(reply):
                empty.add(t.name)
        return empty

    expected_empty = set(EMPTY_TARGETS) | {t.name for t in targets if t.panel in EMPTY_PANELS}
    deadline = time.monotonic() + 40
    while (empty := empty_targets()) != expected_empty and time.monotonic() < deadline:
        time.sleep(1)

    empty_panels = {p for p in panels if all(t.name in empty for t in targets if t.panel == p)}
    assert empty_panels == set(EMPTY_PANELS), (
        f"panels without data: {sorted(empty_panels - set(EMPTY_PANELS))}; "
        f"allow-listed panels that have data: {sorted(set(EMPTY_PANELS) - empty_panels)}"
    )
    assert empty == expected_empty, (
        f"targets without data: {sorted(empty - expected_empty)}; "
        f"allow-listed targets that have data: {sorted(expected_empty - empty)}"
    )


# ---- 2. a dry account pages; a top-up resolves the page -----------------------------------------


def insufficient(n: Notification, account: str) -> list[dict[str, Any]]:
    """The DeepSeekInsufficientBalance alerts for `account` in one notification."""
    return [
        a
        for a in n.body["alerts"]
        if a["labels"].get("alertname") == INSUFFICIENT and a["labels"].get("account") == account
    ]


def test_402_pages_and_top_up_resolves(stack: Stack) -> None:
    start = time.monotonic()
    # Dry: the demo's bot for this account keeps calling through the proxy and gets 402s.
    stack.control(
        "PUT", f"accounts/{DRAINING}/balance", {"currency": "USD", "granted": 0, "topped_up": 0}
    )

    def firing() -> Notification | None:
        return next(
            (
                n
                for n in stack.receiver.notifications()
                if any(a["status"] == "firing" for a in insufficient(n, DRAINING))
            ),
            None,
        )

    page = stack.wait(f"{INSUFFICIENT} firing for {DRAINING} at the receiver", firing, 90)
    fired_after = page.at - start
    assert page.path == "/page", page.path
    assert page.body["receiver"] == "page"
    assert page.body["status"] == "firing"
    assert page.body["groupLabels"] == {"alertname": INSUFFICIENT, "account": DRAINING}
    [alert] = insufficient(page, DRAINING)
    assert alert["labels"] == {
        "alertname": INSUFFICIENT,
        "account": DRAINING,
        "severity": "critical",
    }, "one alert per account: no replica, instance or job label"
    # The runbook link opens the runbook the exporter serves, at its --web.external-url.
    runbook = alert["annotations"]["runbook_url"]
    assert runbook == f"{stack.exporter.replace('127.0.0.1', 'localhost')}/runbooks/{INSUFFICIENT}"
    opened = stack.http.get(runbook)
    assert opened.status_code == 200 and f"<h1>{INSUFFICIENT}</h1>" in opened.text
    assert DRAINING in alert["annotations"]["description"]

    # The on-call tops up; the next balance poll (10 s in the demo) sees the account available
    # again with a top-up, and once no 402 has come for a minute the page resolves.
    topped_up = time.monotonic()
    stack.control("POST", f"accounts/{DRAINING}/top_up", {"currency": "USD", "amount": "5.00"})

    def resolved() -> Notification | None:
        return next(
            (
                n
                for n in stack.receiver.notifications()
                if n.at > page.at
                and any(a["status"] == "resolved" for a in insufficient(n, DRAINING))
            ),
            None,
        )

    end = stack.wait(f"the resolved notification of {INSUFFICIENT} for {DRAINING}", resolved, 90)
    assert end.path == "/page"
    assert end.body["status"] == "resolved"
    [alert] = insufficient(end, DRAINING)
    assert alert["startsAt"] == insufficient(page, DRAINING)[0]["startsAt"], "the same alert"

    notes = stack.receiver.notifications()
    pages = [
        n
        for n in notes
        if n.at <= end.at and any(a["status"] == "firing" for a in insufficient(n, DRAINING))
    ]
    assert len(pages) == 1, (
        f"{INSUFFICIENT} for {DRAINING} paged {len(pages)} times: {[n.body for n in pages]}"
    )
    steady = [n.body for n in notes if insufficient(n, STEADY)]
    assert not steady, f"{INSUFFICIENT} for {STEADY}, which never ran dry: {steady}"
    print(
        f"\n{INSUFFICIENT}: paged {fired_after:.1f} s after the balance hit zero, "
        f"resolved {end.at - topped_up:.1f} s after the top-up"
    )


# ---- 3. a user replays their own Prometheus history through the backtest ----------------------


def test_prometheus_history_replays_through_the_backtest(stack: Stack, tmp_path: Path) -> None:
    """What the README tells users to do: fetch deepseek_balance from Prometheus'
    /api/v1/query_range and give the reply to `deepseek-exporter backtest` as it is."""
    stack.wait(
        "20 seconds of balance history",
        lambda: time.time() - stack.started > 20,
        40,
        every=1,
    )
    end = time.time()
    reply = stack.http.get(
        f"{stack.prometheus}/api/v1/query_range",
        params={"query": "deepseek_balance", "start": stack.started, "end": end, "step": 2},
    )
    assert reply.status_code == 200, reply.text
    (history := tmp_path / "range.json").write_text(reply.text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "backtest", "--history", str(history)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("# EOF\n")
    replayed: dict[tuple[str, str, float], float] = {}
    names = set()
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            continue
        head, value, at = line.rsplit(" ", 2)
        name = head.split("{")[0]
        names.add(name)
        if name == "deepseek_balance":
            labels = dict(re.findall(r'(\w+)="([^"]*)"', head))
            replayed[(labels["account"], labels["currency"], float(at))] = float(value)
    expected = {}
    for series in reply.json()["data"]["result"]:
        m = series["metric"]
        for at, value in series["values"]:
            key = (m["account"], m["currency"], float(at))
            expected[key] = max(expected.get(key, float(value)), float(value))
    assert replayed == expected
    assert {"deepseek_balance_burn_rate", "deepseek_balance_exhaustion_seconds"} <= names

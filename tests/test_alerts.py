"""Alert rules, Alertmanager config, runbooks and the Grafana dashboard, checked with real tools.

promtool (Debian package `prometheus`) and amtool (`prometheus-alertmanager`) must be installed:
these tests fail, never skip, without them. The PromQL itself is evaluated against a real
Prometheus scraping the exporter by the end-to-end tests, through tests/promql.py.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql

ROOT = promql.ROOT
ALERTS = ROOT / "alerts"
RULES = ALERTS / "deepseek-rules.yml"
RULE_TESTS = ALERTS / "deepseek-rules.test.yml"
ALERTMANAGER = ALERTS / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "deepseek-overview.json"

RUNBOOKS = ROOT / "docs" / "runbooks"
EXPECTED_ALERTS = {  # name -> severities (the issue's table)
    "DeepSeekInsufficientBalance": {"critical"},
    "DeepSeekAccountUnavailable": {"critical"},
    "DeepSeekBalanceLow": {"warning"},
    "DeepSeekBalanceRunningOut": {"warning", "critical"},
    "DeepSeekSpendSpike": {"warning"},
    "DeepSeekAuthenticationFailures": {"critical"},
    "DeepSeekHighErrorRate": {"warning"},
    "DeepSeekBalancePollFailing": {"warning"},
    "DeepSeekExporterDown": {"critical"},
    "DeepSeekUnmeteredSpend": {"warning"},
}
RECEIVERS = {"critical": "page", "warning": "chat"}
DS = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {
    "currencyUSD",
    "currency:¥",
    "s",
    "dtdurations",
    "reqps",
    "percentunit",
    "short",
    "none",
    "ops",
}


# ---- tools ----------------------------------------------------------------------------------


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"{' / '.join(names)} not found: apt-get install -y prometheus prometheus-alertmanager",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool")


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def alert_rules() -> list[dict]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r]


# ---- rules ----------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    out = run(promtool, "check", "rules", RULES).stdout
    assert "SUCCESS" in out


def test_promtool_unit_tests(promtool: str) -> None:
    run(promtool, "test", "rules", RULE_TESTS.name, cwd=ALERTS)


def test_no_rule_or_panel_selects_a_job() -> None:
    """The rules work under any job name: no selector on `job` anywhere in them. The dashboard
    selects only `job=~"$job"`, whose values are the jobs that export the build info."""
    for e in promql.rule_expressions():
        for sel in promql.selectors(e.expr):
            assert "job" not in {label for label, _, _ in sel.matchers}, e.where
    marker = {"$job": "<the job variable>", "${job}": "<the job variable>"}
    for path in promql.dashboard_files():
        for e in promql.dashboard_expressions(path, marker):
            for sel in promql.selectors(e.expr):
                jobs = [(op, value) for label, op, value in sel.matchers if label == "job"]
                assert jobs in ([], [("=~", "<the job variable>")]), (e.where, jobs)


def test_rule_groups_load_in_prometheus_2_42() -> None:
    for group in load_yaml(RULES)["groups"]:
        assert set(group) <= {"name", "interval", "limit", "rules"}, group["name"]


def test_the_issues_alerts_with_their_severities() -> None:
    found: dict[str, set[str]] = {}
    for rule in alert_rules():
        found.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    assert found == EXPECTED_ALERTS


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}"
)
def test_alert_labels_and_annotations(rule: dict) -> None:
    name = rule["alert"]
    assert set(rule["labels"]) == {"severity"}
    ann = rule["annotations"]
    assert set(ann) == {"summary", "description", "runbook_url"}
    assert "{{" not in ann["summary"], "summary is static"
    if name == "DeepSeekExporterDown":  # per target: up == 0 is always 0, absent() always 1
        assert "$labels.instance" in ann["description"]
    else:
        assert "$labels.account" in ann["description"], "description names the account"
        assert "$value" in ann["description"], "description names the value"
    # The exporter's own /runbooks/<name>, at the base it exports (tests/test_runbooks.py).
    assert ann["runbook_url"].count(f"/runbooks/{name}") == 2, ann["runbook_url"]
    assert "deepseek_exporter_external_url_info" in ann["runbook_url"]
    assert (RUNBOOKS / f"{name}.md").is_file()
    seconds(rule.get("for", "0s"))


def test_insufficient_balance_fires_at_once() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "DeepSeekInsufficientBalance"]
    assert seconds(rule["for"]) == 0
    assert 'code="402"' in rule["expr"] and "increase(" in rule["expr"]


def test_running_out_critical_is_the_shorter_horizon() -> None:
    horizon = {}
    for r in alert_rules():
        if r["alert"] == "DeepSeekBalanceRunningOut":
            horizon[r["labels"]["severity"]] = float(
                re.search(r"<\s*([0-9.]+)", r["expr"]).group(1)
            )
    assert horizon == {"warning": 3 * 86400, "critical": 86400}


def test_recording_rule_names_and_use() -> None:
    used = set()
    for e in promql.all_expressions():
        used |= promql.metric_names(e.expr)
    for rule in recording_rules():
        name = rule["record"]
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*:deepseek_[a-z_]+:[a-z0-9_]+", name), name
        assert name in used, f"{name} is recorded but nothing uses it"
        level = promql.recorded_labels(name)
        by = re.search(r"^\s*\w+ by \(([^)]*)\)", rule["expr"])
        if by:  # the level names exactly the labels the aggregation keeps
            assert {x.strip() for x in by.group(1).split(",")} == level, name


def test_recorded_series_are_read_after_they_are_recorded() -> None:
    """Rules reading a recorded series sit after it in the same group: groups are evaluated
    independently (in promtool in random order), which would add a random one-interval lag."""
    for group in load_yaml(RULES)["groups"]:
        seen: set[str] = set()
        for rule in group["rules"]:
            for name in promql.metric_names(rule["expr"]) & promql.recorded_names():
                assert name in seen, (
                    f"{rule.get('alert') or rule['record']} reads {name} before it is recorded"
                )
            if "record" in rule:
                seen.add(rule["record"])


def test_every_alert_has_a_silent_then_firing_unit_test() -> None:
    """For every alert rule (name, severity): a test where it fires at T with every annotation,
    and a check one evaluation step before T in the same test where it does not."""
    tests = load_yaml(RULE_TESTS)
    step = seconds(tests.get("evaluation_interval", "1m"))
    for group in tests["tests"]:
        assert "interval" in group, f"test {group.get('name')} needs interval:"
    covered = set()
    for rule in alert_rules():
        name, sev = rule["alert"], rule["labels"]["severity"]
        for group in tests["tests"]:
            cases = [c for c in group.get("alert_rule_test", []) if c["alertname"] == name]
            at = {
                seconds(c["eval_time"]): {a["exp_labels"].get("severity") for a in c["exp_alerts"]}
                for c in cases
            }
            for c in cases:
                for a in c["exp_alerts"]:
                    if a["exp_labels"].get("severity") == sev:
                        assert set(a["exp_annotations"]) == set(rule["annotations"]), (
                            name,
                            c["eval_time"],
                        )
            for t, sevs in at.items():
                if sev in sevs and t - step in at and sev not in at[t - step]:
                    covered.add((name, sev))
    missing = {(r["alert"], r["labels"]["severity"]) for r in alert_rules()} - covered
    assert not missing, f"no silent-then-firing test for {sorted(missing)}"


# ---- Alertmanager -----------------------------------------------------------------------------


def test_amtool_check_config(amtool: str) -> None:
    run(amtool, "check-config", ALERTMANAGER)


ROUTE_CASES = [
    ({"severity": "critical"}, "page"),
    ({"severity": "warning"}, "chat"),
    ({"severity": "info"}, "chat"),
] + [
    (
        {"alertname": r["alert"], "severity": r["labels"]["severity"], "account": "main"},
        RECEIVERS[r["labels"]["severity"]],
    )
    for r in alert_rules()
]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    ROUTE_CASES,
    ids=[f"{l_.get('alertname', '')}-{l_['severity']}" for l_, _ in ROUTE_CASES],
)
def test_amtool_routes(amtool: str, labels: dict, receiver: str) -> None:
    run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        *(f"{k}={v}" for k, v in labels.items()),
    )


def test_alertmanager_groups_by_alert_and_account() -> None:
    cfg = load_yaml(ALERTMANAGER)
    assert cfg["route"]["group_by"] == ["alertname", "account"]
    urls = [w["url"] for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == ["http://127.0.0.1:9099/page", "http://127.0.0.1:9099/chat"]
    for rule in cfg["inhibit_rules"]:
        assert rule["equal"] == ["account"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read()
    return json.loads(text) if text.strip() else None


@pytest.mark.e2e
def test_alertmanager_inhibitions(tmp_path: Path) -> None:
    """A real Alertmanager loading alerts/alertmanager.yml: what its inhibit rules mute."""
    binary = _tool("prometheus-alertmanager", "alertmanager")
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={ALERTMANAGER}",
            f"--storage.path={tmp_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "alertmanager did not become ready"
                time.sleep(0.1)
        now = datetime.now(UTC)

        def alert(name: str, severity: str, account: str, **labels: str) -> dict:
            return {
                "labels": {"alertname": name, "severity": severity, "account": account, **labels},
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(hours=1)).isoformat(),
            }

        alerts = {
            # account "dry": calls fail with 402
            "dry/402": alert("DeepSeekInsufficientBalance", "critical", "dry"),
            "dry/unavailable": alert("DeepSeekAccountUnavailable", "critical", "dry"),
            "dry/low": alert("DeepSeekBalanceLow", "warning", "dry", currency="USD"),
            "dry/out-crit": alert("DeepSeekBalanceRunningOut", "critical", "dry", currency="USD"),
            "dry/out-warn": alert("DeepSeekBalanceRunningOut", "warning", "dry", currency="USD"),
            "dry/errors": alert("DeepSeekHighErrorRate", "warning", "dry"),
            # account "soon": runs out within 24 hours
            "soon/out-crit": alert("DeepSeekBalanceRunningOut", "critical", "soon", currency="CNY"),
            "soon/out-warn": alert("DeepSeekBalanceRunningOut", "warning", "soon", currency="CNY"),
            "soon/low": alert("DeepSeekBalanceLow", "warning", "soon", currency="CNY"),
            # account "fine": low only, nothing inhibits it
            "fine/low": alert("DeepSeekBalanceLow", "warning", "fine", currency="CNY"),
            "fine/out-warn": alert("DeepSeekBalanceRunningOut", "warning", "fine", currency="CNY"),
        }
        expected_inhibited = {
            "dry/unavailable",
            "dry/low",
            "dry/out-crit",
            "dry/out-warn",
            "soon/out-warn",
        }
        _http(f"{base}/api/v2/alerts", list(alerts.values()))
        key = {json.dumps(a["labels"], sort_keys=True): k for k, a in alerts.items()}
        deadline = time.monotonic() + 10
        while True:
            got = _http(f"{base}/api/v2/alerts")
            inhibited = {
                key[json.dumps(a["labels"], sort_keys=True)]
                for a in got
                if a["status"]["inhibitedBy"]
            }
            if (
                len(got) == len(alerts) and inhibited == expected_inhibited
            ) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(got) == len(alerts)
        assert inhibited == expected_inhibited
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- runbooks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_runbook(name: str) -> None:
    text = (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")
    assert text.startswith(f"# {name}\n")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == ["Meaning", "Impact", "Diagnosis", "Mitigation"]
    assert "deepseek-exporter balance" in text
    assert "```promql" in text


# ---- Grafana ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_is_the_builders_output() -> None:
    run(sys.executable, GRAFANA / "build_dashboard.py", "--check")


def test_dashboard_model(dashboard: dict) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    account = variables["account"]
    assert account["type"] == "query" and account["datasource"] == DS
    assert re.fullmatch(r"label_values\(deepseek_up(\{[^}]*\})?, account\)", account["definition"])
    assert account["multi"] and account["includeAll"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS, var["name"]


def panels(dashboard: dict) -> list[dict]:
    return list(promql.iter_panels(dashboard["panels"]))


def test_dashboard_panels(dashboard: dict) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels(dashboard):
        where = f"panel {p['id']} {p['title']!r}"
        assert p.get("description", "").strip(), f"{where}: no description"
        assert p.get("datasource") == DS, where
        if p["type"] == "row":
            continue
        assert p["targets"], where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in p["targets"]:
            assert t.get("datasource") == DS, f"{where} target {t['refId']}"
            assert t["expr"].strip()
        units = [p["fieldConfig"]["defaults"].get("unit")]
        units += [
            prop["value"]
            for o in p["fieldConfig"]["overrides"]
            for prop in o["properties"]
            if prop["id"] == "unit"
        ]
        assert set(units) <= UNITS, f"{where}: units {units}"


def test_dashboard_grid(dashboard: dict) -> None:
    boxes = []
    for p in panels(dashboard):
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24
        for q, h in boxes:
            overlap = (
                g["x"] < h["x"] + h["w"]
                and h["x"] < g["x"] + g["w"]
                and g["y"] < h["y"] + h["h"]
                and h["y"] < g["y"] + g["h"]
            )
            assert not overlap, f"panels {p['id']} and {q} overlap"
        boxes.append((p["id"], g))


def _ranges_of(expr: str, functions: tuple[str, ...]) -> list[str]:
    """The range ([...]) inside each call of `functions` in expr."""
    out = []
    for m in re.finditer(rf"\b({'|'.join(functions)})\s*\(", expr):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out += re.findall(r"\[([^\]]+)\]", expr[m.end() : i])[-1:]
    return out


def test_dashboard_rates_use_rate_interval(dashboard: dict) -> None:
    for p in panels(dashboard):
        for t in p.get("targets", []):
            for window in _ranges_of(t["expr"], ("rate", "irate")):
                assert window == "$__rate_interval", (
                    f"panel {p['id']} {t['refId']}: rate over [{window}]"
                )
            assert "[$__interval]" not in t["expr"]


def test_dashboard_402_stands_out(dashboard: dict) -> None:
    (p,) = [p for p in panels(dashboard) if p["title"] == "Requests per second by status code"]
    assert p["fieldConfig"]["defaults"]["unit"] == "reqps"
    (o,) = [
        o
        for o in p["fieldConfig"]["overrides"]
        if o["matcher"] == {"id": "byName", "options": "402"}
    ]
    assert {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}} in o["properties"]


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "deepseek.yml")
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# ---- every expression: names, labels, syntax ---------------------------------------------

EXPRESSIONS = promql.all_expressions()


def test_expressions_found() -> None:
    wheres = [e.where for e in EXPRESSIONS]
    assert any(w.startswith("alert ") for w in wheres) and any(" panel " in w for w in wheres)
    assert len(wheres) == len(set(wheres))


@pytest.mark.parametrize("e", EXPRESSIONS, ids=lambda e: e.where)
def test_expression_references_only_exported_metrics(e: promql.Expr) -> None:
    recorded = promql.recorded_names()
    for sel in promql.selectors(e.expr):
        assert sel.metric, f"{e.where}: a selector without a metric name"
        if sel.metric in recorded:
            labels = promql.recorded_labels(sel.metric)
        else:
            assert sel.metric in promql.EXPORTED, f"{e.where}: {sel.metric} is not exported"
            labels = promql.EXPORTED[sel.metric] | promql.COMMON_TARGET_LABELS
        for label, op, value in sel.matchers:
            assert label in labels, f"{e.where}: {sel.metric} has no label {label}"
            allowed = promql.ENUMS.get((sel.metric, label)) or promql.ENUMS.get((None, label))
            if allowed is None:
                continue
            values = [value] if op in ("=", "!=") else value.split("|")
            if all(re.fullmatch(r"\w+", v) for v in values):
                assert set(values) <= allowed, f"{e.where}: {sel.metric}{{{label}{op}{value!r}}}"


def test_every_expression_parses_in_prometheus(promtool: str, tmp_path: Path) -> None:
    """promtool check rules on a rule file of every expression: the dashboard's too."""
    rules = [{"record": f"check:expr_{i}:x", "expr": e.expr} for i, e in enumerate(EXPRESSIONS)]
    path = tmp_path / "all.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "all", "rules": rules}]}), encoding="utf-8")
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode:
        bad = [
            EXPRESSIONS[int(i)].where for i in re.findall(r"expr_(\d+)", proc.stdout + proc.stderr)
        ]
        pytest.fail(f"promtool rejects {bad or 'an expression'}:\n{proc.stdout}\n{proc.stderr}")

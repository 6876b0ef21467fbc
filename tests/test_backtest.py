"""``deepseek-exporter backtest``: bad input, the same numbers as a live exporter, OpenMetrics that
promtool backfills, query_range JSON, and the alert timeline, as users type it."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.balance.backtest import OMITTED, iter_samples, read_history, replay, run_backtest
from exporter.config import Config
from tests.conftest import BackgroundLoop, FakeClock, require_binary
from tests.harness import exporter_config, running_exporter, running_simulator

TESTDATA = Path(__file__).parent / "testdata" / "backtest"
EXPORTER = [sys.executable, "-m", "exporter"]
START = 1_793_548_800  # Monday 2026-11-02 00:00 in Beijing
AVAILABLE = "deepseek_account_available"
UP = "deepseek_up"

# One fixture per error, and the one line each must give (after "backtest: <path>").
BAD_INPUT = {
    "header_wrong.csv": ":1: the header must be timestamp,account,currency,balance",
    "no_rows.csv": ": no balances in the history",
    "too_many_fields.csv": ":3: expected 4 fields, got 5",
    "bad_timestamp.csv": ":3: timestamp: 'yesterday' is neither Unix seconds nor RFC 3339",
    "timestamp_without_zone.csv": ":2: timestamp: '2026-11-02T10:00:00' has no time zone",
    "bad_account.csv": ":2: account: 'prod team' must match [a-zA-Z0-9_-]+",
    "bad_currency.csv": ":2: currency: 'yuan' is not a currency code",
    "bad_balance.csv": ":2: balance: 'ten' is not a decimal amount",
    "nan_balance.csv": ":2: balance: 'NaN' is not a decimal amount",
    "negative_balance.csv": ":3: balance: -3.00 is negative",
    "duplicate_row.csv": ":4: prod CNY at 1793548800 is already on line 2",
    "not_utf8.csv": ": cannot read: not UTF-8 text",
    "not_json.json": ":2: not JSON",
    "error_reply.json": ": not a successful Prometheus query_range reply (status is not success)",
    "instant_query.json": ": data.resultType: expected matrix (a query_range reply)",
    "no_account_label.json": ": data.result[0].metric: no account label",
    "other_metric.json": (
        ": data.result[0].metric: 'deepseek_balance_granted', expected deepseek_balance"
    ),
    "point_not_a_pair.json": ": data.result[0].values[0]: expected [time, value]",
    "time_not_a_number.json": (
        ": data.result[0].values[0]: time: expected Unix seconds, got '2026-11-02'"
    ),
    "value_not_a_string.json": (
        ": data.result[0].values[1]: value: expected a decimal string, got 9.9"
    ),
    "value_not_a_number.json": ": data.result[0].values[2]: balance: 'NaN' is not a decimal amount",
}


def test_every_fixture_has_its_expected_error() -> None:
    assert sorted(BAD_INPUT) == sorted(p.name for p in TESTDATA.iterdir())


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input_gives_one_line_and_writes_nothing(name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = str(TESTDATA / name)
    assert run_backtest(path, None, stdout=out, stderr=err) == 1
    assert err.getvalue() == f"backtest: {path}{BAD_INPUT[name]}\n"
    assert out.getvalue() == ""


def test_bad_input_from_a_real_process() -> None:
    path = TESTDATA / "negative_balance.csv"
    result = subprocess.run(
        [*EXPORTER, "backtest", "--history", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == f"backtest: {path}:3: balance: -3.00 is negative\n"
    assert result.stdout == ""


def test_a_missing_file_and_a_bad_config() -> None:
    err = io.StringIO()
    assert run_backtest("/nonexistent/history.csv", None, stderr=err) == 1
    assert (
        err.getvalue()
        == "backtest: /nonexistent/history.csv: cannot read: No such file or directory\n"
    )
    err = io.StringIO()
    bad_config = str(Path(__file__).parent / "testdata" / "config" / "negative_threshold.yml")
    assert run_backtest(str(TESTDATA / "no_rows.csv"), bad_config, stderr=err) == 1
    assert err.getvalue().startswith("config error: accounts[0].low_balance_threshold")


def write_csv(path: Path, rows: list[tuple[object, str, str, str]]) -> Path:
    path.write_text(
        "timestamp,account,currency,balance\n"
        + "".join(f"{t},{a},{c},{b}\n" for t, a, c, b in rows)
    )
    return path


def test_rows_in_any_order_with_both_time_formats(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "h.csv",
        [
            (START + 600, "prod", "CNY", "9.00"),
            ("2026-11-01T16:00:00Z", "prod", "CNY", "10.00"),
            ("2026-11-02T00:05:00+08:00", "prod", "CNY", "9.50"),
        ],
    )
    rows = sorted(read_history(str(path)), key=lambda r: r.at)
    assert [(r.at, r.balance) for r in rows] == [
        (START, Decimal("10.00")),
        (START + 300, Decimal("9.50")),
        (START + 600, Decimal("9.00")),
    ]


def test_the_replay_says_what_the_live_exporter_said(background_loop: BackgroundLoop) -> None:
    """Poll a live exporter (simulated API, injected clock) through a sequence of balances and
    scrape it after every poll; the backtest of the same balances writes the same samples."""
    steps = [("100.00", "20.00"), ("99.50", "20.00"), ("98.00", "19.00"), ("150.00", "19.00")]
    steps += [(f"{150 - i * 0.75:.2f}", "18.50") for i in range(1, 30)]
    scrapes: dict[int, dict] = {}
    rows = []
    with running_simulator() as sim:
        config = exporter_config(sim.base_url)
        # The exporter polls once as it starts: at START - 300, before the history.
        with running_exporter(config, background_loop, FakeClock(START - 300)) as running:
            for i, (cny, usd) in enumerate(steps):
                sim.set_balance("prod", "CNY", "0", cny)
                sim.set_balance("usd", "USD", "0", usd)
                running.clock.now = START + i * 300
                running.poll()
                scrapes[START + i * 300] = running.samples()
                rows += [
                    (START + i * 300, "prod", "CNY", Decimal(cny)),
                    (START + i * 300, "usd", "USD", Decimal(usd)),
                ]
    out = io.StringIO()
    # The live exporter saw one poll before the history starts: the replay starts with it too.
    first = [
        (START - 300, "prod", "CNY", Decimal("110.00")),
        (START - 300, "usd", "USD", Decimal("20.00")),
    ]
    asyncio.run(replay([_row(*r) for r in first + rows], config, out))
    text = out.getvalue()
    assert text.endswith("# EOF\n")
    replayed: dict[float, dict] = {}
    for name, labels, value, at in iter_samples(text):
        replayed.setdefault(at, {})[(name, frozenset(labels.items()))] = value
    for at, live in scrapes.items():
        expected = {
            key: value
            for key, value in live.items()
            if (key[0].startswith(("deepseek_balance", "deepseek_account_")) or key[0] == UP)
            and not any(key[0].startswith(o) for o in OMITTED)
        }
        assert replayed[at] == expected, at


def _row(at: float, account: str, currency: str, balance: Decimal):
    from exporter.balance.backtest import Row

    return Row(at, account, currency, balance)


def history_csv(tmp_path: Path, hours: int = 30) -> Path:
    """prod spends 1 CNY an hour from 40; usd never spends."""
    rows = []
    for i in range(hours * 12 + 1):
        rows.append((START + i * 300, "prod", "CNY", f"{40 - i / 12:.2f}"))
        rows.append((START + i * 300, "usd", "USD", "20.00"))
    return write_csv(tmp_path / "history.csv", rows)


def test_openmetrics_that_promtool_backfills(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    history = history_csv(tmp_path, hours=6)
    result = subprocess.run(
        [*EXPORTER, "backtest", "--history", str(history)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    lines = text.splitlines()
    assert lines[-1] == "# EOF"
    samples = list(iter_samples(text))
    assert all(line.startswith("#") or len(line.rsplit(" ", 2)) == 3 for line in lines)
    times = sorted({s[3] for s in samples})
    assert times == [START + i * 300 for i in range(6 * 12 + 1)]  # every input time
    names = {s[0] for s in samples}
    assert names >= {
        "deepseek_balance",
        "deepseek_up",
        "deepseek_account_available",
        "deepseek_balance_spent_total",
        "deepseek_balance_burn_rate",
        "deepseek_balance_exhaustion_seconds",
        "deepseek_balance_spend_spike_min_burn_rate",
    }
    assert not names & {"deepseek_balance_granted", "deepseek_balance_poll_duration_seconds"}
    (om := tmp_path / "replay.om").write_text(text)
    blocks = tmp_path / "blocks"
    backfill = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(blocks)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    listing = subprocess.run(
        [promtool, "tsdb", "list", str(blocks)], capture_output=True, text=True, timeout=60
    )
    counts = [int(line.split()[4]) for line in listing.stdout.splitlines()[1:]]
    assert sum(counts) == len(samples)


def test_standard_input_and_flags_in_every_position(tmp_path: Path) -> None:
    history = history_csv(tmp_path, hours=2)
    config = tmp_path / "deepseek.yml"
    config.write_text(
        "balance: {poll_interval: 0s}\n"  # a proxy-only replica's config: settings still apply
        "accounts:\n  - {name: prod, api_key_env: UNSET, low_balance_threshold: 39,"
        " spend_spike_min_per_day: 48}\n"
    )
    outputs = []
    for argv in (
        ["backtest", "--history", "-", "--config.file", str(config)],
        ["--config.file", str(config), "backtest", "--history=-"],
        ["--log.level=debug", "backtest", f"--config.file={config}", "--history", "-"],
    ):
        result = subprocess.run(
            [*EXPORTER, *argv], input=history.read_text(), capture_output=True, text=True
        )
        assert result.returncode == 0, (argv, result.stderr)
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    samples = {(n, frozenset(lbl.items()), t): v for n, lbl, v, t in iter_samples(outputs[0])}
    prod = frozenset({"account": "prod", "currency": "CNY"}.items())
    usd = frozenset({"account": "usd", "currency": "USD"}.items())
    assert samples[("deepseek_balance_low_threshold", prod, START)] == 39
    assert samples[("deepseek_balance_spend_spike_min_burn_rate", prod, START)] == 48 / 86400
    # an account the config does not name: the defaults (no threshold, a floor of 1 a day)
    assert ("deepseek_balance_low_threshold", usd, START) not in samples
    assert samples[("deepseek_balance_spend_spike_min_burn_rate", usd, START)] == 1 / 86400


def test_query_range_json_of_two_replicas(tmp_path: Path) -> None:
    def series(instance: str, values: list[tuple[int, str]]) -> dict:
        labels = {"__name__": "deepseek_balance", "account": "prod", "currency": "CNY"}
        return {
            "metric": {**labels, "job": "deepseek", "instance": instance},
            "values": [[t, v] for t, v in values],
        }

    reply = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                series("a:9402", [(START, "10"), (START + 60, "9.5"), (START + 120, "9")]),
                # replica b polls a little later: it still shows the older, higher balance
                series("b:9402", [(START, "10"), (START + 60, "9.8"), (START + 120, "9")]),
            ],
        },
    }
    (path := tmp_path / "range.json").write_text(json.dumps(reply))
    rows = sorted(read_history(str(path)), key=lambda r: r.at)
    assert [(r.at, r.balance) for r in rows] == [
        (START, Decimal(10)),
        (START + 60, Decimal("9.8")),
        (START + 120, Decimal(9)),
    ]


def test_rules_show_when_each_alert_would_have_fired(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    history = history_csv(tmp_path, hours=30)  # prod: 40 CNY at 1 an hour
    config = tmp_path / "deepseek.yml"
    config.write_text("accounts: [{name: prod, api_key: x, low_balance_threshold: 30}]\n")
    rules = Path(__file__).resolve().parent.parent / "alerts" / "deepseek-rules.yml"
    result = subprocess.run(
        [
            *EXPORTER,
            "backtest",
            "--history",
            str(history),
            "--config.file",
            str(config),
            "--rules",
            str(rules),
            "--promtool",
            promtool,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table = [line.split("  ") for line in result.stdout.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in table]
    assert rows[0] == ["ALERT", "SEVERITY", "ACCOUNT", "CURRENCY", "FIRING FROM", "UNTIL"]
    fired = {(r[0], r[1], r[2]): r[4:] for r in rows[1:]}
    # 30.00 at hour 10 (2026-11-02 02:00 UTC), under it 5 minutes later, firing after `for: 5m`.
    assert fired[("DeepSeekBalanceLow", "warning", "prod")] == [
        "2026-11-02 02:10 UTC",
        "end of history",
    ]
    # 40 at 1 an hour: under 24 hours left from hour 16 and 5 minutes (08:05 UTC), paging after
    # `for: 15m`; under 3 days from the first forecast (the second poll, 16:05 UTC the day
    # before), warning after `for: 1h`.
    assert fired[("DeepSeekBalanceRunningOut", "critical", "prod")][0] == "2026-11-02 08:20 UTC"
    assert fired[("DeepSeekBalanceRunningOut", "warning", "prod")][0] == "2026-11-01 17:05 UTC"
    assert len(rows) == 4, "and nothing else"
    assert not [r for r in rows[1:] if r[2] == "usd"]


@pytest.mark.e2e
def test_a_backfilled_replay_fills_the_dashboards_balance_panels(tmp_path: Path) -> None:
    """The README's way to look at a replay: backfill it with promtool into a Prometheus and
    open the dashboard (job: All). Every balance panel has data, the usual spend included."""
    import time

    import httpx

    from exporter.simulator.histories import generate
    from tests import promql

    promtool, prometheus = require_binary("promtool"), require_binary("prometheus")
    histories = [
        generate(
            "office_peak_topup",
            step=900,
            account="office",
            days=8.5,
            empty_after_days=10,
            topup_day=5,
            topup_extends_to=30,
        ),
        generate("small_bot", step=900, account="bot", days=8.5),
    ]
    rows = [r for h in histories for r in h.rows()]
    out = io.StringIO()
    asyncio.run(replay([_row(*r) for r in rows], Config(), out))
    (om := tmp_path / "replay.om").write_text(out.getvalue())
    data = tmp_path / "data"
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (config := tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    port = _free_port()
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    start, end = histories[0].times[0], histories[0].times[-1]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "prometheus did not start"
            time.sleep(0.1)
        # Job "All"; a rate window that spans the replay's 15-minute samples.
        grafana_all = {"$job": ".*", "${job}": ".*", "$__rate_interval": "1h"}

        def balance_metric(name: str) -> bool:
            return name.startswith("deepseek_balance") or name in ("deepseek_up", AVAILABLE)

        checked, empty = 0, []
        for path in promql.dashboard_files():
            for e in promql.dashboard_expressions(path, grafana_all):
                names = promql.metric_names(e.expr)
                if not names or not all(balance_metric(n) for n in names):
                    continue
                if names & OMITTED:
                    continue  # not knowable from a history of totals
                if "panel" not in e.where or "low_threshold" in e.expr:
                    continue  # variables; no threshold configured in this replay
                reply = httpx.get(
                    f"{url}/api/v1/query_range",
                    params={"query": e.expr, "start": start, "end": end, "step": 900},
                    timeout=10,
                ).json()
                assert reply["status"] == "success", (e.where, reply)
                checked += 1
                if not reply["data"]["result"]:
                    empty.append(e.where)
        assert checked >= 8 and not empty, empty
    finally:
        proc.terminate()
        proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

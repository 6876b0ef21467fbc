"""The balance exporter end to end: the simulator over real loopback HTTP, an injected clock."""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from exporter.balance.client import POLL_ERROR_REASONS
from exporter.config import AccountConfig, BalanceConfig, Secret
from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop, require_binary
from tests.harness import (
    PROD_KEY,
    USD_KEY,
    exporter_config,
    parse_samples,
    running_exporter,
    running_simulator,
    wait_until,
)

GOLDEN = Path(__file__).parent / "golden" / "balance-metrics.txt"


@pytest.fixture
def sim() -> Simulator:
    with running_simulator() as simulator:
        yield simulator


def test_balance_metrics_have_exact_values(sim: Simulator, background_loop: BackgroundLoop) -> None:
    with running_exporter(exporter_config(sim.base_url), background_loop) as running:
        v = running.value
        assert v("deepseek_balance", account="prod", currency="CNY") == 110.0
        assert v("deepseek_balance_granted", account="prod", currency="CNY") == 10.0
        assert v("deepseek_balance_topped_up", account="prod", currency="CNY") == 100.0
        assert v("deepseek_balance", account="usd", currency="USD") == 20.0
        assert v("deepseek_account_available", account="prod") == 1.0
        assert v("deepseek_balance_low_threshold", account="prod", currency="CNY") == 5.0
        assert v("deepseek_balance_low_threshold", account="usd", currency="USD") is None
        assert v("deepseek_up", account="prod") == 1.0
        assert (
            v("deepseek_balance_last_success_timestamp_seconds", account="prod")
            == running.clock.now
        )
        assert v("deepseek_balance_poll_duration_seconds", account="prod") > 0
        for reason in POLL_ERROR_REASONS:
            assert v("deepseek_balance_poll_errors_total", account="prod", reason=reason) == 0
        assert v("deepseek_balance_spent_total", account="prod", currency="CNY") == 0
        assert v("deepseek_balance_topups_total", account="prod", currency="CNY") == 0
        assert v("deepseek_exporter_build_info", version="0.1.0") == 1
        assert v("deepseek_exporter_config_last_reload_successful") == 1
        # One observation: no burn rate or forecast yet, rather than a made-up one.
        assert v("deepseek_balance_burn_rate", account="prod", currency="CNY", window="1h") is None
        assert v("deepseek_balance_exhaustion_seconds", account="prod", currency="CNY") is None


def test_burn_rate_and_forecast_follow_spend_and_ignore_topups(
    sim: Simulator, background_loop: BackgroundLoop
) -> None:
    with running_exporter(exporter_config(sim.base_url), background_loop) as running:
        v = running.value
        sim.set_balance("prod", "CNY", "0.00", "104.00")  # 6 spent...
        running.clock.advance(600)  # ...in 10 minutes
        running.poll()
        assert v("deepseek_balance_spent_total", account="prod", currency="CNY") == 6.0
        for window in ("1h", "6h", "24h"):
            rate = v("deepseek_balance_burn_rate", account="prod", currency="CNY", window=window)
            assert rate == pytest.approx(6 / 600)
        assert v("deepseek_balance_exhaustion_seconds", account="prod", currency="CNY") == (
            pytest.approx(104 / (6 / 600))
        )
        # Nothing spent on the USD account: it never runs out.
        assert v("deepseek_balance_exhaustion_seconds", account="usd", currency="USD") == math.inf

        sim.top_up("prod", "CNY", "100")
        running.clock.advance(600)
        running.poll()
        assert v("deepseek_balance_topups_total", account="prod", currency="CNY") == 1
        assert v("deepseek_balance_spent_total", account="prod", currency="CNY") == 6.0
        rate = v("deepseek_balance_burn_rate", account="prod", currency="CNY", window="1h")
        assert rate == pytest.approx(6 / 1200)
        assert v("deepseek_balance", account="prod", currency="CNY") == 204.0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"kind": "delay", "seconds": 3.0}, "timeout"),
        ({"kind": "status", "status": 500}, "http_error"),
        ({"kind": "status", "status": 401}, "unauthorized"),
        ({"kind": "html", "status": 502}, "http_error"),
        ({"kind": "non_json"}, "invalid_response"),
        (
            {
                "kind": "body",
                "body": {"is_available": True, "balance_infos": [{"currency": "CNY"}]},
            },
            "invalid_response",
        ),
        (
            {
                "kind": "body",
                "body": {
                    "is_available": True,
                    "balance_infos": [
                        {
                            "currency": "CNY",
                            "total_balance": "-3",
                            "granted_balance": "0",
                            "topped_up_balance": "-3",
                        }
                    ],
                },
            },
            "invalid_response",
        ),
        ({"kind": "drop"}, "connection"),
    ],
)
def test_failed_poll_counts_the_reason_and_keeps_last_good_values(
    sim: Simulator, background_loop: BackgroundLoop, fault: dict[str, object], reason: str
) -> None:
    config = exporter_config(sim.base_url)
    config = replace(config, deepseek=replace(config.deepseek, timeout=0.5))
    with running_exporter(config, background_loop) as running:
        v = running.value
        kind = fault.pop("kind")
        sim.add_fault(kind, path="/user/balance", times=2, **fault)
        running.clock.advance(60)
        running.poll()
        for account in ("prod", "usd"):
            assert v("deepseek_up", account=account) == 0
            assert v("deepseek_balance_poll_errors_total", account=account, reason=reason) == 1
            others = [r for r in POLL_ERROR_REASONS if r != reason]
            assert all(
                v("deepseek_balance_poll_errors_total", account=account, reason=r) == 0
                for r in others
            )
        # Last good values stay (never a made-up value from the bad reply)...
        assert v("deepseek_balance", account="prod", currency="CNY") == 110.0
        assert v("deepseek_balance_last_success_timestamp_seconds", account="prod") == (
            running.clock.now - 60
        )
        # ...until they are older than max_staleness: then their series disappear.
        sim.add_fault("status", path="/user/balance", times=2, status=503)
        running.clock.advance(300)
        running.poll()
        samples = running.samples()
        assert not [k for k in samples if k[0] == "deepseek_balance"]
        assert not [k for k in samples if k[0] == "deepseek_account_available"]
        assert v("deepseek_up", account="prod") == 0
        # Recovery brings them back.
        running.clock.advance(60)
        running.poll()
        assert v("deepseek_up", account="prod") == 1
        assert v("deepseek_balance", account="prod", currency="CNY") == 110.0


def test_unreachable_upstream_is_a_connection_error(background_loop: BackgroundLoop) -> None:
    config = exporter_config("http://127.0.0.1:9")  # discard port: nothing listens
    with running_exporter(config, background_loop) as running:
        assert running.value("deepseek_up", account="prod") == 0
        assert (
            running.value("deepseek_balance_poll_errors_total", account="prod", reason="connection")
            == 1
        )
        assert running.value("deepseek_balance", account="prod", currency="CNY") is None


def test_wrong_key_is_unauthorized(sim: Simulator, background_loop: BackgroundLoop) -> None:
    config = exporter_config(
        sim.base_url, accounts=(AccountConfig("bad", Secret("sk-wrong-key-0000")),)
    )
    with running_exporter(config, background_loop) as running:
        assert (
            running.value(
                "deepseek_balance_poll_errors_total", account="bad", reason="unauthorized"
            )
            == 1
        )
        page = httpx.get(running.web_url + "/").text
        assert "unauthorized" in page and "sk-wrong-key" not in page


def test_unavailable_account(sim: Simulator, background_loop: BackgroundLoop) -> None:
    sim.set_balance("usd", "USD", "0", "0")
    with running_exporter(exporter_config(sim.base_url), background_loop) as running:
        assert running.value("deepseek_account_available", account="usd") == 0
        assert running.value("deepseek_balance", account="usd", currency="USD") == 0
        assert (
            running.value("deepseek_balance_exhaustion_seconds", account="usd", currency="USD")
            is None
        )
        running.clock.advance(60)
        running.poll()
        assert (
            running.value("deepseek_balance_exhaustion_seconds", account="usd", currency="USD") == 0
        )


def test_numeric_amounts_are_accepted(background_loop: BackgroundLoop) -> None:
    with (
        running_simulator(numeric_balances=True) as sim,
        running_exporter(exporter_config(sim.base_url), background_loop) as running,
    ):
        assert running.value("deepseek_balance", account="prod", currency="CNY") == 110.0


def test_endpoints(sim: Simulator, background_loop: BackgroundLoop) -> None:
    with running_exporter(exporter_config(sim.base_url), background_loop) as running:
        url = running.web_url
        assert httpx.get(url + "/-/healthy").status_code == 200
        assert httpx.get(url + "/-/ready").status_code == 200
        page = httpx.get(url + "/")
        assert page.headers["content-type"].startswith("text/html")
        assert "prod" in page.text and "110.00</span> CNY" in page.text
        assert 'href="/metrics"' in page.text
        om = httpx.get(url + "/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        raw = httpx.get(url + "/metrics", headers={"Accept-Encoding": "gzip"})
        assert raw.headers["content-encoding"] == "gzip"
        assert b"deepseek_balance{" in raw.content  # httpx decoded it
        raw_bytes = httpx.get(url + "/metrics", headers={"Accept-Encoding": "gzip"}).read()
        assert b"deepseek_balance{" in raw_bytes


def test_not_ready_until_every_account_was_polled(
    sim: Simulator, background_loop: BackgroundLoop
) -> None:
    sim.add_fault("delay", path="/user/balance", times=2, seconds=1.0)
    config = exporter_config(sim.base_url)
    from exporter.app import create_app

    exporter = create_app(config)
    background_loop.run(exporter.start())
    try:
        assert httpx.get(exporter.web_url + "/-/ready").status_code == 503
        wait_until(lambda: exporter.ready)
        assert httpx.get(exporter.web_url + "/-/ready").status_code == 200
    finally:
        background_loop.run(exporter.stop())


def test_reload_applies_good_config_and_keeps_old_on_bad(
    sim: Simulator, background_loop: BackgroundLoop, tmp_path: Path
) -> None:
    from exporter.app import load_all

    file = tmp_path / "config.yml"
    env = {"K_PROD": PROD_KEY, "K_USD": USD_KEY}
    base = (
        f"deepseek: {{base_url: '{sim.base_url}'}}\n"
        "balance: {poll_interval: 1h, max_staleness: 2h}\n"
    )
    file.write_text(base + "accounts: [{name: prod, api_key_env: K_PROD}]\n")
    config, _ = load_all(file, env)
    config = replace(
        config, web=exporter_config(sim.base_url).web, proxy=exporter_config(sim.base_url).proxy
    )

    def loader():  # the listeners stay where the test put them
        new, prices = load_all(file, env)
        return replace(new, web=config.web, proxy=config.proxy), prices

    with running_exporter(config, background_loop, loader=loader) as running:
        assert running.value("deepseek_up", account="usd") is None
        file.write_text(
            base
            + "accounts: [{name: prod, api_key_env: K_PROD}, {name: usd, api_key_env: K_USD}]\n"
        )
        assert httpx.post(running.web_url + "/-/reload").status_code == 200
        assert running.value("deepseek_balance", account="usd", currency="USD") == 20.0
        assert running.value("deepseek_exporter_config_last_reload_successful") == 1

        file.write_text(base + "accounts: [{name: prod, api_key_env: K_PROD, poll_interval: 1s}]\n")
        response = httpx.post(running.web_url + "/-/reload")
        assert response.status_code == 500
        assert "accounts[0].poll_interval: unknown key" in response.text
        assert running.value("deepseek_exporter_config_last_reload_successful") == 0
        assert (
            running.value("deepseek_balance", account="usd", currency="USD") == 20.0
        )  # old config runs
        assert httpx.get(running.web_url + "/-/reload").status_code == 405


def normalise(exposition: str) -> str:
    """The exposition with the values that vary between runs (durations) masked."""
    return re.sub(
        r"^(deepseek_balance_poll_duration_seconds\{[^}]*\}) .*$",
        r"\1 <duration>",
        exposition,
        flags=re.M,
    )


def test_golden_exposition_passes_promtool(sim: Simulator, background_loop: BackgroundLoop) -> None:
    promtool = require_binary("promtool")
    config = exporter_config(
        sim.base_url, proxy=replace(exporter_config(sim.base_url).proxy, enabled=False)
    )
    with running_exporter(config, background_loop) as running:
        sim.set_balance("prod", "CNY", "10.00", "90.00")
        running.clock.advance(3600)
        running.poll()
        text = running.scrape_text()
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    balance_part = "".join(
        line + "\n"
        for line in normalise(text).splitlines()
        if re.search(r"deepseek_(balance|up\b|account)", line)
    )
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(balance_part)
    assert balance_part == GOLDEN.read_text()


def test_key_never_appears_in_any_output(
    sim: Simulator, background_loop: BackgroundLoop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    config = exporter_config(sim.base_url)
    with running_exporter(config, background_loop) as running:
        sim.add_fault("status", path="/user/balance", times=1, status=401)
        running.poll()
        outputs = [
            running.scrape_text(),
            httpx.get(running.web_url + "/").text,
            repr(config),
            repr(running.exporter.poller.states),
            caplog.text,
        ]
    for output in outputs:
        assert PROD_KEY not in output and USD_KEY not in output
        assert PROD_KEY[-8:] not in output


def test_poll_interval_zero_disables_polling(
    sim: Simulator, background_loop: BackgroundLoop
) -> None:
    config = exporter_config(sim.base_url, balance=BalanceConfig(poll_interval=0))
    with running_exporter(config, background_loop) as running:
        samples = running.samples()
        assert not [k for k in samples if k[0] == "deepseek_balance"]
        # A proxy-only replica reports no poll state at all: no deepseek_up 0 to page anyone.
        assert not [k for k in samples if k[0] == "deepseek_up"]
        assert httpx.get(running.web_url + "/-/ready").status_code == 200


def test_exhaustion_gauges_parse(sim: Simulator, background_loop: BackgroundLoop) -> None:
    with running_exporter(exporter_config(sim.base_url), background_loop) as running:
        running.clock.advance(60)
        running.poll()
        samples = parse_samples(running.scrape_text())
        assert (
            samples[
                (
                    "deepseek_balance_exhaustion_seconds",
                    frozenset({"account": "prod", "currency": "CNY"}.items()),
                )
            ]
            == math.inf
        )

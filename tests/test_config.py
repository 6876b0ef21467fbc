"""Configuration: every invalid fixture is refused with exactly the one line it documents."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from exporter.config import ConfigError, Secret, load_config, parse_duration

TESTDATA = Path(__file__).parent / "testdata" / "config"
INVALID = sorted(TESTDATA.glob("*.yml"))


def expected_error(fixture: Path) -> str:
    first = fixture.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{fixture.name} must start with '# error: <message>'"
    return first.removeprefix("# error: ").replace("{dir}", str(fixture.parent))


@pytest.mark.parametrize("fixture", INVALID, ids=[f.stem for f in INVALID])
def test_invalid_config_is_refused_with_one_line(fixture: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(fixture, environ={"DEEPSEEK_TEST_KEY": "k-env"})
    assert str(caught.value) == expected_error(fixture)
    assert "\n" not in str(caught.value)


def test_every_documented_key(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("k-file\n")
    (tmp_path / "token.txt").write_text("t-file")
    (tmp_path / "prices.yaml").write_text("{}")
    file = tmp_path / "config.yml"
    file.write_text(
        """
deepseek: {base_url: "http://127.0.0.1:1234/", timeout: 2s}
balance: {poll_interval: 30s, max_staleness: 2m, forecast_window: 1d}
accounts:
  - {name: prod, api_key_env: KEY_PROD, low_balance_threshold: "5.50", spend_spike_min_per_day: 20}
  - {name: staging_2, api_key_file: key.txt, currency: USD}
  - {name: inline, api_key: k-inline, low_balance_threshold: 0}
web: {listen_address: "127.0.0.1:9999", shutdown_timeout: 1m30s}
proxy:
  enabled: false
  listen_address: ":8888"
  max_body_bytes: 1024
  timeout: 5m
  clients:
    - {name: bot, token_file: token.txt, account: prod}
pricing: {file: prices.yaml}
"""
    )
    config = load_config(file, environ={"KEY_PROD": "k-prod"})
    assert config.deepseek.base_url == "http://127.0.0.1:1234"
    assert config.deepseek.timeout == 2
    assert (config.balance.poll_interval, config.balance.max_staleness) == (30, 120)
    assert config.balance.forecast_window == 86400
    prod, staging, inline = config.accounts
    assert prod.api_key.reveal() == "k-prod" and prod.low_balance_threshold == Decimal("5.50")
    assert prod.spend_spike_min_per_day == 20 and staging.spend_spike_min_per_day == 1
    assert staging.api_key.reveal() == "k-file" and staging.currency == "USD"
    assert inline.low_balance_threshold == 0
    assert config.web.listen_address == "127.0.0.1:9999" and config.web.shutdown_timeout == 90
    assert not config.proxy.enabled and config.proxy.max_body_bytes == 1024
    assert config.proxy.timeout == 300
    assert config.proxy.clients[0].token.reveal() == "t-file"
    assert config.pricing.file == tmp_path / "prices.yaml"


def test_defaults_without_file_take_the_key_from_the_environment() -> None:
    config = load_config(None, environ={"DEEPSEEK_API_KEY": "k-default"})
    assert [a.name for a in config.accounts] == ["default"]
    assert config.accounts[0].api_key.reveal() == "k-default"
    assert config.deepseek.base_url == "https://api.deepseek.com"
    assert config.web.listen_address == ":9402" and config.proxy.listen_address == ":8402"
    assert load_config(None, environ={}).accounts == ()
    assert config.balance.forecast_window == 28 * 86400


def test_settings_without_keys_for_the_backtest(tmp_path: Path) -> None:
    """The backtest reads the accounts' settings from a production config on a laptop: keys
    and the files the config names are not read."""
    file = tmp_path / "config.yml"
    file.write_text(
        "accounts:\n"
        "  - {name: prod, api_key_env: NOT_SET_HERE, spend_spike_min_per_day: 5}\n"
        "  - {name: other, api_key_file: /nonexistent/key, low_balance_threshold: 3}\n"
        "web: {config_file: /nonexistent/web.yml}\n"
    )
    with pytest.raises(ConfigError):
        load_config(file, environ={})
    config = load_config(file, environ={}, resolve=False)
    assert [a.spend_spike_min_per_day for a in config.accounts] == [5, 1]
    assert "NOT_SET_HERE" not in repr(config) and config.accounts[1].low_balance_threshold == 3
    bad = tmp_path / "bad.yml"
    bad.write_text("accounts: [{name: prod, spend_spike_min_per_day: -2}]\n")
    with pytest.raises(ConfigError, match="exactly one of api_key_env"):
        load_config(bad, environ={}, resolve=False)


def test_flags_override_the_file(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_text("deepseek: {base_url: http://a.example}\nweb: {listen_address: ':1'}\n")
    config = load_config(
        file,
        environ={},
        overrides={"deepseek_base_url": "http://b.example", "web_listen_address": "127.0.0.1:2"},
    )
    assert config.deepseek.base_url == "http://b.example"
    assert config.web.listen_address == "127.0.0.1:2"
    with pytest.raises(ConfigError, match=r"^deepseek.base_url: \"ftp://x\" is not an http"):
        load_config(file, environ={}, overrides={"deepseek_base_url": "ftp://x"})


@pytest.mark.parametrize("zero", ["0s", "0", "'0'", "0ms"])
def test_poll_interval_zero_disables_polling(tmp_path: Path, zero: str) -> None:
    # The README says 0 disables polling: a bare 0 (a YAML number) is 0 too, as in Prometheus.
    file = tmp_path / "config.yml"
    file.write_text(f"balance: {{poll_interval: {zero}}}\n")
    assert load_config(file, environ={}).balance.poll_interval == 0


def test_durations_take_every_prometheus_unit(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_text("balance: {poll_interval: 1h, max_staleness: 1w, forecast_window: 1y}\n")
    balance = load_config(file, environ={}).balance
    assert (balance.max_staleness, balance.forecast_window) == (7 * 86400, 365 * 86400)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("5m", 300),
        ("6h", 21600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("0", 0),
        ("0s", 0),
        ("1w", 7 * 86400),
        ("1y", 365 * 86400),
        ("1y2w3d4h5m6s7ms", 365 * 86400 + 14 * 86400 + 3 * 86400 + 4 * 3600 + 5 * 60 + 6.007),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1 m", "-5s", "1.5h", "5M", "s", "1m1h", "1d1w", "00x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_secret_never_prints_its_value(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_text("accounts: [{name: prod, api_key: k-very-secret-value}]\n")
    config = load_config(file, environ={})
    for text in (repr(config), str(config), repr(config.accounts), f"{config.accounts[0]}"):
        assert "k-very-secret-value" not in text
    assert repr(Secret("x")) == "<secret>"


def test_key_is_not_echoed_in_errors(tmp_path: Path) -> None:
    file = tmp_path / "config.yml"
    file.write_text("accounts: [{name: prod, api_key: 'k-secret with space'}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ={})
    assert "k-secret" not in str(caught.value)
    assert str(caught.value) == "accounts[0].api_key: contains white space"

"""Strict configuration: YAML file + environment + flag overrides, validated before anything starts.

Every problem is reported as one line naming the field (``accounts[1].poll_interval: unknown
key``), in the spirit of blackbox_exporter: a config that is not understood is never half-applied.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

DEFAULT_BASE_URL = "https://api.deepseek.com"
ACCOUNT_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
CURRENCIES = ("CNY", "USD")
# Prometheus's duration syntax (common/model ParseDuration): units in decreasing order, or "0".
_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_UNITS = (365 * 86400.0, 7 * 86400.0, 86400.0, 3600.0, 60.0, 1.0, 0.001)
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class ConfigError(Exception):
    """A configuration problem, phrased as ``path: what is wrong``."""


class Secret:
    """An API key or token. Prints as ``<secret>`` everywhere, so it cannot leak by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self) -> bytes:
        """A digest to compare keys by without keeping them in more places than needed."""
        return hashlib.sha256(self._value.encode()).digest()

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DeepSeekConfig:
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 10.0


@dataclass(frozen=True)
class BalanceConfig:
    poll_interval: float = 60.0  # 0 disables polling (proxy-only replicas)
    max_staleness: float = 300.0
    # How much history the forecast learns the weekly spend profile from.
    forecast_window: float = 28 * 86400.0


@dataclass(frozen=True)
class AccountConfig:
    name: str
    api_key: Secret
    low_balance_threshold: Decimal | None = None
    currency: str | None = None  # overrides the currency the balance reports, for cost
    # DeepSeekSpendSpike stays quiet while the last hour's spend rate is below this, per day.
    spend_spike_min_per_day: Decimal = Decimal(1)
    # Every call with this key goes through the proxy: deducted spend that the proxy did not
    # meter is a leaked key, an app bypassing it or a stale price table (DeepSeekUnmeteredSpend).
    all_traffic_via_proxy: bool = False


@dataclass(frozen=True)
class ProxyClientConfig:
    """A client token that the proxy swaps for the real key of ``account`` (key custody)."""

    name: str
    token: Secret
    account: str


@dataclass(frozen=True)
class ProxyConfig:
    enabled: bool = True
    listen_address: str = ":8402"
    max_body_bytes: int = 16 * 1024 * 1024
    # Longest wait for response headers and between body chunks; DeepSeek itself closes a
    # request that has not started inference after 10 minutes.
    timeout: float = 600.0
    web_config_file: Path | None = None
    clients: tuple[ProxyClientConfig, ...] = ()
    # Processes serving the proxy listener on one port (SO_REUSEPORT); "auto" in the file.
    workers: int = 1


@dataclass(frozen=True)
class WebConfig:
    listen_address: str = ":9402"
    config_file: Path | None = None
    shutdown_timeout: float = 30.0
    # Where people and Alertmanager reach the exporter (behind a proxy, a Service, an Ingress);
    # None: the address Prometheus scrapes. The alerts' runbook links start with it.
    external_url: str | None = None


@dataclass(frozen=True)
class PricingConfig:
    file: Path | None = None


@dataclass(frozen=True)
class Config:
    deepseek: DeepSeekConfig = field(default_factory=DeepSeekConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    accounts: tuple[AccountConfig, ...] = ()
    web: WebConfig = field(default_factory=WebConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)

    def account(self, name: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.name == name), None)


# --- value parsers: each takes (path, raw value) and raises ConfigError naming the path ----------


def parse_duration(text: str) -> float:
    """A Prometheus duration in seconds: ``0``, or units in decreasing order from ``y``, ``w``,
    ``d``, ``h``, ``m``, ``s``, ``ms`` (``500ms``, ``10s``, ``1h30m``, ``2w``, ``1y``)."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.match(text) if text else None
    if not match or not any(match.groups()):
        raise ValueError(
            f"{quote(text)} is not a duration (use e.g. 0, 500ms, 10s, 5m, 6h, 1d, 1w)"
        )
    try:
        return sum(
            int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if g
        )
    except OverflowError:  # more digits than a float holds
        raise ValueError(f"{quote(text)} is not a duration (too large)") from None


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """``host:port``, ``:port`` (every address) or ``[ipv6]:port``, as (host or None, port)."""
    hint = f"{quote(text)} is not host:port (e.g. :9402, 127.0.0.1:9402, [::1]:9402)"
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(hint)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(hint) from None
        return host[1:-1], int(port)
    if host and not _HOSTNAME_RE.match(host):
        raise ValueError(hint)
    return host or None, int(port)


def split_listen_address(address: str) -> tuple[str | None, int]:
    """An address already checked by :func:`parse_listen_address`, split into host and port."""
    return parse_listen_address(address)


def quote(text: str) -> str:
    """A value quoted for an error message, cut short and on one line (JSON escapes the control
    characters; the three other line breaks ``str.splitlines`` knows are escaped too)."""
    shown = json.dumps(text if len(text) <= 60 else text[:60] + "...", ensure_ascii=False)
    return shown.translate(_LINE_BREAKS)


_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _duration(
    path: str, value: Any, minimum: float | None = None, allow_zero: bool = False
) -> float:
    if value == 0 and not isinstance(value, bool):
        value = "0"  # YAML reads a bare 0 as a number; Prometheus takes it as a duration
    if not isinstance(value, str):
        raise ConfigError(f"{path}: must be a duration string such as 10s, got {_kind(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    if allow_zero and seconds == 0:
        return seconds
    if minimum is not None and seconds < minimum:
        raise ConfigError(f"{path}: must be at least {minimum:g}s, got {value}")
    if seconds <= 0:
        raise ConfigError(f"{path}: must be greater than zero")
    return seconds


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string, got {_kind(value)}")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, got {_kind(value)}")
    return value


def _positive_int(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{path}: must be a positive integer, got {_kind(value)}")
    return value


def _workers(path: str, value: Any) -> int:
    """A number of proxy worker processes, or ``auto``: the CPUs this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    if isinstance(value, str) and value.isdigit():  # from the command line
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise ConfigError(f"{path}: must be auto or a number of processes, got {_kind(value)}")
    return value


def _amount(path: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{path}: must be a number, got {_kind(value)}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{path}: must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{path}: must be a finite non-negative number, got {value}")
    return amount


def parse_url(text: str) -> str:
    """An http:// or https:// URL, without a trailing slash."""
    if not re.match(r"^https?://[^/\s]+", text) or any(c.isspace() for c in text):
        raise ValueError(f"{quote(text)} is not an http:// or https:// URL")
    return text.rstrip("/")


def parse_external_url(text: str) -> str:
    """The URL the exporter is reached at from outside: scheme, host, optional port and path;
    no query or fragment (paths are appended to it)."""
    url = parse_url(text)
    if "?" in url or "#" in url:
        raise ValueError(f"{quote(text)} is not a base URL: no ? or # allowed")
    return url


def _url(path: str, value: Any, parse: Callable[[str], str] = parse_url) -> str:
    url = _string(path, value)
    try:
        return parse(url)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None


def _listen_address(path: str, value: Any) -> str:
    address = _string(path, value)
    try:
        parse_listen_address(address)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    return address


def _currency(path: str, value: Any) -> str:
    if value not in CURRENCIES:
        raise ConfigError(f"{path}: must be one of {', '.join(CURRENCIES)}, got {value!r}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return repr(value) if isinstance(value, bool | int | float) else type(value).__name__


def _mapping(path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path or 'config'}: must be a mapping, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            prefix = f"{path}." if path else ""
            raise ConfigError(f"{prefix}{key}: unknown key")
    return dict(value)


class _Secrets:
    """Resolves ``*_env`` / ``*_file`` / inline secrets; the only place keys are read from."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path, resolve: bool = True) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.resolve_values = resolve

    def resolve(self, path: str, section: dict[str, Any], stem: str) -> Secret:
        given = [k for k in (f"{stem}_env", f"{stem}_file", stem) if k in section]
        if len(given) != 1:
            raise ConfigError(
                f"{path}: exactly one of {stem}_env, {stem}_file, {stem} is required"
                + (f", got {', '.join(given)}" if given else "")
            )
        key = given[0]
        raw = section[key]
        if not isinstance(raw, str) or not raw:
            # Never echo the value: for an inline key it is the secret itself.
            raise ConfigError(f"{path}.{key}: must be a non-empty string")
        if not self.resolve_values:  # the backtest needs the settings, never the keys
            return Secret(f"<unresolved {path}>")
        if key.endswith("_env"):
            value = self.environ.get(raw, "")
            if not value:
                raise ConfigError(f"{path}.{key}: environment variable {raw} is not set or empty")
        elif key.endswith("_file"):
            file = self.base_dir / raw
            try:
                value = file.read_text().strip()
            except OSError as err:
                raise ConfigError(f"{path}.{key}: cannot read {file}: {err.strerror}") from None
            except ValueError:  # not UTF-8 text, or a NUL in the file name
                raise ConfigError(f"{path}.{key}: cannot read {file}: not a text file") from None
            if not value:
                raise ConfigError(f"{path}.{key}: {file} is empty")
        else:
            value = raw
        if any(c.isspace() for c in value):
            raise ConfigError(f"{path}.{key}: contains white space")
        return Secret(value)


def _optional_file(path: str, value: Any, base_dir: Path) -> Path | None:
    if value is None:
        return None
    file = base_dir / _string(path, value)
    if not file.is_file():
        raise ConfigError(f"{path}: file {file} does not exist")
    return file


def _file_name(path: str, value: Any, base_dir: Path) -> Path | None:
    """A file the config names, not checked (when only the settings are wanted)."""
    return None if value is None else base_dir / _string(path, value)


def _build(raw: Any, environ: Mapping[str, str], base_dir: Path, resolve: bool = True) -> Config:
    top = _mapping("", raw, {"deepseek", "balance", "accounts", "web", "proxy", "pricing"})
    secrets = _Secrets(environ, base_dir, resolve)
    optional_file = _optional_file if resolve else _file_name

    ds = _mapping("deepseek", top.get("deepseek"), {"base_url", "timeout"})
    deepseek = DeepSeekConfig(
        base_url=_url("deepseek.base_url", ds.get("base_url", DEFAULT_BASE_URL)),
        timeout=_duration("deepseek.timeout", ds.get("timeout", "10s")),
    )

    bal = _mapping(
        "balance", top.get("balance"), {"poll_interval", "max_staleness", "forecast_window"}
    )
    balance = BalanceConfig(
        poll_interval=_duration(
            "balance.poll_interval", bal.get("poll_interval", "60s"), minimum=1, allow_zero=True
        ),
        max_staleness=_duration("balance.max_staleness", bal.get("max_staleness", "5m")),
        forecast_window=_duration(
            "balance.forecast_window", bal.get("forecast_window", "28d"), minimum=3600
        ),
    )
    if balance.poll_interval and balance.max_staleness < balance.poll_interval:
        raise ConfigError("balance.max_staleness: must not be shorter than balance.poll_interval")

    raw_accounts = top.get("accounts") or []
    if not isinstance(raw_accounts, list):
        raise ConfigError(f"accounts: must be a list, got {_kind(raw_accounts)}")
    accounts: list[AccountConfig] = []
    for i, item in enumerate(raw_accounts):
        path = f"accounts[{i}]"
        acc = _mapping(
            path,
            item,
            {
                "name",
                "api_key",
                "api_key_env",
                "api_key_file",
                "low_balance_threshold",
                "currency",
                "spend_spike_min_per_day",
                "all_traffic_via_proxy",
            },
        )
        name = _string(f"{path}.name", acc.get("name"))
        if not ACCOUNT_NAME_RE.match(name) or name == "unknown":
            raise ConfigError(f"{path}.name: must match [a-zA-Z0-9_-]+ and not be 'unknown'")
        if any(a.name == name for a in accounts):
            raise ConfigError(f"{path}.name: duplicate account name {name!r}")
        threshold = acc.get("low_balance_threshold")
        accounts.append(
            AccountConfig(
                name=name,
                api_key=secrets.resolve(path, acc, "api_key"),
                low_balance_threshold=(
                    None
                    if threshold is None
                    else _amount(f"{path}.low_balance_threshold", threshold)
                ),
                currency=None
                if "currency" not in acc
                else _currency(f"{path}.currency", acc["currency"]),
                spend_spike_min_per_day=_amount(
                    f"{path}.spend_spike_min_per_day", acc.get("spend_spike_min_per_day", 1)
                ),
                all_traffic_via_proxy=_bool(
                    f"{path}.all_traffic_via_proxy", acc.get("all_traffic_via_proxy", False)
                ),
            )
        )
    seen_keys: dict[bytes, str] = {}
    for i, account in enumerate(accounts):
        other = seen_keys.setdefault(account.api_key.fingerprint(), account.name)
        if other != account.name:
            raise ConfigError(f"accounts[{i}]: uses the same API key as account {other!r}")

    web_raw = _mapping(
        "web", top.get("web"), {"listen_address", "config_file", "shutdown_timeout", "external_url"}
    )
    web = WebConfig(
        listen_address=_listen_address(
            "web.listen_address", web_raw.get("listen_address", ":9402")
        ),
        config_file=optional_file("web.config_file", web_raw.get("config_file"), base_dir),
        shutdown_timeout=_duration(
            "web.shutdown_timeout", web_raw.get("shutdown_timeout", "30s"), allow_zero=True
        ),
        external_url=None
        if web_raw.get("external_url") is None
        else _url("web.external_url", web_raw["external_url"], parse_external_url),
    )

    px = _mapping(
        "proxy",
        top.get("proxy"),
        {
            "enabled",
            "listen_address",
            "max_body_bytes",
            "timeout",
            "web_config_file",
            "clients",
            "workers",
        },
    )
    raw_clients = px.get("clients") or []
    if not isinstance(raw_clients, list):
        raise ConfigError(f"proxy.clients: must be a list, got {_kind(raw_clients)}")
    clients: list[ProxyClientConfig] = []
    for i, item in enumerate(raw_clients):
        path = f"proxy.clients[{i}]"
        cl = _mapping(path, item, {"name", "token", "token_env", "token_file", "account"})
        name = _string(f"{path}.name", cl.get("name"))
        account_name = _string(f"{path}.account", cl.get("account"))
        if not any(a.name == account_name for a in accounts):
            raise ConfigError(f"{path}.account: no account named {account_name!r}")
        token = secrets.resolve(path, cl, "token")
        if any(c.token == token for c in clients) or any(a.api_key == token for a in accounts):
            raise ConfigError(f"{path}: token is not unique")
        clients.append(ProxyClientConfig(name=name, token=token, account=account_name))
    proxy = ProxyConfig(
        enabled=_bool("proxy.enabled", px.get("enabled", True)),
        listen_address=_listen_address("proxy.listen_address", px.get("listen_address", ":8402")),
        max_body_bytes=_positive_int("proxy.max_body_bytes", px.get("max_body_bytes", 16 << 20)),
        timeout=_duration("proxy.timeout", px.get("timeout", "10m")),
        web_config_file=optional_file("proxy.web_config_file", px.get("web_config_file"), base_dir),
        workers=_workers("proxy.workers", px.get("workers", 1)),
        clients=tuple(clients),
    )

    pr = _mapping("pricing", top.get("pricing"), {"file"})
    pricing = PricingConfig(file=optional_file("pricing.file", pr.get("file"), base_dir))

    return Config(deepseek, balance, tuple(accounts), web, proxy, pricing)


# Command-line flags that override the file: flag destination -> (section, field, parser).
Override = Callable[[Config, str], Config]


def _override(section: str, name: str, parse: Callable[[str, Any], Any]) -> Override:
    def apply(config: Config, value: str) -> Config:
        path = f"{section}.{name}"
        parsed = parse(path, value)
        return replace(config, **{section: replace(getattr(config, section), **{name: parsed})})

    return apply


FLAG_OVERRIDES: dict[str, Override] = {
    "deepseek_base_url": _override("deepseek", "base_url", _url),
    "web_listen_address": _override("web", "listen_address", _listen_address),
    "proxy_listen_address": _override("proxy", "listen_address", _listen_address),
    "proxy_workers": _override("proxy", "workers", _workers),
    "web_config_file": _override("web", "config_file", lambda p, v: _optional_file(p, v, Path())),
    "web_shutdown_timeout": _override(
        "web", "shutdown_timeout", lambda p, v: _duration(p, v, allow_zero=True)
    ),
    "web_external_url": _override(
        "web", "external_url", lambda p, v: _url(p, v, parse_external_url)
    ),
}


def load_config(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
    *,
    resolve: bool = True,
) -> Config:
    """Read, validate and return the configuration, or raise ConfigError with one line.

    Without a file, ``DEEPSEEK_API_KEY`` gives one account named ``default``. With
    ``resolve=False`` (the backtest) keys are not read and the files the config names need not
    exist: only the settings are wanted.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        raw: Any = {}
        if environ.get("DEEPSEEK_API_KEY"):
            raw = {"accounts": [{"name": "default", "api_key_env": "DEEPSEEK_API_KEY"}]}
        base_dir = Path()
    else:
        file = Path(path)
        try:
            text = file.read_text()
        except OSError as err:
            raise ConfigError(f"{file}: cannot read: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: cannot read: not UTF-8 text") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(f"{file}: invalid YAML{where}: {problem}") from None
        except RecursionError:
            raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None
        base_dir = file.parent
    try:
        config = _build(raw, environ, base_dir, resolve)
        for dest, value in (overrides or {}).items():
            if value is not None:
                config = FLAG_OVERRIDES[dest](config, value)
    except ConfigError as err:
        # One line, whatever the file held: a key, an environment variable name or a path may
        # contain line breaks.
        lines = str(err).splitlines()
        if len(lines) > 1:
            raise ConfigError("\\n".join(lines)) from None
        raise
    return config

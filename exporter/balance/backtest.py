"""``deepseek-exporter backtest``: replay a balance history through the exporter's own code.

Each input time becomes one poll of the accounts that have a row at that time, through the same
:class:`~exporter.balance.poller.BalancePoller` (with a fetch that answers from the history and
a clock that is set, never slept on), its trackers and forecast, and one scrape of the same
:class:`~exporter.balance.collector.BalanceCollector`. Every sample is written with the time of
that scrape, in OpenMetrics text: the format ``promtool tsdb create-blocks-from openmetrics``
backfills. Metric families are not interleaved (OpenMetrics requires it), so samples are
buffered per series (in temporary files past a megabyte) and written at the end.

Input (a file, or ``-`` for standard input):

- CSV with the header ``timestamp,account,currency,balance``; timestamps in Unix seconds or
  RFC 3339 with a time zone; rows in any order;
- the JSON that Prometheus' ``/api/v1/query_range`` returns for ``deepseek_balance``. Series of
  several replicas for the same account and currency are merged (the largest value at a time, as
  the alert rules do).

The history holds totals only, so the replay infers what a poll would have said besides: the
account is available while some balance is above zero. Granted and topped-up balances and poll
durations cannot be known and are not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from exporter.balance.client import MAX_PLAUSIBLE_AMOUNT, BalanceReply, CurrencyBalance
from exporter.balance.collector import BalanceCollector
from exporter.balance.poller import BalancePoller
from exporter.clock import ManualClock
from exporter.config import ACCOUNT_NAME_RE, AccountConfig, Config, ConfigError, Secret, load_config

HEADER = ("timestamp", "account", "currency", "balance")
# Not knowable from a history of totals: left out rather than made up.
OMITTED = frozenset(
    {
        "deepseek_balance_granted",
        "deepseek_balance_topped_up",
        "deepseek_balance_poll_duration_seconds",
    }
)
_SPOOL = 1 << 20
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class HistoryError(Exception):
    """Bad input, phrased as one line naming the row: ``history.csv:7: balance: ...``."""


@dataclass(frozen=True, slots=True)
class Row:
    at: float
    account: str
    currency: str
    balance: Decimal


# ---- reading ---------------------------------------------------------------------------------


def read_history(path: str, stdin: TextIO | None = None) -> list[Row]:
    """The rows of a CSV or query_range JSON file (``-``: standard input), or HistoryError."""
    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            text = (stdin or sys.stdin).read()
        else:
            with open(path, encoding="utf-8-sig") as handle:
                text = handle.read()
    except OSError as err:
        raise HistoryError(f"{source}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise HistoryError(f"{source}: cannot read: not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        rows = _read_query_range(source, text)
    else:
        rows = _read_csv(source, text)
    if not rows:
        raise HistoryError(f"{source}: no balances in the history")
    return rows


def _read_csv(source: str, text: str) -> list[Row]:
    lines = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(lines, None)
    except csv.Error as err:
        raise HistoryError(f"{source}:1: {err}") from None
    if header is None or tuple(h.strip() for h in header) != HEADER:
        raise HistoryError(f"{source}:1: the header must be {','.join(HEADER)}")
    rows: list[Row] = []
    seen: dict[tuple[float, str, str], int] = {}
    try:
        for fields in lines:
            where = f"{source}:{lines.line_num}"
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # a blank line
            if len(fields) != len(HEADER):
                raise HistoryError(f"{where}: expected 4 fields, got {len(fields)}")
            stamp, account, currency, balance = (f.strip() for f in fields)
            row = Row(
                _timestamp(where, stamp),
                _account(where, account),
                _currency(where, currency),
                _balance(where, balance),
            )
            key = (row.at, row.account, row.currency)
            if key in seen:
                raise HistoryError(
                    f"{where}: {account} {currency} at {stamp} is already on line {seen[key]}"
                )
            seen[key] = lines.line_num
            rows.append(row)
    except csv.Error as err:
        raise HistoryError(f"{source}:{lines.line_num}: {err}") from None
    return rows


def _read_query_range(source: str, text: str) -> list[Row]:
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        line = f":{err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise HistoryError(f"{source}{line}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise HistoryError(
            f"{source}: not a successful Prometheus query_range reply (status is not success)"
        )
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise HistoryError(f"{source}: data.resultType: expected matrix (a query_range reply)")
    result = data.get("result")
    if not isinstance(result, list):
        raise HistoryError(f"{source}: data.result: expected a list")
    merged: dict[tuple[float, str, str], Decimal] = {}
    for i, series in enumerate(result):
        where = f"{source}: data.result[{i}]"
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            raise HistoryError(f"{where}.metric: expected the series' labels")
        labels = series["metric"]
        name = labels.get("__name__", "deepseek_balance")
        if name != "deepseek_balance":
            raise HistoryError(f"{where}.metric: {_short(name)}, expected deepseek_balance")
        for label in ("account", "currency"):
            if not isinstance(labels.get(label), str):
                raise HistoryError(f"{where}.metric: no {label} label")
        account = _account(f"{where}.metric.account", labels["account"])
        currency = _currency(f"{where}.metric.currency", labels["currency"])
        values = series.get("values")
        if not isinstance(values, list):
            raise HistoryError(f"{where}.values: expected a list of [time, value]")
        for j, point in enumerate(values):
            here = f"{where}.values[{j}]"
            if not (isinstance(point, list) and len(point) == 2):
                raise HistoryError(f"{here}: expected [time, value]")
            stamp, value = point
            if isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise HistoryError(f"{here}: time: expected Unix seconds, got {_short(stamp)}")
            if not isinstance(value, str):
                raise HistoryError(f"{here}: value: expected a decimal string, got {_short(value)}")
            at = _unix(here, float(stamp))
            balance = _balance(here, value)
            key = (at, account, currency)
            merged[key] = max(merged.get(key, balance), balance)
    return [Row(at, a, c, b) for (at, a, c), b in merged.items()]


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _timestamp(where: str, text: str) -> float:
    try:
        return _unix(where, float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryError(
            f"{where}: timestamp: {_short(text)} is neither Unix seconds nor RFC 3339"
        ) from None
    if parsed.tzinfo is None:
        raise HistoryError(f"{where}: timestamp: {_short(text)} has no time zone")
    return parsed.timestamp()


def _unix(where: str, value: float) -> float:
    if not math.isfinite(value) or not 0 <= value < 1e11:
        raise HistoryError(f"{where}: timestamp: {value!r} is not a plausible Unix time")
    return value


def _account(where: str, name: str) -> str:
    if not ACCOUNT_NAME_RE.match(name) or name == "unknown":
        raise HistoryError(f"{where}: account: {_short(name)} must match [a-zA-Z0-9_-]+")
    return name


def _currency(where: str, code: str) -> str:
    if len(code) != 3 or not code.isascii() or not code.isupper() or not code.isalpha():
        raise HistoryError(f"{where}: currency: {_short(code)} is not a currency code")
    return code


def _balance(where: str, text: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise HistoryError(f"{where}: balance: {_short(text)} is not a decimal amount") from None
    if not amount.is_finite():
        raise HistoryError(f"{where}: balance: {_short(text)} is not a decimal amount")
    if amount < 0:
        raise HistoryError(f"{where}: balance: {text} is negative")
    if amount > MAX_PLAUSIBLE_AMOUNT:
        raise HistoryError(f"{where}: balance: {_short(text)} is implausibly large")
    return amount


# ---- replaying -------------------------------------------------------------------------------


def accounts_for(rows: Iterable[Row], config: Config) -> tuple[AccountConfig, ...]:
    """The config's settings for accounts it names; the defaults for the others."""
    names = sorted({row.account for row in rows})
    return tuple(config.account(name) or AccountConfig(name, Secret("")) for name in names)


async def replay(rows: list[Row], config: Config, out: TextIO) -> None:
    """Replay ``rows`` and write the OpenMetrics text, ending with ``# EOF``."""
    by_time: dict[float, dict[str, list[CurrencyBalance]]] = {}
    for row in rows:
        balances = by_time.setdefault(row.at, {}).setdefault(row.account, [])
        balances.append(CurrencyBalance(row.currency, row.balance, Decimal(0), row.balance))
    # Backtest settings: always poll (the config may be a proxy-only replica's), no HTTP.
    balance = replace(config.balance, poll_interval=config.balance.poll_interval or 60.0)
    clock = ManualClock()
    replies: dict[str, BalanceReply] = {}

    async def fetch(account: AccountConfig) -> BalanceReply:
        return replies[account.name]

    poller = BalancePoller(
        config.deepseek, balance, accounts_for(rows, config), clock=clock, fetch=fetch
    )
    collector = BalanceCollector(poller, clock)
    writer = OpenMetricsWriter()
    try:
        for at in sorted(by_time):
            clock.set(at)
            for account, balances in sorted(by_time[at].items()):
                balances.sort(key=lambda b: b.currency)
                available = any(b.total > 0 for b in balances)
                replies[account] = BalanceReply(is_available=available, balances=tuple(balances))
                await poller.poll_account(poller.states[account])
            writer.add(collector.collect(), at)
        writer.write(out)
    finally:
        writer.close()
        await poller.aclose()


class OpenMetricsWriter:
    """Collects timestamped samples per series and writes them family by family."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str]] = {}  # name -> (type, help), in first-seen order
        self._series: dict[str, dict[str, tempfile.SpooledTemporaryFile[str]]] = {}
        self._files = contextlib.ExitStack()
        self._keys: dict[tuple[str, ...], str] = {}  # (name, *labels) -> the sample's text

    def add(self, families: Iterable[Metric], at: float) -> None:
        stamp = _format_time(at)
        for family in families:
            if family.name in OMITTED or not family.samples:
                continue
            if family.name not in self._families:
                self._families[family.name] = (family.type, family.documentation)
                self._series[family.name] = {}
            series = self._series[family.name]
            for sample in family.samples:
                cache_key = (sample.name, *sample.labels.items())
                key = self._keys.get(cache_key)
                if key is None:
                    key = self._keys[cache_key] = sample.name + _labels(sample.labels)
                buffer = series.get(key)
                if buffer is None:
                    # Closed with the others by close(), after write().
                    spool = tempfile.SpooledTemporaryFile(_SPOOL, mode="w+")  # noqa: SIM115
                    buffer = series[key] = self._files.enter_context(spool)
                buffer.write(f"{key} {floatToGoString(sample.value)} {stamp}\n")

    def write(self, out: TextIO) -> None:
        for name, (kind, doc) in self._families.items():
            out.write(f"# TYPE {name} {kind}\n# HELP {name} {_escape_help(doc)}\n")
            for buffer in self._series[name].values():
                buffer.seek(0)
                for chunk in iter(lambda b=buffer: b.read(1 << 16), ""):
                    out.write(chunk)
        out.write("# EOF\n")

    def close(self) -> None:
        self._files.close()


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_time(at: float) -> str:
    return str(int(at)) if at == int(at) else repr(at)


def iter_samples(text: str) -> Iterator[tuple[str, dict[str, str], float, float]]:
    """(name, labels, value, time) of every sample in backtest output (for tests and tools)."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value, stamp = line.rsplit(" ", 2)
        name, _, rest = head.partition("{")
        labels = dict(_LABEL.findall(rest)) if rest else {}
        yield name, labels, float(value), float(stamp)


# ---- the command ------------------------------------------------------------------------------


def run_backtest(
    history: str,
    config_file: str | None,
    rules: str | None = None,
    promtool: str = "promtool",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``deepseek-exporter backtest``: 0, or 1 with one line on ``stderr`` naming the problem."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        config = load_config(config_file, {}, resolve=False) if config_file else Config()
    except ConfigError as err:
        print(f"config error: {err}", file=stderr)
        return 1
    try:
        rows = read_history(history)
    except HistoryError as err:
        print(f"backtest: {err}", file=stderr)
        return 1
    if rules is None:
        asyncio.run(replay(rows, config, stdout))
        return 0
    from exporter.balance.ruletest import RuleTestError, alert_timeline, grid

    if not Path(rules).is_file():
        print(f"backtest: --rules: {rules} does not exist", file=stderr)
        return 1
    output = io.StringIO()
    asyncio.run(replay(rows, config, output))
    try:
        timeline = alert_timeline(grid(iter_samples(output.getvalue())), Path(rules), promtool)
    except RuleTestError as err:
        print(f"backtest: {err}", file=stderr)
        return 1
    table = [("ALERT", "SEVERITY", "ACCOUNT", "CURRENCY", "FIRING FROM", "UNTIL")]
    for firing in timeline:
        table.append(
            (
                firing.alertname,
                firing.severity or "-",
                firing.labels.get("account", "-"),
                firing.labels.get("currency", "-"),
                _utc(firing.start),
                "end of history" if firing.end is None else _utc(firing.end),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=stdout)
    if not timeline:
        print("no alert would have fired", file=stdout)
    return 0


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")

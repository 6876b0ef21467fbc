"""DeepSeek prices by model, currency and effective date, read from a YAML data file.

Prices change often (see the history in ``data/prices.yaml``), so they are data that users can
override with config ``pricing.file``, never constants in code. The file is validated strictly and
indexed once at load: ``cost()`` runs once per proxied request and does no YAML work, only a
bisect, a dict lookup and integer arithmetic.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exporter.proxy.usage import Usage

CURRENCIES = ("USD", "CNY")
_CURRENCY_KEYS = {"usd": "USD", "cny": "CNY"}
_PRICE_FIELDS = ("input_cache_hit", "input_cache_miss", "output")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
_WINDOW_RE = re.compile(r"^(\d\d):([0-5]\d)-(\d\d):([0-5]\d)$")
_OFFSET_RE = re.compile(r"^([+-])(\d\d):([0-5]\d)$")
_PATH_RE = re.compile(r"^/[!-~]*$")  # an absolute path of printable ASCII, no query
_NAME_RE = re.compile(r"^\S+$")
_SCHEMA_VERSION = 1
# Scaling an exact integer must never round, whatever precision the caller's context has.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


class PricingError(Exception):
    """A problem in a price file, phrased on one line as ``file: field: what is wrong``."""


@dataclass(frozen=True, slots=True)
class Price:
    """Prices per 1M tokens in one currency."""

    input_cache_hit: Decimal
    input_cache_miss: Decimal
    output: Decimal


@dataclass(frozen=True, slots=True)
class _Rate:
    """A ``Price`` as integers over one power of ten, so ``cost()`` is exact integer arithmetic
    and cannot be rounded by the Decimal context (precision 28 by default) of whoever calls it."""

    price: Price
    hit: int
    miss: int
    output: int
    exponent: int  # cost = (tokens . ints) * 10**exponent, the 1M divisor included

    @classmethod
    def of(cls, price: Price) -> _Rate:
        values = (price.input_cache_hit, price.input_cache_miss, price.output)
        exponent = min(0, *(int(v.as_tuple().exponent) for v in values))
        ints = [int(v.scaleb(-exponent, _EXACT)) for v in values]
        return cls(price, ints[0], ints[1], ints[2], exponent - 6)


_T = TypeVar("_T")
# Per currency: (peak rate, off-peak rate); a flat price is the same object twice.
_Entry = dict[str, tuple[_Rate, _Rate]]


@dataclass(frozen=True, slots=True)
class _Model:
    starts: list[datetime]  # sorted, for bisect
    entries: list[_Entry]  # entries[i] applies from starts[i] until starts[i + 1]


@dataclass(frozen=True, slots=True)
class _Schedule:
    days: frozenset[int]
    windows: tuple[tuple[int, int], ...]  # [start, end) in seconds since local midnight
    off_peak_dates: frozenset[date]
    offset: timezone  # local time: the weekday, the date and the windows are judged in it

    def is_peak(self, at: datetime) -> bool:
        local = at.astimezone(self.offset)
        if local.weekday() not in self.days or local.date() in self.off_peak_dates:
            return False
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(start <= second < end for start, end in self.windows)


@dataclass(frozen=True, slots=True)
class _Dated:
    """A dated list of per-request prices: currency -> price per request, or None (unknown)."""

    starts: list[datetime]
    entries: list[dict[str, Decimal]]

    def at(self, currency: str, at: datetime) -> Decimal | None:
        i = bisect.bisect_right(self.starts, at) - 1
        return self.entries[i].get(currency) if i >= 0 else None


@dataclass(frozen=True, slots=True)
class _RequestItem:
    """Something billed per request rather than per token (web Search, Fetch)."""

    paths: frozenset[str]  # direct calls the proxy recognises by their path
    tool: str | None  # the server-side tool whose calls a response reports
    direct: _Dated
    tool_calls: _Dated


class PriceTable:
    """The loaded, validated price file. Immutable, so a reload simply swaps the object."""

    def __init__(
        self,
        models: dict[str, _Model],
        aliases: dict[str, str],
        schedule_starts: list[datetime],
        schedules: list[_Schedule],
        items: dict[str, _RequestItem] | None = None,
    ) -> None:
        self._models = frozenset(models)
        self._canonical = {name: name for name in models} | aliases
        self._by_name = {name: models[canonical] for name, canonical in self._canonical.items()}
        self._schedule_starts = schedule_starts
        self._schedules = schedules
        self._items = items or {}
        self._item_by_path = {path: name for name, i in self._items.items() for path in i.paths}
        self._item_by_tool = {i.tool: name for name, i in self._items.items() if i.tool}
        self._item_names = frozenset(self._items)

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """Load ``path``, or the bundled table when ``None``; any problem raises PricingError."""
        if path is None:
            source = "prices.yaml"
            text = resources.files("exporter").joinpath("data/prices.yaml").read_text("utf-8")
        else:
            source = str(path)
            try:
                text = Path(path).read_text("utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise PricingError(f"{source}: cannot read: {err}") from None
        try:
            return _parse(yaml.load(text, Loader=_Loader))
        except yaml.MarkedYAMLError as err:
            line = err.problem_mark.line + 1 if err.problem_mark else "?"
            raise PricingError(f"{source}: line {line}: {err.problem}") from None
        except yaml.YAMLError as err:
            raise PricingError(f"{source}: {' '.join(str(err).split())}") from None
        except PricingError as err:
            raise PricingError(f"{source}: {err}") from None

    @property
    def models(self) -> frozenset[str]:
        """Canonical model names: the bounded set of values for a ``model`` metric label."""
        return self._models

    @property
    def labels(self) -> frozenset[str]:
        """Every ``model`` label value the table can produce, besides ``other``."""
        return self._models | frozenset(self._items)

    @property
    def request_items(self) -> frozenset[str]:
        """Names of what is billed per request (``web-search``...): ``model`` label values too."""
        return self._item_names

    def item_for_path(self, path: str) -> str | None:
        """The per-request item a direct call to ``path`` (no query string) is billed as."""
        return self._item_by_path.get(path)

    def item_for_tool(self, tool: str) -> str | None:
        """The per-request item a reported server-side tool call (``web_search``) is billed as."""
        return self._item_by_tool.get(tool)

    def request_price(
        self, item: str, currency: str, at: datetime, *, tool_call: bool = False
    ) -> Decimal | None:
        """The price of one request (or one tool call) of ``item``; None when unknown."""
        found = self._items.get(item)
        if found is None:
            return None
        return (found.tool_calls if tool_call else found.direct).at(currency, _utc(at))

    def canonical_model(self, name: str) -> str | None:
        """The canonical name for a model name or alias; case-sensitive, as the API is."""
        return self._canonical.get(name)

    def is_peak(self, at: datetime) -> bool:
        """Whether peak prices apply at ``at``; off-peak outside any schedule."""
        return self._is_peak_utc(_utc(at))

    def price(self, model: str, currency: str, at: datetime) -> Price | None:
        """The price in force; None when the model, currency or period has no known price."""
        rate = self._rate(model, currency, _utc(at))
        return None if rate is None else rate.price

    def cost(self, model: str, currency: str, usage: Usage, at: datetime) -> Decimal | None:
        """Exact cost of ``usage``; None when unknown (a cost is never guessed).

        ``usage.reasoning`` is not added: it is already a part of ``usage.output``.
        """
        rate = self._rate(model, currency, _utc(at))
        if rate is None:
            return None
        total = (
            usage.input_cache_hit * rate.hit
            + usage.input_cache_miss * rate.miss
            + usage.output * rate.output
        )
        return Decimal(total).scaleb(rate.exponent, _EXACT)

    def _is_peak_utc(self, at: datetime) -> bool:
        i = bisect.bisect_right(self._schedule_starts, at) - 1
        return i >= 0 and self._schedules[i].is_peak(at)

    def _rate(self, model: str, currency: str, at: datetime) -> _Rate | None:
        found = self._by_name.get(model)
        if found is None:
            return None
        i = bisect.bisect_right(found.starts, at) - 1
        rates = found.entries[i].get(currency) if i >= 0 else None
        if rates is None:
            return None
        peak, off_peak = rates
        if peak is off_peak:
            return peak
        return peak if self._is_peak_utc(at) else off_peak


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: a time zone is required")
    return at.astimezone(UTC)


# --- YAML reading -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads numbers as exact Decimals, rejects duplicate keys (PyYAML would keep
    the last one silently) and reports impossible dates with their line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _construct_decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal | str:
    text = str(loader.construct_scalar(node))
    try:
        value = Decimal(text.replace("_", ""))
    except InvalidOperation:
        return text  # .inf, .nan, 1:30.5: kept as text so validation names the field
    return value if value.is_finite() else text


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> date | datetime:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError as err:
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid date {node.value!r}: {err}", node.start_mark
        ) from None


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


# --- validation: each helper raises PricingError("field.path: problem") ------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Decimal | date):
        return str(value)
    return repr(value) if isinstance(value, bool | int | str) else type(value).__name__


def _any_mapping(path: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PricingError(f"{path + ': ' if path else ''}must be a mapping, got {_kind(value)}")
    return value


def _mapping(
    path: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """``value`` as a mapping with exactly the ``required`` keys and some ``optional`` ones."""
    _any_mapping(path, value)
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in required and key not in optional:
            raise PricingError(f"{prefix}{key}: unknown key")
    for key in required:
        if key not in value:
            raise PricingError(f"{prefix}{key}: is required")
    return value


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise PricingError(f"{path}: must be a list, got {_kind(value)}")
    return value


def _name(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise PricingError(f"{path}: must be a model name without white space, got {_kind(value)}")
    return value


def _instant(path: str, value: Any) -> datetime:
    """A ``from``: a date means 00:00 UTC; a timestamp must say its zone (no local-time guess)."""
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise PricingError(f"{path}: must be a date or a timestamp with a time zone")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    raise PricingError(f"{path}: must be a date or a timestamp with a time zone")


def _show(at: datetime) -> str:
    return at.date().isoformat() if at.time() == time() else at.isoformat().replace("+00:00", "Z")


def _dated(path: str, items: list[Any]) -> list[tuple[datetime, Mapping[str, Any]]]:
    """Entries of a dated list with their parsed ``from``, checked strictly increasing."""
    result: list[tuple[datetime, Mapping[str, Any]]] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise PricingError(f"{item_path}: must be a mapping, got {_kind(item)}")
        if "from" not in item:
            raise PricingError(f"{item_path}.from: is required")
        start = _instant(f"{item_path}.from", item["from"])
        if result and start <= result[-1][0]:
            problem = "duplicates" if start == result[-1][0] else "must be later than"
            raise PricingError(
                f"{item_path}.from: {problem} {path}[{i - 1}].from ({_show(result[-1][0])})"
            )
        result.append((start, item))
    return result


def _number(path: str, value: Any) -> Decimal:
    # bool is an int subclass, and a quoted "0.3" is most likely a typo'd structure: both refused.
    if isinstance(value, bool) or not isinstance(value, int | Decimal) or value < 0:
        raise PricingError(f"{path}: must be a non-negative number")
    return Decimal(value).copy_abs()  # copy_abs: -0.0 reads as 0


def _flat_price(path: str, value: Any) -> _Rate:
    fields = _mapping(path, value, _PRICE_FIELDS)
    return _Rate.of(Price(*(_number(f"{path}.{f}", fields[f]) for f in _PRICE_FIELDS)))


def _rates(path: str, value: Any) -> tuple[_Rate, _Rate]:
    if isinstance(value, Mapping) and ("peak" in value or "off_peak" in value):
        split = _mapping(path, value, ("peak", "off_peak"))
        return _flat_price(f"{path}.peak", split["peak"]), _flat_price(
            f"{path}.off_peak", split["off_peak"]
        )
    rate = _flat_price(path, value)
    return rate, rate


def _by_currency(
    path: str, items: list[Any], parse: Callable[[str, Any], _T]
) -> tuple[list[datetime], list[dict[str, _T]]]:
    """Dated entries (``from``, optional ``note``, a price per currency key), in time order:
    their starts, and each one's prices by currency as ``parse`` reads them."""
    starts: list[datetime] = []
    entries: list[dict[str, _T]] = []
    for i, (start, item) in enumerate(_dated(path, items)):
        item_path = f"{path}[{i}]"
        _mapping(item_path, item, ("from",), ("note", "usd", "cny"))
        _note(item_path, item)
        starts.append(start)
        entries.append(
            {
                currency: parse(f"{item_path}.{key}", item[key])
                for key, currency in _CURRENCY_KEYS.items()
                if key in item
            }
        )
    return starts, entries


def _model(path: str, value: Any) -> _Model:
    prices = _list(f"{path}.prices", _mapping(path, value, ("prices",))["prices"])
    if not prices:
        raise PricingError(f"{path}.prices: must not be empty")
    return _Model(*_by_currency(f"{path}.prices", prices, _rates))


def _note(path: str, item: Mapping[str, Any]) -> None:
    if "note" in item and not isinstance(item["note"], str):
        raise PricingError(f"{path}.note: must be a string, got {_kind(item['note'])}")


def _offset(path: str, value: Any) -> timezone:
    match = _OFFSET_RE.match(value) if isinstance(value, str) else None
    if not match or int(match[2]) > 14:
        raise PricingError(f'{path}: must be a UTC offset "+HH:MM" or "-HH:MM", got {_kind(value)}')
    minutes = int(match[2]) * 60 + int(match[3])
    return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))


def _schedule(path: str, item: Mapping[str, Any]) -> _Schedule:
    _mapping(path, item, ("from", "days", "hours"), ("off_peak_dates", "note", "utc_offset"))
    _note(path, item)
    offset = _offset(f"{path}.utc_offset", item.get("utc_offset", "+00:00"))
    days: set[int] = set()
    for i, day in enumerate(_list(f"{path}.days", item["days"])):
        if day not in _DAYS:
            raise PricingError(
                f"{path}.days[{i}]: must be one of {', '.join(_DAYS)}, got {_kind(day)}"
            )
        days.add(_DAYS.index(day))
    windows = tuple(
        _window(f"{path}.hours[{i}]", window)
        for i, window in enumerate(_list(f"{path}.hours", item["hours"]))
    )
    off_peak_dates: set[date] = set()
    for i, day in enumerate(_list(f"{path}.off_peak_dates", item.get("off_peak_dates", []))):
        if isinstance(day, datetime) or not isinstance(day, date):
            raise PricingError(f"{path}.off_peak_dates[{i}]: must be a date (YYYY-MM-DD)")
        off_peak_dates.add(day)
    return _Schedule(frozenset(days), windows, frozenset(off_peak_dates), offset)


def _window(path: str, value: Any) -> tuple[int, int]:
    """A peak window as seconds since midnight; windows past midnight are two windows, so that
    the weekday a window belongs to is never ambiguous."""
    match = _WINDOW_RE.match(value) if isinstance(value, str) else None
    if match:
        start = int(match[1]) * 3600 + int(match[2]) * 60
        end = int(match[3]) * 3600 + int(match[4]) * 60
        if start < end <= 24 * 3600:
            return start, end
    raise PricingError(
        f'{path}: must be "HH:MM-HH:MM" (local time, start before end, end at most 24:00),'
        f" got {_kind(value)}"
    )


def _dated_request_prices(path: str, value: Any) -> _Dated:
    return _Dated(*_by_currency(path, _list(path, value), _number))


def _request_item(path: str, value: Any) -> _RequestItem:
    item = _mapping(path, value, (), ("paths", "tool", "prices", "tool_call_prices", "note"))
    _note(path, item)
    paths: set[str] = set()
    for i, raw in enumerate(_list(f"{path}.paths", item.get("paths", []))):
        if not isinstance(raw, str) or not _PATH_RE.match(raw) or "?" in raw:
            raise PricingError(f"{path}.paths[{i}]: must be an absolute path, got {_kind(raw)}")
        paths.add(raw)
    tool = item.get("tool")
    if tool is not None and (not isinstance(tool, str) or not _NAME_RE.match(tool)):
        raise PricingError(f"{path}.tool: must be a tool name, got {_kind(tool)}")
    if not paths and tool is None:
        raise PricingError(f"{path}: needs paths or a tool, or the proxy never sees it")
    return _RequestItem(
        frozenset(paths),
        tool,
        _dated_request_prices(f"{path}.prices", item.get("prices", [])),
        _dated_request_prices(f"{path}.tool_call_prices", item.get("tool_call_prices", [])),
    )


def _parse(doc: Any) -> PriceTable:
    top = _mapping("", doc, ("version", "models"), ("peak_schedule", "aliases", "per_request"))
    if type(top["version"]) is not int or top["version"] != _SCHEMA_VERSION:
        raise PricingError(f"version: must be {_SCHEMA_VERSION}, got {_kind(top['version'])}")

    raw_models = _any_mapping("models", top["models"])
    if not raw_models:
        raise PricingError("models: must not be empty")
    models = {
        _name(f"models.{name}", name): _model(f"models.{name}", value)
        for name, value in raw_models.items()
    }

    aliases: dict[str, str] = {}
    for alias, target in _any_mapping("aliases", top.get("aliases", {})).items():
        path = f"aliases.{alias}"
        _name(path, alias)
        if alias in models:
            raise PricingError(f"{path}: is already a model name")
        if not isinstance(target, str) or target not in models:
            raise PricingError(f"{path}: unknown model {_kind(target)}")
        aliases[alias] = target

    items: dict[str, _RequestItem] = {}
    owners: dict[str, str] = {}  # path or tool -> the item that claims it
    for name, value in _any_mapping("per_request", top.get("per_request", {})).items():
        path = f"per_request.{name}"
        _name(path, name)
        if name in models or name in aliases:
            raise PricingError(f"{path}: is already a model name")
        item = items[name] = _request_item(path, value)
        for claim in sorted(item.paths) + ([f"tool {item.tool}"] if item.tool else []):
            if claim in owners:
                raise PricingError(f"{path}: {claim} is already billed as {owners[claim]}")
            owners[claim] = name

    schedule = _dated("peak_schedule", _list("peak_schedule", top.get("peak_schedule", [])))
    return PriceTable(
        models,
        aliases,
        [start for start, _ in schedule],
        [_schedule(f"peak_schedule[{i}]", item) for i, (_, item) in enumerate(schedule)],
        items,
    )

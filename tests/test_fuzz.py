"""Fuzzing with hypothesis: whatever comes in, a parser returns a sound value or its own error,
never another exception and never a made-up value.

Covered here: configuration loading, durations, ``/user/balance`` replies, the proxy's model
sniffing, price lookup with arbitrary names, and Anthropic-style streams split anywhere. SSE and
JSON usage parsing (OpenAI shape, garbage, split points) are fuzzed in ``test_usage.py``, exact
costs of priced models in ``test_pricing.py``.

Runs are derandomized (the same examples every time, so CI is deterministic); set
``FUZZ_EXPLORE=1`` to draw new random examples, ten times as many.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import string
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.balance.client import PollError, parse_balance_reply
from exporter.balance.poller import BalancePoller
from exporter.config import (
    AccountConfig,
    Config,
    ConfigError,
    DeepSeekConfig,
    Secret,
    load_config,
    parse_duration,
)
from exporter.proxy.metrics import OTHER_MODEL, ProxyMetrics
from exporter.proxy.pricing import PriceTable
from exporter.proxy.server import ModelSniffer, Proxy
from exporter.proxy.usage import StreamUsageScanner, Usage

EXPLORE = os.environ.get("FUZZ_EXPLORE") == "1"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * (10 if EXPLORE else 1),
        derandomize=not EXPLORE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


PRICES = PriceTable.load()


def one_line(message: str) -> bool:
    return bool(message) and len(message.splitlines()) == 1


# --- configuration ---------------------------------------------------------------------------

DURATION_TEXT = st.one_of(
    st.sampled_from(["10s", "0s", "500ms", "1h30m", "1d", "5m", "0", "-5s", "5", "1.5s", "s", ""]),
    st.from_regex(r"\A(\d{1,4}d)?(\d{1,3}h)?(\d{1,3}m)?(\d{1,3}s)?(\d{1,4}ms)?\Z"),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**400), st.sampled_from("dhms")),
    st.text(max_size=12),
)
URL_TEXT = st.one_of(
    st.sampled_from(
        ["https://api.deepseek.com", "http://127.0.0.1:9", "ftp://x", "http://", "https:// x"]
    ),
    st.text(max_size=20),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    DURATION_TEXT,
    URL_TEXT,
)


def often(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value for the field, sometimes anything at all."""
    return st.integers(0, 5).flatmap(lambda n: SCALARS if n == 0 else good)


def section(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A mapping of some of ``fields``, now and then with an unknown key too."""
    mapping = st.fixed_dictionaries({}, optional={k: often(v) for k, v in fields.items()})
    return st.tuples(mapping, st.integers(0, 7), st.text(max_size=8)).map(
        lambda t: t[0] if t[1] else {**t[0], t[2]: 1}
    )


GOOD_DURATIONS = st.integers(0, 3).flatmap(
    lambda n: (
        DURATION_TEXT
        if n == 0
        else st.sampled_from(["1s", "10s", "5m", "1h", "2h", "6h", "1d", "0s", "500ms", "1h30m"])
    )
)
GOOD_NAMES = st.sampled_from(
    ["prod", "usd", "a-b_c", "B2", "unknown", "has space", "", "x\ny", "ünï"]
)
KEY_SOURCES = {
    "api_key": st.sampled_from(["sk-inline", "sk-fuzz-a", "with space", ""]),
    "api_key_env": st.sampled_from(["KEY_A", "KEY_B", "UNSET", "", "BAD\nNAME", "NUL\0"]),
    # Files relative to the config's directory: a key, a binary file, a directory, none.
    "api_key_file": st.sampled_from(["key.txt", "binary.txt", "empty.txt", ".", "nope", "a\0b"]),
}
ACCOUNT = st.tuples(
    st.fixed_dictionaries({"name": often(GOOD_NAMES)}),
    st.sampled_from(sorted(KEY_SOURCES)).flatmap(
        lambda k: st.fixed_dictionaries({k: often(KEY_SOURCES[k])})
    ),
    section(
        {
            "low_balance_threshold": st.one_of(
                st.sampled_from([5, 0, -1, "2.5", "1e999999", "NaN", 1e400, True]),
                st.decimals(allow_nan=True, allow_infinity=True).map(str),
            ),
            "currency": st.sampled_from(["CNY", "USD", "EUR", "cny", 5]),
            **KEY_SOURCES,  # a second key source now and then: refused
        }
    ).map(lambda d: d if len(d) < 2 else {}),
).map(lambda parts: {**parts[0], **parts[1], **parts[2]})
CLIENT = section(
    {
        "name": GOOD_NAMES,
        "account": GOOD_NAMES,
        "token": st.sampled_from(["tok-1", "tok-2", "sk-inline"]),
        "token_env": st.sampled_from(["TOKEN", "KEY_A", "UNSET"]),
        "token_file": st.sampled_from(["token.txt", "key.txt", "nope"]),
    }
)
FILES = st.sampled_from(["key.txt", "nope", ".", "x\ny"])
CONFIG_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "deepseek": section(
            {
                "base_url": st.integers(0, 3).flatmap(
                    lambda n: URL_TEXT if n == 0 else st.sampled_from(["http://x", "https://a/"])
                ),
                "timeout": GOOD_DURATIONS,
            }
        ),
        "balance": section(
            {
                "poll_interval": GOOD_DURATIONS,
                "max_staleness": GOOD_DURATIONS,
                "forecast_window": GOOD_DURATIONS,
            }
        ),
        "accounts": often(st.lists(ACCOUNT, max_size=3)),
        "web": section(
            {
                "listen_address": st.sampled_from(
                    [":9402", "127.0.0.1:0", "[::1]:80", "x", ":1e3"]
                ),
                "config_file": FILES,
                "shutdown_timeout": GOOD_DURATIONS,
            }
        ),
        "proxy": section(
            {
                "enabled": st.booleans(),
                "listen_address": st.sampled_from([":8402", "0.0.0.0:1", ":99999", ""]),
                "max_body_bytes": st.integers(-5, 2**40),
                "timeout": GOOD_DURATIONS,
                "web_config_file": FILES,
                "clients": st.lists(CLIENT, max_size=2),
            }
        ),
        "pricing": section({"file": FILES}),
    },
)

ENVIRON = {"KEY_A": "sk-fuzz-a", "KEY_B": "sk-fuzz-b", "TOKEN": "tok-fuzz"}
CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
atexit.register(shutil.rmtree, CONFIG_DIR, ignore_errors=True)
(CONFIG_DIR / "key.txt").write_text("sk-fuzz-file\n")
(CONFIG_DIR / "token.txt").write_text("tok-fuzz-file\n")
(CONFIG_DIR / "empty.txt").write_text("")
(CONFIG_DIR / "binary.txt").write_bytes(b"\xff\xfe\x00sk")


def load(text: bytes) -> Config | ConfigError:
    file = CONFIG_DIR / "deepseek.yml"
    file.write_bytes(text)
    try:
        return load_config(file, ENVIRON)
    except ConfigError as err:
        return err


def assert_sound(result: Config | ConfigError) -> None:
    event("loaded" if isinstance(result, Config) else str(result).split(":")[0][:30])
    if isinstance(result, ConfigError):
        assert one_line(str(result)), repr(str(result))
        for secret in ("sk-fuzz-a", "sk-fuzz-b", "sk-fuzz-file", "tok-fuzz"):
            assert secret not in str(result)
        return
    assert isinstance(result, Config)
    for seconds in (
        result.deepseek.timeout,
        result.balance.max_staleness,
        result.balance.forecast_window,
        result.proxy.timeout,
    ):
        assert math.isfinite(seconds) and seconds > 0
    # 0: no grace period for requests in flight at SIGTERM.
    assert math.isfinite(result.web.shutdown_timeout) and result.web.shutdown_timeout >= 0
    assert result.balance.poll_interval == 0 or result.balance.poll_interval >= 1
    assert result.proxy.max_body_bytes > 0
    names = [a.name for a in result.accounts]
    assert len(set(names)) == len(names) and "unknown" not in names
    for account in result.accounts:
        assert account.api_key.reveal() and repr(account.api_key) == "<secret>"
        threshold = account.low_balance_threshold
        assert threshold is None or (threshold.is_finite() and threshold >= 0)


@fuzz(200)
@given(CONFIG_DOCS)
@example([{"accounts": []}])
@example({"accounts": [], "extra": 1})
@example({"accounts": [{"name": "a", "api_key_file": "a\0b"}]})
@example({"balance": {"poll_interval": "1" + "0" * 400 + "s"}})
@example({"a\nb": 1})
@example({"accounts": [{"name": "a", "api_key_env": "BAD\nNAME"}]})
@example({"accounts": [{"name": "a", "api_key_file": "binary.txt"}]})
def test_config_structures_load_or_fail_with_one_line(doc: Any) -> None:
    try:
        text = yaml.safe_dump(doc, allow_unicode=True).encode()
    except yaml.YAMLError:  # e.g. a float key YAML cannot write back
        return
    assert_sound(load(text))


YAML_FRAGMENTS = st.sampled_from(
    [
        b"accounts:\n",
        b"  - name: prod\n",
        b"    api_key_env: KEY_A\n",
        b"balance: {poll_interval: 10s}\n",
        b"deepseek:\n  base_url: http://x\n",
        b"proxy: {clients: [{name: c, token: t, account: prod}]}\n",
        b"&a [*a]",
        b"!!python/object:os.system\n",
        b"? [a, b]\n: 1\n",
        b"\t",
        b"'",
        b"\xff\xfe",
        b"[" * 200,
        b"{a: 1, a: 2}\n",
        b"%YAML 1.1\n---\n",
        b"--- |\n",
    ]
)


@fuzz(200)
@given(st.lists(st.one_of(YAML_FRAGMENTS, st.binary(max_size=20)), max_size=12).map(b"".join))
@example(b"[" * 5000 + b"]" * 5000)
@example(b"\xff\xfe\x00garbage")
def test_config_text_loads_or_fails_with_one_line(text: bytes) -> None:
    assert_sound(load(text))


# --- durations -------------------------------------------------------------------------------


@fuzz(300)
@given(DURATION_TEXT)
def test_duration_parses_to_a_finite_non_negative_number_or_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        assert one_line(str(err))
        return
    assert math.isfinite(seconds) and seconds >= 0


@fuzz(200)
@given(
    st.tuples(*(st.one_of(st.none(), st.integers(0, 10**6)) for _ in range(7))).filter(
        lambda parts: any(p is not None for p in parts)
    )
)
def test_duration_round_trip(parts: tuple[int | None, ...]) -> None:
    units = ("y", "w", "d", "h", "m", "s", "ms")
    text = "".join(f"{n}{unit}" for n, unit in zip(parts, units, strict=True) if n is not None)
    expected = sum(
        Decimal(n) * Decimal(size)
        for n, size in zip(
            parts, (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, "0.001"), strict=True
        )
        if n is not None
    )
    assert math.isclose(parse_duration(text), float(expected), rel_tol=1e-12)


# --- balance replies -------------------------------------------------------------------------

AMOUNTS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["0", "-0", "0.00", "1e5", "1E+2", " 1.00", "1.00 ", "1,00", "", "NaN"]),
    st.text(alphabet="0123456789.-e", max_size=25),
    st.booleans(),
    st.none(),
)
CURRENCY = st.one_of(st.sampled_from(["CNY", "USD", "EUR", "cny", ""]), st.text(max_size=4))
INFO = st.fixed_dictionaries(
    {
        "currency": CURRENCY,
        "total_balance": AMOUNTS,
        "granted_balance": AMOUNTS,
        "topped_up_balance": AMOUNTS,
    },
    optional={"extra": st.just(1)},
)
# A consistent info (total = granted + topped_up, to the cent), so that valid replies occur.
CONSISTENT_INFO = st.builds(
    lambda cur, g, t: {
        "currency": cur,
        "total_balance": str(g + t),
        "granted_balance": str(g),
        "topped_up_balance": str(t),
    },
    st.sampled_from(["CNY", "USD"]),
    st.decimals(min_value=0, max_value=10**9, places=2),
    st.decimals(min_value=0, max_value=10**9, places=2),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
REPLIES = st.one_of(
    st.fixed_dictionaries(
        {
            "is_available": st.one_of(st.booleans(), SCALARS),
            "balance_infos": st.one_of(
                st.lists(st.one_of(INFO, CONSISTENT_INFO, JSON_VALUES), max_size=3), JSON_VALUES
            ),
        },
        optional={"extra": JSON_VALUES},
    ),
    JSON_VALUES,
)


def assert_balance_sound(body: bytes) -> None:
    try:
        reply = parse_balance_reply(body)
    except PollError as err:
        assert err.reason == "invalid_response"
        assert one_line(str(err))
        return
    assert isinstance(reply.is_available, bool)
    assert len({b.currency for b in reply.balances}) == len(reply.balances)
    for balance in reply.balances:
        for amount in (balance.total, balance.granted, balance.topped_up):
            assert isinstance(amount, Decimal) and amount.is_finite() and amount >= 0
        assert abs(balance.total - balance.granted - balance.topped_up) <= Decimal("0.01")


@fuzz(250)
@given(REPLIES)
@example({"is_available": True, "balance_infos": [{"nested": [[[[[[]]]]]]}]})
def test_balance_json_values(value: Any) -> None:
    assert_balance_sound(json.dumps(value).encode())


@fuzz(200)
@given(st.one_of(st.binary(max_size=200), REPLIES.map(lambda v: json.dumps(v).encode()[:-3])))
@example(b"[" * 100_000)
@example(b'{"is_available": true, "balance_infos": ' + b"[" * 50_000)
@example("\ufeff{}".encode("utf-16"))
def test_balance_bytes(body: bytes) -> None:
    assert_balance_sound(body)


# --- model sniffing --------------------------------------------------------------------------


def _proxy() -> Proxy:
    config = Config(
        deepseek=DeepSeekConfig(base_url="http://127.0.0.1:9"),
        accounts=(AccountConfig("prod", Secret("sk-fuzz-prod")),),
    )
    poller = BalancePoller(config.deepseek, config.balance, config.accounts)
    return Proxy(config, ProxyMetrics(CollectorRegistry()), PRICES, poller)


PROXY = _proxy()
LABELS = PRICES.models | {OTHER_MODEL}
MODEL_NAMES = st.one_of(
    st.sampled_from([*sorted(PRICES.models), "deepseek-chat", "deepseek-reasoner", "gpt-4o"]),
    st.text(max_size=20),
    st.text(alphabet='"\\:{} ', max_size=10),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def sniff(pieces: list[bytes]) -> str:
    sniffer = ModelSniffer()
    for piece in pieces:
        sniffer.feed(piece)
    return PROXY.meter.label("/chat/completions", sniffer.model)


SNIFF_FRAGMENTS = st.sampled_from(
    [b'"model"', b": ", b':"', b'"deepseek-flash"', b'\\"', b'"', b"\\", b" " * 50, b"{", b","]
)


@fuzz(250)
@given(
    st.lists(st.one_of(st.binary(max_size=30), SNIFF_FRAGMENTS), max_size=30).map(b"".join),
    st.lists(st.integers(0, 1000), max_size=8),
)
def test_model_sniffer_never_raises_and_labels_stay_bounded(body: bytes, cuts: list[int]) -> None:
    assert sniff(split(body, cuts)) in LABELS


@fuzz(250)
@given(
    model=MODEL_NAMES,
    content=st.text(max_size=300),
    first=st.booleans(),
    style=st.sampled_from([{}, {"separators": (",", ":")}, {"indent": 2}]),
    ensure_ascii=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
def test_model_sniffer_finds_the_model_of_real_bodies(
    model: str,
    content: str,
    first: bool,
    style: dict[str, Any],
    ensure_ascii: bool,
    cuts: list[int],
) -> None:
    # Message texts may mention "model" themselves: JSON escapes their quotes.
    messages = [{"role": "user", "content": content + ' "model": "deepseek-v4-pro" '}]
    fields = {"model": model, "messages": messages} if first else {"messages": messages}
    fields = {**fields, "model": model, "stream": True}
    body = json.dumps(fields, ensure_ascii=ensure_ascii, **style).encode()
    label = sniff(split(body, cuts))
    canonical = PRICES.canonical_model(model)
    readable = 0 < len(model.encode()) <= 128 and not any(c in model for c in '"\\')
    if (ensure_ascii and not model.isascii()) or any(ord(c) < 0x20 for c in model):
        readable = False  # JSON escapes them: the sniffer sees a backslash and gives up
    expected = canonical if canonical is not None and readable else OTHER_MODEL
    assert label == expected


# --- price lookup ----------------------------------------------------------------------------

INSTANTS = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)).flatmap(
    lambda naive: st.builds(
        lambda minutes: naive.replace(tzinfo=timezone(timedelta(minutes=minutes))),
        st.integers(-23 * 60, 23 * 60),
    )
)


@fuzz(250)
@given(
    model=MODEL_NAMES,
    currency=st.one_of(st.sampled_from(["CNY", "USD", "EUR", "usd"]), st.text(max_size=4)),
    at=INSTANTS,
    tokens=st.tuples(*(st.integers(0, 10**12) for _ in range(4))),
)
def test_price_lookup_of_any_name(
    model: str, currency: str, at: datetime, tokens: tuple[int, int, int, int]
) -> None:
    canonical = PRICES.canonical_model(model)
    assert canonical is None or canonical in PRICES.models
    price = PRICES.price(model, currency, at)
    cost = PRICES.cost(model, currency, Usage(*tokens), at)
    if canonical is None or currency not in ("CNY", "USD"):
        assert price is None and cost is None
        return
    assert price == PRICES.price(canonical, currency, at.astimezone(UTC))  # aliases, any zone
    assert (price is None) == (cost is None)
    if price is not None and cost is not None:
        for value in (price.input_cache_hit, price.input_cache_miss, price.output):
            assert value.is_finite() and value >= 0
        assert cost.is_finite() and cost >= 0
        assert PROXY.meter.label("/chat/completions", model.encode()) == canonical


# --- Anthropic-style streams, split anywhere -------------------------------------------------

COUNTS = st.integers(min_value=0, max_value=10**9)


@fuzz(200)
@given(
    miss=COUNTS,
    hit=COUNTS,
    created=COUNTS,
    outputs=st.lists(COUNTS, min_size=1, max_size=4),
    texts=st.lists(st.text(alphabet=string.printable + "你好🙂", max_size=30), max_size=4),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    cuts=st.lists(st.integers(0, 3000), max_size=10),
)
def test_anthropic_stream_round_trip(
    miss: int,
    hit: int,
    created: int,
    outputs: list[int],
    texts: list[str],
    eol: bytes,
    cuts: list[int],
) -> None:
    def event(kind: str, payload: dict[str, Any]) -> bytes:
        data = json.dumps({"type": kind, **payload}, ensure_ascii=False).encode()
        return b"event: " + kind.encode() + eol + b"data: " + data + eol + eol

    usage = {
        "input_tokens": miss,
        "output_tokens": 1,
        "cache_read_input_tokens": hit,
        "cache_creation_input_tokens": created,
    }
    stream = event("message_start", {"message": {"id": "m", "usage": usage}})
    stream += b": ping" + eol + eol
    for text in texts:
        stream += event("content_block_delta", {"delta": {"type": "text_delta", "text": text}})
    for output in sorted(outputs):  # cumulative
        stream += event("message_delta", {"delta": {}, "usage": {"output_tokens": output}})
    stream += event("message_stop", {})
    scanner = StreamUsageScanner()
    for piece in split(stream, cuts):
        scanner.feed(piece)
    assert scanner.finish() == Usage(hit, miss + created, max(outputs), 0)

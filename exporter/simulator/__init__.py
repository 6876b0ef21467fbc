"""A simulated DeepSeek API server that follows the project's API fact sheet (deepseek-api.md).

No machine here reaches the real API, so everything that talks to DeepSeek is tested against this
fake: the test suite (real HTTP on loopback, official SDKs as clients), the exporter's ``--demo``
mode (in-process) and ``deepseek-exporter simulate`` (standalone, see :func:`run_standalone`).

What it serves (each also under ``/v1`` where the real API accepts it):

- ``GET /user/balance``, ``GET /models``
- ``POST /chat/completions`` (OpenAI shape, streaming and not, thinking models stream
  ``reasoning_content`` before ``content``)
- ``POST /beta/completions`` (FIM)
- ``POST /anthropic/v1/messages`` (Anthropic shape and events; key in ``x-api-key``)

Token counts are deterministic: prompt tokens are ``ceil(characters / 4)`` of the message texts (at
least 1); a repeated prompt prefix of the same account and model is a cache hit; the reply has
``completion_tokens`` tokens (capped by ``max_tokens``) plus ``reasoning_tokens`` for thinking
requests. Each successful completion is priced with :class:`~exporter.proxy.pricing.PriceTable` at
the simulator's clock and deducted from the account's first currency, granted balance first, never
below zero. A completion that reached inference is charged in full even if a fault later resets the
connection or withholds usage, like a real upstream that bills what it generated: tests of a
metering proxy can then compare what the proxy counted with :meth:`Simulator.stats`.

Test-only control: the Python methods of :class:`Simulator` and these unauthenticated HTTP
endpoints, which exist to drive the fake from tests, also out of process (``control=False`` turns
them off; never expose a simulator to a network you don't trust)::

    GET    /_simulator/state                   accounts (keys masked), pending faults, settings
    POST   /_simulator/accounts                {"name", "api_key", "balances": {"CNY":
                                                {"granted": "10", "topped_up": "100"}}}
    DELETE /_simulator/accounts/{name}
    POST   /_simulator/accounts/{name}/top_up  {"currency", "amount"}
    PUT    /_simulator/accounts/{name}/balance {"currency", "granted", "topped_up"}
    GET|POST|DELETE /_simulator/faults         list / add (the fields of Fault) / clear
    GET|DELETE /_simulator/requests            the request log / clear log, stats and cache
    GET    /_simulator/stats                   AccountStats per account
    PATCH  /_simulator/config                  settings, and {"time": unix seconds | null}

Not modelled: closing requests that wait over 10 minutes, rate limits other than
``max_concurrency``, tool calls, ``n`` > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web

from exporter.proxy.pricing import CURRENCIES, PriceTable
from exporter.proxy.usage import Usage
from exporter.simulator.errors import (
    ERRORS,
    Reject,
    error_response,
    invalid,
    mask_key,
    presented_key,
)
from exporter.simulator.records import (
    COMPLETION_ENDPOINTS,
    ENDPOINTS,
    FAULT,
    RECORD,
    AccountStats,
    Fault,
    FaultKind,
    RequestRecord,
    SimAccount,
    canonical_path,
    to_decimal,
)

__all__ = [
    "AccountStats",
    "Fault",
    "FaultKind",
    "RequestRecord",
    "SimAccount",
    "Simulator",
    "SimulatorThread",
    "demo_accounts",
    "main",
    "run_standalone",
]

_CENT = Decimal("0.01")
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
# Deterministic filler text: one word is one token, so chunk sizes are easy to reason about.
_CONTENT_WORDS = ("The", "simulated", "model", "answers", "with", "deterministic", "filler", "text")
_REASONING_WORDS = ("Let", "me", "think", "about", "the", "question", "step", "by", "step")
# Bounds memory in long benchmark runs; the log is for inspection, AccountStats stay exact.
_LOG_LIMIT = 10_000
_CACHE_LIMIT = 100_000
# Handlers stalled by a fault must not hold up stop() for long.
_SHUTDOWN_TIMEOUT = 0.5

_HTML_502 = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""

# --------------------------------------------------------------------------------------------
# Data types


# Faults that replace the whole reply, before authentication: they model a broken upstream or a
# proxy in front of it. The others alter an otherwise normal reply.
_REPLACING = frozenset(
    {FaultKind.STATUS, FaultKind.HTML, FaultKind.NON_JSON, FaultKind.BODY, FaultKind.DROP}
)


@dataclass
class _Generation:
    """One simulated inference: everything the renderers need."""

    id: str
    created: int
    model: str  # as requested
    thinking: bool
    reasoning: list[str]  # one word (token) per item, joined they make the text
    content: list[str]
    finish_reason: str
    usage: Usage


# --------------------------------------------------------------------------------------------
# Small helpers


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _pad(obj: dict[str, Any], size: int) -> dict[str, Any]:
    """``obj`` with a filler field so that its JSON is ``size`` bytes (or as small as it gets)."""
    padded = {**obj, "x_sim_padding": ""}
    missing = size - len(_dumps(padded))
    if missing > 0:
        padded["x_sim_padding"] = "x" * missing
    return padded


def _text_of(content: Any) -> str:
    """The text of an OpenAI or Anthropic message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def _words(vocabulary: tuple[str, ...], n: int) -> list[str]:
    return [("" if i == 0 else " ") + vocabulary[i % len(vocabulary)] for i in range(n)]


def _split(items: list[str], parts: int) -> list[str]:
    """``items`` joined into exactly ``parts`` pieces of near-equal size (some may be empty)."""
    n = len(items)
    return ["".join(items[i * n // parts : (i + 1) * n // parts]) for i in range(parts)]


def _sse(payload: dict[str, Any] | str, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else _dumps(payload).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def _openai_usage(usage: Usage, thinking: bool) -> dict[str, Any]:
    prompt = usage.input_cache_hit + usage.input_cache_miss
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output,
        "total_tokens": prompt + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.input_cache_hit},
    }
    if thinking:
        result["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    result["prompt_cache_hit_tokens"] = usage.input_cache_hit
    result["prompt_cache_miss_tokens"] = usage.input_cache_miss
    return result


def _anthropic_usage(usage: Usage) -> dict[str, Any]:
    # Anthropic semantics: input_tokens excludes the tokens read from the cache.
    return {
        "input_tokens": usage.input_cache_miss,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.input_cache_hit,
        "output_tokens": usage.output,
    }


# --------------------------------------------------------------------------------------------
# The simulator

_STREAM_USAGE_STYLES = ("deepseek", "requested", "openai")
# Settings that PATCH /_simulator/config may change, with their types.
_CONFIG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "completion_tokens": int,
    "reasoning_tokens": int,
    "stream_chunks": int,
    "chunk_interval": (int, float),
    "keepalive_delay": (int, float),
    "keepalive_interval": (int, float),
    "prompt_cache": bool,
    "stream_usage": str,
    "numeric_balances": bool,
    "max_concurrency": (int, type(None)),
}


class Simulator:
    """The fake DeepSeek API. Settings are public attributes and may be changed at any time.

    - ``models``: model names served (default: those the price table prices at the clock's
      time, so retired ones answer 400 Model Not Exist); aliases of a served model work too.
    - ``completion_tokens``: content tokens per reply (capped by the request's ``max_tokens``).
    - ``reasoning_tokens``: extra reasoning tokens of thinking requests (``thinking.type`` is
      ``enabled``, ``reasoning_effort`` is set, or the model is in ``thinking_models``).
    - ``stream_chunks``: text-carrying chunks per stream (thinking: half reasoning, half content,
      at least one each), besides the role chunk and the final chunk; ``chunk_interval`` seconds
      apart.
    - ``keepalive_delay``: seconds "waiting for inference" after headers are sent, with a
      keep-alive every ``keepalive_interval`` seconds (empty line, or ``: keep-alive`` in SSE).
    - ``stream_usage``: ``"deepseek"`` (usage on the finishing chunk, always), ``"requested"``
      (only with ``stream_options.include_usage``) or ``"openai"`` (an extra ``choices: []``
      chunk, only when requested).
    - ``numeric_balances``: balance amounts as JSON numbers (an older doc's variant).
    - ``max_concurrency``: completions in flight per account before 429 (None: no limit).
    """

    def __init__(
        self,
        accounts: Iterable[SimAccount] = (),
        *,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
        models: Iterable[str] | None = None,
        thinking_models: Iterable[str] = ("deepseek-reasoner",),
        completion_tokens: int = 20,
        reasoning_tokens: int = 32,
        stream_chunks: int = 8,
        chunk_interval: float = 0.0,
        keepalive_delay: float = 0.0,
        keepalive_interval: float = 1.0,
        prompt_cache: bool = True,
        stream_usage: str = "deepseek",
        numeric_balances: bool = False,
        max_concurrency: int | None = None,
        control: bool = True,
    ) -> None:
        if stream_usage not in _STREAM_USAGE_STYLES:
            raise ValueError(f"stream_usage must be one of {', '.join(_STREAM_USAGE_STYLES)}")
        self.prices = prices if prices is not None else PriceTable.load()
        self.clock = clock
        # None: whatever the price table prices at the clock's time (retired models drop out).
        self.models: frozenset[str] | None = frozenset(models) if models is not None else None
        self.thinking_models = frozenset(thinking_models)
        self.completion_tokens = completion_tokens
        self.reasoning_tokens = reasoning_tokens
        self.stream_chunks = stream_chunks
        self.chunk_interval = chunk_interval
        self.keepalive_delay = keepalive_delay
        self.keepalive_interval = keepalive_interval
        self.prompt_cache = prompt_cache
        self.stream_usage = stream_usage
        self.numeric_balances = numeric_balances
        self.max_concurrency = max_concurrency
        self.control = control
        self.base_url: str | None = None

        # Tests call control methods from another thread than the server's event loop: every
        # access to the state below holds this lock (never across an await).
        self._lock = threading.Lock()
        self._accounts: dict[str, SimAccount] = {}
        self._faults: list[Fault] = []
        self._log: deque[RequestRecord] = deque(maxlen=_LOG_LIMIT)
        self._stats: dict[str, AccountStats] = {}
        self._seq = 0
        self._inflight: dict[str, int] = {}
        self._cache: dict[str, set[bytes]] = {}
        self._runner: web.AppRunner | None = None
        for account in accounts:
            self.add_account(account)

    # ---- control API (test-only) -------------------------------------------------------------

    def add_account(self, account: SimAccount) -> None:
        """Add or replace (by name) an account."""
        with self._lock:
            for other in self._accounts.values():
                if other.api_key == account.api_key and other.name != account.name:
                    raise ValueError(f"account {other.name!r} already uses this api key")
            self._accounts[account.name] = account.copy()

    def remove_account(self, name: str) -> None:
        with self._lock:
            del self._accounts[name]
            self._cache.pop(name, None)

    def account(self, name: str) -> SimAccount:
        """A snapshot (copy) of one account."""
        with self._lock:
            return self._accounts[name].copy()

    @property
    def accounts(self) -> list[SimAccount]:
        with self._lock:
            return [a.copy() for a in self._accounts.values()]

    def top_up(self, account_name: str, currency: str, amount: Decimal | int | str) -> None:
        """Add ``amount`` to the topped-up balance (a new currency is appended)."""
        amount = to_decimal(amount)
        with self._lock:
            balances = self._accounts[account_name].balances
            granted, topped_up = balances.get(currency.upper(), (Decimal(0), Decimal(0)))
            balances[currency.upper()] = (granted, topped_up + amount)

    def set_balance(
        self,
        account_name: str,
        currency: str,
        granted: Decimal | int | str,
        topped_up: Decimal | int | str,
    ) -> None:
        with self._lock:
            self._accounts[account_name].balances[currency.upper()] = (
                to_decimal(granted),
                to_decimal(topped_up),
            )

    def add_fault(self, fault: Fault | FaultKind | str, **params: Any) -> Fault:
        """Queue a fault: ``add_fault("status", status=503, path="/user/balance", times=2)``.
        Each request consumes at most one fault, the oldest that matches its path."""
        if not isinstance(fault, Fault):
            fault = Fault(FaultKind(fault), **params)
        elif params:
            raise TypeError("pass either a Fault or a kind with parameters")
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Faults still pending."""
        with self._lock:
            return [replace(f) for f in self._faults]

    def requests(self) -> list[RequestRecord]:
        """The request log (last 10 000 requests), oldest first; copies."""
        with self._lock:
            return [replace(r) for r in self._log]

    def stats(self) -> dict[str, AccountStats]:
        """Per-account counters since start (or :meth:`clear_requests`); copies."""
        with self._lock:
            return {
                name: replace(
                    s, completions=dict(s.completions), other_requests=dict(s.other_requests)
                )
                for name, s in self._stats.items()
            }

    def clear_requests(self) -> None:
        """Forget the request log, the counters and the prompt cache."""
        with self._lock:
            self._log.clear()
            self._stats.clear()
            self._cache.clear()

    def set_clock(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def served_models(self) -> list[str]:
        """The models ``GET /models`` lists and completions accept."""
        if self.models is not None:
            return sorted(self.models)
        return sorted(m for m in self.prices.models if self._serves(m, m))

    def _serves(self, model: str, canonical: str) -> bool:
        if self.models is not None:
            return model in self.models or canonical in self.models
        at = datetime.fromtimestamp(self.clock(), tz=UTC)
        return any(self.prices.price(canonical, cur, at) is not None for cur in CURRENCIES)

    # ---- server lifecycle --------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/user/balance", self._handle_balance)
        r.add_get("/models", self._handle_models)
        r.add_get("/v1/models", self._handle_models)
        r.add_post("/chat/completions", self._handle_chat)
        r.add_post("/v1/chat/completions", self._handle_chat)
        r.add_post("/beta/completions", self._handle_fim)
        r.add_post("/anthropic/v1/messages", self._handle_anthropic)
        if self.control:
            self._add_control_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(
            self.make_app(),
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            # Cancel a handler when its client goes away, so stalled streams don't linger.
            handler_cancellation=True,
            access_log=None,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.base_url = None

    # ---- request plumbing --------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if request.match_info.http_exception is not None or request.path.startswith("/_simulator/"):
            return await handler(request)
        with self._lock:
            self._seq += 1
            record = RequestRecord(
                seq=self._seq,
                time=self.clock(),
                method=request.method,
                path=request.path,
                endpoint=ENDPOINTS[canonical_path(request.path)],
            )
            self._log.append(record)
            fault = next((f for f in self._faults if f.matches(request.path)), None)
            if fault is not None:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                record.fault = str(fault.kind)
        request[RECORD] = record
        request[FAULT] = fault
        status: int | None = None
        try:
            if fault is not None and fault.kind == FaultKind.DELAY:
                await asyncio.sleep(fault.seconds)
            if fault is not None and fault.kind in _REPLACING:
                # Counted for the key's account, if any, so stats match what a proxy saw.
                record.account = self._account_for(
                    presented_key(request, record.endpoint == "anthropic")
                )
                response = self._replacing_fault(request, fault)
            else:
                try:
                    response = await handler(request)
                except Reject as reject:
                    response = reject.response
                except ConnectionResetError:
                    # The client went away mid-reply: nothing left to send, and not worth the
                    # traceback aiohttp would log for an escaping exception.
                    return web.Response(status=499)
            status = response.status
            return response
        finally:
            if status is None:
                # The client went away (cancelled, reset) before the reply was complete: 499,
                # even after a 200 header and after charging.
                self._finish(record, 499, override=True)
            else:
                self._finish(record, status)

    def _replacing_fault(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.kind == FaultKind.STATUS:
            status = fault.status or 500
            message = fault.message
            if status == 401 and message is None:
                key = presented_key(request, request[RECORD].endpoint == "anthropic")
                message = ERRORS[401][0].replace("****", mask_key(key))
            return error_response(status, message, fault.error_type)
        if fault.kind == FaultKind.HTML:
            return web.Response(
                body=_HTML_502, status=fault.status or 502, content_type="text/html"
            )
        if fault.kind == FaultKind.NON_JSON:
            body = fault.body if fault.body is not None else b"upstream says: this is not JSON"
            return self._raw(body, fault.status or 200, fault.content_type or _JSON)
        if fault.kind == FaultKind.BODY:
            return self._raw(fault.body, fault.status or 200, fault.content_type or _JSON)
        # DROP: not a byte; aiohttp quietly gives up writing the response we return. Status 0
        # in the log means "no response".
        self._finish(request[RECORD], 0)
        if request.transport is not None:
            request.transport.abort()
        return web.Response()

    @staticmethod
    def _raw(body: Any, status: int, content_type: str) -> web.Response:
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = _dumps(body)
        response = web.Response(body=data, status=status)
        response.headers["Content-Type"] = content_type
        return response

    def _finish(self, record: RequestRecord, status: int, override: bool = False) -> None:
        """Set the status and count it; only once, unless ``override`` corrects it (usage and
        cost are counted the first time only)."""
        with self._lock:
            previous = record.status
            if previous is not None and (not override or previous == status):
                return
            record.status = status
            if record.account is None:
                return
            stats = self._stats.setdefault(record.account, AccountStats())
            counter = (
                stats.completions
                if record.endpoint in COMPLETION_ENDPOINTS
                else stats.other_requests
            )
            counter[status] = counter.get(status, 0) + 1
            if previous is not None:
                counter[previous] -= 1
                if counter[previous] == 0:
                    del counter[previous]
                return
            if record.usage is not None:
                u, s = record.usage, stats.usage
                stats.usage = Usage(
                    s.input_cache_hit + u.input_cache_hit,
                    s.input_cache_miss + u.input_cache_miss,
                    s.output + u.output,
                    s.reasoning + u.reasoning,
                )
            if record.cost is not None:
                stats.cost += record.cost

    def _account_for(self, key: str) -> str | None:
        with self._lock:
            return next((a.name for a in self._accounts.values() if key and a.api_key == key), None)

    def _authenticate(self, request: web.Request, anthropic: bool = False) -> str:
        """The account name for the request's key, or a 401 that shows at most 4 of its chars."""
        key = presented_key(request, anthropic)
        name = self._account_for(key)
        if name is None:
            raise Reject(
                error_response(
                    401, f"Authentication Fails, Your api key: {mask_key(key)} is invalid"
                )
            )
        request[RECORD].account = name
        return name

    @staticmethod
    async def _read_json(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            # 400 since 2025 (it was 422 in 2024), see the sheet.
            raise Reject(
                error_response(400, f"Failed to parse the request body as JSON: {exc}")
            ) from None
        if not isinstance(body, dict):
            raise invalid("expected a JSON object")
        return body

    def _check_model(self, body: dict[str, Any], record: RequestRecord) -> str:
        """The canonical (billing) name of the requested model, or 400 Model Not Exist."""
        model = body.get("model")
        if not isinstance(model, str):
            raise invalid("missing field `model`")
        record.model = model
        canonical = self.prices.canonical_model(model)
        if canonical is None or not self._serves(model, canonical):
            raise Reject(error_response(400, "Model Not Exist", "invalid_request_error"))
        return canonical

    @staticmethod
    def _check_common(body: dict[str, Any], record: RequestRecord) -> tuple[bool, int | None]:
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise invalid("stream: invalid type, expected a boolean")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise invalid("max_tokens: expected a positive integer")
        record.stream = bool(stream)
        return bool(stream), max_tokens

    @staticmethod
    def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body.get("messages")
        if messages is None:
            raise invalid("missing field `messages`")
        if not isinstance(messages, list) or not messages:
            raise invalid("messages: expected a non-empty list")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise invalid("messages: each message needs a string `role`")
        return messages

    @contextlib.contextmanager
    def _admit(self, name: str) -> Iterator[None]:
        """Check the account can pay (402) and is under its concurrency limit (429); count it
        in flight for the duration."""
        with self._lock:
            account = self._accounts.get(name)
            currency = account.currency if account else None
            if account is None or currency is None or account.total(currency) <= 0:
                raise Reject(error_response(402))
            inflight = self._inflight.get(name, 0)
            if self.max_concurrency is not None and inflight >= self.max_concurrency:
                raise Reject(error_response(429))
            self._inflight[name] = inflight + 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight[name] -= 1

    def _thinks(self, model: str, canonical: str, body: dict[str, Any]) -> bool:
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
            return thinking["type"] == "enabled"
        if body.get("reasoning_effort") not in (None, "none"):
            return True
        return model in self.thinking_models or canonical in self.thinking_models

    def _infer(
        self,
        record: RequestRecord,
        canonical: str,
        units: list[tuple[str, int]],
        thinking: bool,
        max_tokens: int | None,
    ) -> _Generation:
        """Run the "inference": count tokens, charge the account, record a 200."""
        content_tokens = self.completion_tokens
        finish_reason = "stop"
        if max_tokens is not None and max_tokens < content_tokens:
            content_tokens, finish_reason = max_tokens, "length"
        reasoning_tokens = self.reasoning_tokens if thinking else 0
        now = self.clock()
        name = record.account
        assert name is not None
        with self._lock:
            hit, miss = self._split_prompt(name, canonical, units)
            usage = Usage(hit, miss, content_tokens + reasoning_tokens, reasoning_tokens)
            record.usage = usage
            account = self._accounts.get(name)
            if account is not None and account.currency is not None:
                record.currency = account.currency
                record.cost = self.prices.cost(
                    canonical, account.currency, usage, datetime.fromtimestamp(now, tz=UTC)
                )
                if record.cost is not None and record.cost > 0:
                    granted, topped_up = account.balances[account.currency]
                    # Granted first, then topped up (the sheet); never below zero.
                    from_granted = min(max(granted, Decimal(0)), record.cost)
                    from_topped = min(max(topped_up, Decimal(0)), record.cost - from_granted)
                    account.balances[account.currency] = (
                        granted - from_granted,
                        topped_up - from_topped,
                    )
            seq = record.seq
        # Counted now, not when the reply ends: a client that has read the whole reply must find
        # it in stats() at once. A client that goes away mid-reply turns it into a 499.
        self._finish(record, 200)
        return _Generation(
            id=f"sim-{seq}",
            created=int(now),
            model=record.model or canonical,
            thinking=thinking,
            reasoning=_words(_REASONING_WORDS, reasoning_tokens),
            content=_words(_CONTENT_WORDS, content_tokens),
            finish_reason=finish_reason,
            usage=usage,
        )

    def _split_prompt(
        self, name: str, canonical: str, units: list[tuple[str, int]]
    ) -> tuple[int, int]:
        """(cache hit, cache miss) prompt tokens. ``units`` are (identity, characters) of the
        prompt's parts in order; the longest prefix this account already sent to this model is
        a hit. Deterministic for a given sequence of requests. Call with the lock held."""
        total_chars = sum(chars for _, chars in units)
        total = max(1, math.ceil(total_chars / 4))
        if not self.prompt_cache:
            return 0, total
        seen = self._cache.setdefault(name, set())
        if len(seen) > _CACHE_LIMIT:
            seen.clear()
        digest = hashlib.sha256(canonical.encode())
        hit = chars = 0
        keys = []
        for identity, unit_chars in units:
            digest.update(b"\0" + identity.encode())
            chars += unit_chars
            key = digest.digest()
            keys.append(key)
            if key in seen:
                hit = min(total, math.ceil(chars / 4))
        seen.update(keys)
        return hit, total - hit

    # ---- writing replies ---------------------------------------------------------------------

    async def _wait_for_inference(
        self, request: web.Request, stream: bool
    ) -> web.StreamResponse | None:
        """Before inference "starts": send headers, then keep-alives, for keepalive_delay."""
        delay = self.keepalive_delay
        if delay <= 0:
            return None
        response = web.StreamResponse(status=200)
        response.headers["Content-Type"] = _SSE if stream else _JSON
        await response.prepare(request)
        keepalive = b": keep-alive\n\n" if stream else b"\n"
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (remaining := end - loop.time()) > 0:
            await asyncio.sleep(min(self.keepalive_interval, remaining))
            if loop.time() < end:
                await response.write(keepalive)
        return response

    async def _send_json(
        self,
        request: web.Request,
        obj: dict[str, Any],
        response: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """A JSON reply, through the RESET / STALL / HUGE faults of this request."""
        fault: Fault | None = request[FAULT]
        if fault is not None and fault.kind == FaultKind.HUGE:
            obj = _pad(obj, fault.size)
        body = _dumps(obj)
        if response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = _JSON
            response.content_length = len(body)
            await response.prepare(request)
        if fault is not None and fault.kind in (FaultKind.RESET, FaultKind.STALL):
            half = len(body) // 2
            await response.write(body[:half])
            if fault.kind == FaultKind.RESET:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await asyncio.sleep(fault.seconds)
            body = body[half:]
        await response.write(body)
        await response.write_eof()
        return response

    async def _send_events(
        self,
        request: web.Request,
        events: list[tuple[str | None, dict[str, Any] | str]],
        response: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """SSE ``(event name, payload)`` items, ``chunk_interval`` apart, through the RESET /
        STALL / HUGE faults of this request."""
        fault: Fault | None = request[FAULT]
        if fault is not None and fault.kind == FaultKind.HUGE and isinstance(events[0][1], dict):
            events[0] = (events[0][0], _pad(events[0][1], fault.size))
        if response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = _SSE
            response.headers["Cache-Control"] = "no-cache"
            await response.prepare(request)
        # A reset/stall point past the end still fires: right before the last event.
        fault_at = min(fault.after_chunks, len(events) - 1) if fault is not None else -1
        for i, (event, payload) in enumerate(events):
            if i == fault_at and fault is not None and fault.kind == FaultKind.RESET:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if i == fault_at and fault is not None and fault.kind == FaultKind.STALL:
                await asyncio.sleep(fault.seconds)
            if i > 0 and self.chunk_interval > 0:
                await asyncio.sleep(self.chunk_interval)
            await response.write(_sse(payload, event))
        await response.write_eof()
        return response

    def _no_usage(self, request: web.Request) -> bool:
        fault: Fault | None = request[FAULT]
        return fault is not None and fault.kind == FaultKind.NO_USAGE

    # ---- API endpoints -----------------------------------------------------------------------

    async def _handle_balance(self, request: web.Request) -> web.StreamResponse:
        name = self._authenticate(request)
        with self._lock:
            account = self._accounts[name].copy()
        infos = []
        for currency, (granted, topped_up) in account.balances.items():
            # Rounded parts, and a total that is their sum, so total = granted + topped_up holds
            # in what the client sees.
            g = granted.quantize(_CENT, ROUND_HALF_UP)
            t = topped_up.quantize(_CENT, ROUND_HALF_UP)
            amounts = (g + t, g, t)
            shown: tuple[Any, ...] = (
                tuple(float(a) for a in amounts)
                if self.numeric_balances
                else tuple(str(a) for a in amounts)
            )
            infos.append(
                {
                    "currency": currency,
                    "total_balance": shown[0],
                    "granted_balance": shown[1],
                    "topped_up_balance": shown[2],
                }
            )
        return await self._send_json(
            request, {"is_available": account.is_available, "balance_infos": infos}
        )

    async def _handle_models(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request)
        data = [{"id": m, "object": "model", "owned_by": "deepseek"} for m in self.served_models()]
        return await self._send_json(request, {"object": "list", "data": data})

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await self._read_json(request)
        messages = self._check_messages(body)
        stream, max_tokens = self._check_common(body, record)
        canonical = self._check_model(body, record)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        thinking = self._thinks(record.model or "", canonical, body)
        units = [
            (json.dumps(m, sort_keys=True, default=str), len(_text_of(m.get("content"))))
            for m in messages
        ]
        with self._admit(name):
            response = await self._wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, thinking, max_tokens)
            if not stream:
                return await self._send_json(request, self._chat_object(gen, request), response)
            events = self._chat_events(gen, include_usage, self._no_usage(request))
            return await self._send_events(request, events, response)

    def _chat_object(self, gen: _Generation, request: web.Request) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(gen.content)}
        if gen.thinking:
            message["reasoning_content"] = "".join(gen.reasoning)
        obj: dict[str, Any] = {
            "id": gen.id,
            "object": "chat.completion",
            "created": gen.created,
            "model": gen.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": gen.finish_reason,
                }
            ],
            "system_fingerprint": "fp_sim",
        }
        if not self._no_usage(request):
            obj["usage"] = _openai_usage(gen.usage, gen.thinking)
        return obj

    def _chat_events(
        self, gen: _Generation, include_usage: bool, no_usage: bool
    ) -> list[tuple[str | None, dict[str, Any] | str]]:
        style = self.stream_usage
        usage = None if no_usage else _openai_usage(gen.usage, gen.thinking)
        # Where usage goes: on the finishing chunk ("deepseek" always, "requested" if asked),
        # or an extra choices-less chunk ("openai", if asked).
        on_final = style == "deepseek" or (style == "requested" and include_usage)
        extra_chunk = style == "openai" and include_usage

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            obj: dict[str, Any] = {
                "id": gen.id,
                "object": "chat.completion.chunk",
                "created": gen.created,
                "model": gen.model,
                "system_fingerprint": "fp_sim",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                obj["usage"] = None
            return obj

        total = max(1, self.stream_chunks)
        if gen.thinking:
            n_reasoning = max(1, total // 2)
            pieces = [("reasoning_content", t) for t in _split(gen.reasoning, n_reasoning)]
            pieces += [("content", t) for t in _split(gen.content, max(1, total - n_reasoning))]
            first = chunk({"role": "assistant", "content": None, "reasoning_content": ""})
        else:
            pieces = [("content", t) for t in _split(gen.content, total)]
            first = chunk({"role": "assistant", "content": ""})
        chunks = [first]
        for key, text in pieces:
            delta = {"content": None, key: text} if key == "reasoning_content" else {key: text}
            chunks.append(chunk(delta))
        final = chunk({"content": ""}, gen.finish_reason)
        if on_final and usage is not None:
            final["usage"] = usage
        chunks.append(final)
        if extra_chunk:
            tail = chunk({})
            tail["choices"] = []
            tail["usage"] = usage
            chunks.append(tail)
        events: list[tuple[str | None, dict[str, Any] | str]] = [(None, c) for c in chunks]
        events.append((None, "[DONE]"))
        return events

    async def _handle_fim(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await self._read_json(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise invalid(
                "missing field `prompt`" if prompt is None else "prompt: expected a string"
            )
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise invalid("suffix: expected a string")
        stream, max_tokens = self._check_common(body, record)
        canonical = self._check_model(body, record)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        units = [(prompt, len(prompt)), ("\0suffix\0" + (suffix or ""), len(suffix or ""))]
        no_usage = self._no_usage(request)
        with self._admit(name):
            response = await self._wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, False, max_tokens)
            usage = None if no_usage else _openai_usage(gen.usage, False)

            def completion(text: str, finish: str | None) -> dict[str, Any]:
                return {
                    "id": gen.id,
                    "object": "text_completion",
                    "created": gen.created,
                    "model": gen.model,
                    "choices": [
                        {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                    ],
                }

            if not stream:
                obj = completion("".join(gen.content), gen.finish_reason)
                if usage is not None:
                    obj["usage"] = usage
                return await self._send_json(request, obj, response)
            chunks = [completion(t, None) for t in _split(gen.content, max(1, self.stream_chunks))]
            chunks.append(completion("", gen.finish_reason))
            if include_usage:
                for c in chunks:
                    c["usage"] = None
            if usage is not None and (self.stream_usage == "deepseek" or include_usage):
                chunks[-1]["usage"] = usage
            events: list[tuple[str | None, dict[str, Any] | str]] = [(None, c) for c in chunks]
            events.append((None, "[DONE]"))
            return await self._send_events(request, events, response)

    async def _handle_anthropic(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request, anthropic=True)
        body = await self._read_json(request)
        messages = self._check_messages(body)
        stream, max_tokens = self._check_common(body, record)
        canonical = self._check_model(body, record)
        thinking = self._thinks(record.model or "", canonical, body)
        system = body.get("system")
        units = [] if system is None else [(json.dumps(system), len(_text_of(system)))]
        units += [
            (json.dumps(m, sort_keys=True, default=str), len(_text_of(m.get("content"))))
            for m in messages
        ]
        no_usage = self._no_usage(request)
        with self._admit(name):
            response = await self._wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, thinking, max_tokens)
            stop_reason = "max_tokens" if gen.finish_reason == "length" else "end_turn"
            signature = hashlib.sha256(gen.id.encode()).hexdigest()[:32]
            message: dict[str, Any] = {
                "id": f"msg_{gen.id}",
                "type": "message",
                "role": "assistant",
                "model": gen.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
            }
            if not stream:
                if gen.thinking:
                    message["content"].append(
                        {
                            "type": "thinking",
                            "thinking": "".join(gen.reasoning),
                            "signature": signature,
                        }
                    )
                message["content"].append({"type": "text", "text": "".join(gen.content)})
                message["stop_reason"] = stop_reason
                if not no_usage:
                    message["usage"] = _anthropic_usage(gen.usage)
                return await self._send_json(request, message, response)

            events: list[tuple[str | None, dict[str, Any] | str]] = []

            def emit(kind: str, **payload: Any) -> None:
                events.append((kind, {"type": kind, **payload}))

            if not no_usage:
                message["usage"] = {**_anthropic_usage(gen.usage), "output_tokens": 1}
            emit("message_start", message=message)
            total = max(1, self.stream_chunks)
            blocks: list[tuple[str, str, list[str]]] = []
            if gen.thinking:
                n_reasoning = max(1, total // 2)
                blocks.append(("thinking", "thinking", _split(gen.reasoning, n_reasoning)))
                total = max(1, total - n_reasoning)
            blocks.append(("text", "text", _split(gen.content, total)))
            for index, (block_type, key, pieces) in enumerate(blocks):
                start: dict[str, Any] = {"type": block_type, key: ""}
                if block_type == "thinking":
                    start["signature"] = ""
                emit("content_block_start", index=index, content_block=start)
                for piece in pieces:
                    emit(
                        "content_block_delta",
                        index=index,
                        delta={"type": f"{block_type}_delta", key: piece},
                    )
                if block_type == "thinking":
                    emit(
                        "content_block_delta",
                        index=index,
                        delta={"type": "signature_delta", "signature": signature},
                    )
                emit("content_block_stop", index=index)
            delta_payload: dict[str, Any] = {
                "delta": {"stop_reason": stop_reason, "stop_sequence": None}
            }
            if not no_usage:
                delta_payload["usage"] = {"output_tokens": gen.usage.output}
            emit("message_delta", **delta_payload)
            emit("message_stop")
            return await self._send_events(request, events, response)

    # ---- control endpoints (test-only) -------------------------------------------------------

    def _add_control_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_simulator/state", self._ctl_state)
        r.add_post("/_simulator/accounts", self._ctl_add_account)
        r.add_delete("/_simulator/accounts/{name}", self._ctl_remove_account)
        r.add_post("/_simulator/accounts/{name}/top_up", self._ctl_top_up)
        r.add_put("/_simulator/accounts/{name}/balance", self._ctl_set_balance)
        r.add_get("/_simulator/faults", self._ctl_faults)
        r.add_post("/_simulator/faults", self._ctl_add_fault)
        r.add_delete("/_simulator/faults", self._ctl_clear_faults)
        r.add_get("/_simulator/requests", self._ctl_requests)
        r.add_delete("/_simulator/requests", self._ctl_clear_requests)
        r.add_get("/_simulator/stats", self._ctl_stats)
        r.add_patch("/_simulator/config", self._ctl_config)

    @staticmethod
    async def _ctl_body(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    @staticmethod
    def _ctl_call(func: Callable[..., Any], *args: Any) -> Any:
        """Map the control API's exceptions to HTTP errors."""
        try:
            return func(*args)
        except KeyError as exc:
            raise web.HTTPNotFound(text=f"no such account: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def _ctl_state(self, request: web.Request) -> web.Response:
        accounts = [
            {
                "name": a.name,
                "api_key": mask_key(a.api_key),
                "is_available": a.is_available,
                "balances": {
                    cur: {"granted": str(g), "topped_up": str(t), "total": str(g + t)}
                    for cur, (g, t) in a.balances.items()
                },
            }
            for a in self.accounts
        ]
        config = {key: getattr(self, key) for key in _CONFIG_FIELDS}
        return web.json_response(
            {"accounts": accounts, "faults": [f.to_json() for f in self.faults], "config": config}
        )

    async def _ctl_add_account(self, request: web.Request) -> web.Response:
        body = await self._ctl_body(request)

        def build() -> SimAccount:
            balances = {}
            for cur, value in dict(body.get("balances") or {}).items():
                if isinstance(value, Mapping):
                    balances[cur] = (
                        to_decimal(value.get("granted", 0)),
                        to_decimal(value.get("topped_up", 0)),
                    )
                else:
                    granted, topped_up = value
                    balances[cur] = (to_decimal(granted), to_decimal(topped_up))
            return SimAccount(str(body["name"]), str(body["api_key"]), balances)

        try:
            account = build()
        except (KeyError, ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"invalid account: {exc!r}") from None
        self._ctl_call(self.add_account, account)
        return web.json_response({"ok": True}, status=201)

    async def _ctl_remove_account(self, request: web.Request) -> web.Response:
        self._ctl_call(self.remove_account, request.match_info["name"])
        return web.json_response({"ok": True})

    async def _ctl_top_up(self, request: web.Request) -> web.Response:
        body = await self._ctl_body(request)
        self._ctl_call(
            self.top_up, request.match_info["name"], str(body.get("currency")), body.get("amount")
        )
        return web.json_response({"ok": True})

    async def _ctl_set_balance(self, request: web.Request) -> web.Response:
        body = await self._ctl_body(request)
        self._ctl_call(
            self.set_balance,
            request.match_info["name"],
            str(body.get("currency")),
            body.get("granted"),
            body.get("topped_up"),
        )
        return web.json_response({"ok": True})

    async def _ctl_faults(self, request: web.Request) -> web.Response:
        return web.json_response([f.to_json() for f in self.faults])

    async def _ctl_add_fault(self, request: web.Request) -> web.Response:
        body = await self._ctl_body(request)
        fault = self._ctl_call(Fault.from_json, body)
        self.add_fault(fault)
        return web.json_response(fault.to_json(), status=201)

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"ok": True})

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_json() for r in self.requests()])

    async def _ctl_clear_requests(self, request: web.Request) -> web.Response:
        self.clear_requests()
        return web.json_response({"ok": True})

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response({name: s.to_json() for name, s in self.stats().items()})

    async def _ctl_config(self, request: web.Request) -> web.Response:
        """Change settings; ``{"time": <unix seconds>}`` freezes the clock, ``null`` unfreezes."""
        body = await self._ctl_body(request)
        updates: dict[str, Any] = {}
        for key, value in body.items():
            if key == "time":
                if value is not None and not isinstance(value, int | float):
                    raise web.HTTPBadRequest(text="time: expected unix seconds or null")
                continue
            expected = _CONFIG_FIELDS.get(key)
            if expected is None:
                raise web.HTTPBadRequest(text=f"unknown setting: {key}")
            if not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            ):
                raise web.HTTPBadRequest(text=f"{key}: invalid value {value!r}")
            updates[key] = value
        if updates.get("stream_usage", "deepseek") not in _STREAM_USAGE_STYLES:
            raise web.HTTPBadRequest(text=f"stream_usage: one of {', '.join(_STREAM_USAGE_STYLES)}")
        for key, value in updates.items():
            setattr(self, key, value)
        if "time" in body:
            frozen = body["time"]
            self.set_clock(time.time if frozen is None else (lambda: float(frozen)))
        return web.json_response({key: getattr(self, key) for key in _CONFIG_FIELDS})


# --------------------------------------------------------------------------------------------
# Running it


class SimulatorThread:
    """Runs a :class:`Simulator` on its own event loop in a daemon thread, for synchronous code
    (sync tests with the sync ``openai`` client)::

        with SimulatorThread(Simulator(accounts)) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=...)
    """

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator thread not started")
        return self._base_url

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("simulator thread already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._base_url = loop.run_until_complete(self.simulator.start(self.host, self.port))
            except BaseException as exc:  # handed to the starting thread, re-raised there
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.simulator.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="deepseek-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.base_url

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = self._base_url = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def demo_accounts() -> list[SimAccount]:
    """Accounts for demos: a CNY account shaped like the sheet's example, a USD one, one with
    both currencies, and an empty one that answers 402. Keys are ``"sk-sim-" + name``: fake,
    short, and plainly not real keys."""
    specs: dict[str, dict[str, tuple[str, str]]] = {
        "demo-cny": {"CNY": ("10.00", "100.00")},
        "demo-usd": {"USD": ("0.00", "20.00")},
        "demo-both": {"USD": ("2.00", "3.00"), "CNY": ("0.00", "50.00")},
        "demo-empty": {"CNY": ("0.00", "0.00")},
    }
    return [
        SimAccount(
            name, f"sk-sim-{name}", {cur: (Decimal(g), Decimal(t)) for cur, (g, t) in bal.items()}
        )
        for name, bal in specs.items()
    ]


def run_standalone(
    host: str = "127.0.0.1",
    port: int = 0,
    accounts: Iterable[SimAccount] | None = None,
    **options: Any,
) -> None:
    """Serve a simulator until SIGINT/SIGTERM (``deepseek-exporter simulate``). ``options`` go to
    :class:`Simulator`. Prints the base URL and the account names, never keys."""
    account_list = list(accounts) if accounts is not None else demo_accounts()

    async def serve() -> None:
        simulator = Simulator(account_list, **options)
        url = await simulator.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not on Windows, nor outside the main thread: Ctrl-C still ends asyncio.run there.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        print(f"DeepSeek API simulator listening on {url}", flush=True)
        names = ", ".join(a.name for a in account_list) or "(none)"
        print(f"accounts: {names}", flush=True)
        if accounts is None:
            print('demo api keys are "sk-sim-" followed by the account name', flush=True)
        print(f"test-only control endpoints under {url}/_simulator/", flush=True)
        try:
            await stop.wait()
        finally:
            await simulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def main(listen_address: str = "127.0.0.1:8080") -> int:
    """``deepseek-exporter simulate --listen-address HOST:PORT``: serve the demo accounts.
    ``:PORT`` listens on all interfaces, as Prometheus-style addresses do."""
    host, sep, port_text = listen_address.rpartition(":")
    host = host.strip("[]")  # [::1]:8080
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        print(f"invalid listen address {listen_address!r}: expected HOST:PORT", file=sys.stderr)
        return 2
    try:
        run_standalone(host or "0.0.0.0", int(port_text))
    except OSError as exc:
        print(f"cannot listen on {listen_address}: {exc}", file=sys.stderr)
        return 1
    return 0

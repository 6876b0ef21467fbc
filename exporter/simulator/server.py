"""The :class:`Simulator`: its parts put together, its lifecycle, the middleware every API request
goes through (request log, faults) and the Python control methods tests use."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from aiohttp import web

from exporter.proxy.pricing import PriceTable
from exporter.simulator.control import ControlApi
from exporter.simulator.errors import Reject, presented_key
from exporter.simulator.faults import REPLACING, FaultQueue, replacing_reply
from exporter.simulator.handlers import ApiHandlers
from exporter.simulator.ledger import Ledger
from exporter.simulator.records import (
    FAULT,
    RECORD,
    AccountStats,
    Fault,
    FaultKind,
    RequestRecord,
    SimAccount,
)
from exporter.simulator.settings import STREAM_USAGE_STYLES, Setting, SimSettings
from exporter.simulator.writer import Writer

# Handlers stalled by a fault must not hold up stop() for long.
_SHUTDOWN_TIMEOUT = 0.5


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
    - ``report_tool_calls``: whether replies report the server-side tool calls (web search,
      fetch) they were charged for; False models an API that bills calls a proxy cannot see.
    """

    # The settings live in ``self.settings``, which the handlers and the writer share; these
    # attributes read and write it there, so ``sim.stream_chunks = 20`` works as it always did.
    prices = Setting[PriceTable]()
    clock = Setting[Callable[[], float]]()
    models = Setting[frozenset[str] | None]()
    thinking_models = Setting[frozenset[str]]()
    completion_tokens = Setting[int]()
    reasoning_tokens = Setting[int]()
    stream_chunks = Setting[int]()
    chunk_interval = Setting[float]()
    keepalive_delay = Setting[float]()
    keepalive_interval = Setting[float]()
    prompt_cache = Setting[bool]()
    stream_usage = Setting[str]()
    numeric_balances = Setting[bool]()
    max_concurrency = Setting[int | None]()
    report_tool_calls = Setting[bool]()

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
        report_tool_calls: bool = True,
        control: bool = True,
    ) -> None:
        if stream_usage not in STREAM_USAGE_STYLES:
            raise ValueError(f"stream_usage must be one of {', '.join(STREAM_USAGE_STYLES)}")
        self.settings = SimSettings(
            prices=prices if prices is not None else PriceTable.load(),
            clock=clock,
            models=frozenset(models) if models is not None else None,
            thinking_models=frozenset(thinking_models),
            completion_tokens=completion_tokens,
            reasoning_tokens=reasoning_tokens,
            stream_chunks=stream_chunks,
            chunk_interval=chunk_interval,
            keepalive_delay=keepalive_delay,
            keepalive_interval=keepalive_interval,
            prompt_cache=prompt_cache,
            stream_usage=stream_usage,
            numeric_balances=numeric_balances,
            max_concurrency=max_concurrency,
            report_tool_calls=report_tool_calls,
        )
        self.control = control
        self.base_url: str | None = None
        self.ledger = Ledger(self.settings)
        self.fault_queue = FaultQueue()
        self._api = ApiHandlers(self.settings, self.ledger, Writer(self.settings))
        self._runner: web.AppRunner | None = None
        for account in accounts:
            self.add_account(account)

    # ---- control API (test-only) -------------------------------------------------------------

    def add_account(self, account: SimAccount) -> None:
        """Add or replace (by name) an account."""
        self.ledger.add_account(account)

    def remove_account(self, name: str) -> None:
        self.ledger.remove_account(name)

    def account(self, name: str) -> SimAccount:
        """A snapshot (copy) of one account."""
        return self.ledger.account(name)

    @property
    def accounts(self) -> list[SimAccount]:
        return self.ledger.accounts

    def top_up(self, account_name: str, currency: str, amount: Decimal | int | str) -> None:
        """Add ``amount`` to the topped-up balance (a new currency is appended)."""
        self.ledger.top_up(account_name, currency, amount)

    def set_balance(
        self,
        account_name: str,
        currency: str,
        granted: Decimal | int | str,
        topped_up: Decimal | int | str,
    ) -> None:
        self.ledger.set_balance(account_name, currency, granted, topped_up)

    def add_fault(self, fault: Fault | FaultKind | str, **params: Any) -> Fault:
        """Queue a fault: ``add_fault("status", status=503, path="/user/balance", times=2)``.
        Each request consumes at most one fault, the oldest that matches its path."""
        return self.fault_queue.add(fault, **params)

    def clear_faults(self) -> None:
        self.fault_queue.clear()

    @property
    def faults(self) -> list[Fault]:
        """Faults still pending."""
        return self.fault_queue.pending()

    def requests(self) -> list[RequestRecord]:
        """The request log (last 10 000 requests), oldest first; copies."""
        return self.ledger.requests()

    def stats(self) -> dict[str, AccountStats]:
        """Per-account counters since start (or :meth:`clear_requests`); copies."""
        return self.ledger.stats()

    def clear_requests(self) -> None:
        """Forget the request log, the counters and the prompt cache."""
        self.ledger.clear()

    def set_clock(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def served_models(self) -> list[str]:
        """The models ``GET /models`` lists and completions accept."""
        return self.settings.served_models()

    # ---- server lifecycle --------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        self._api.add_routes(app)
        if self.control:
            ControlApi(self.settings, self.ledger, self.fault_queue).add_routes(app)
        return app

    async def start(self, host: str | None = "127.0.0.1", port: int = 0) -> str:
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
        record = self.ledger.open_record(request.method, request.path)
        fault = self.fault_queue.take(request.path)
        if fault is not None:
            record.fault = str(fault.kind)
        request[RECORD] = record
        request[FAULT] = fault
        status: int | None = None
        try:
            if fault is not None and fault.kind == FaultKind.DELAY:
                await asyncio.sleep(fault.seconds)
            if fault is not None and fault.kind in REPLACING:
                # Counted for the key's account, if any, so stats match what a proxy saw.
                record.account = self.ledger.account_for(
                    presented_key(request, record.endpoint == "anthropic")
                )
                response = replacing_reply(request, fault, self.ledger)
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
                self.ledger.finish(record, 499, override=True)
            else:
                self.ledger.finish(record, status)

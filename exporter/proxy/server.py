"""The transparent metering proxy.

Apps point their ``base_url`` here and change nothing else. Every request goes to
``deepseek.base_url`` and nowhere else; bodies stream through untouched in both directions while
a copy of what metering needs (the model, the usage) is picked out on the side.

This module decides what happens to a request (refused, or forwarded with which key, as which
account) and counts what came of it; :mod:`exporter.proxy.http1` speaks HTTP to clients and
:mod:`exporter.proxy.relay` moves the bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.clock import Clock
from exporter.config import Config, Secret
from exporter.proxy.http1 import ClientConnection, Gate, ProxyListener, Request, SimpleResponse
from exporter.proxy.metering import Meter
from exporter.proxy.metrics import UNKNOWN_ACCOUNT, ProxyMetrics
from exporter.proxy.pricing import PriceTable
from exporter.proxy.relay import HOP_BY_HOP_BYTES, MAX_METERED_BODY, Exchange
from exporter.proxy.upstream import UpstreamPool
from exporter.proxy.usage import usage_from_json_body

log = logging.getLogger(__name__)

# Not forwarded either: the proxy sets the body's framing itself, and answers 100-continue.
_NOT_FORWARDED = HOP_BY_HOP_BYTES | {b"content-length", b"expect"}
_KEY_HEADERS = (b"authorization", b"x-api-key")
# A top-level-looking "model": "<name>" whose opening quote is not escaped (inside a JSON string
# every quote is). Scanning bytes keeps the request streaming instead of parsing it whole.
MODEL_RE = re.compile(rb'(?<!\\)"model"\s*:\s*"([^"\\]{1,128})"')
MODEL_SCAN_OVERLAP = 160
# Seconds a connection may sit idle, or take to send a complete request head, before the server
# closes it (both listeners). aiohttp's low-level server would wait 3630 s; 75 s is what its
# run_app and nginx use, and bounds what idle or slowloris clients can hold. The proxy listener
# reads exporter.proxy.http1.KEEPALIVE_TIMEOUT; this is the metrics listener's.
KEEPALIVE_TIMEOUT = 75.0


class CurrencySource(Protocol):
    """Where the proxy learns an account's currency when the config does not set it: the
    balance side, which knows what each balance reports."""

    def charging_currency(self, account: str) -> str | None: ...


_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    413: "Request Entity Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


def deepseek_error(status: int, message: str, error_type: str) -> SimpleResponse:
    """An error in DeepSeek's own shape, so SDKs raise their usual exception for it."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": error_type}}
    return SimpleResponse(status, _REASONS[status], json.dumps(body).encode())


BAD_TARGET = deepseek_error(
    400, "The proxy only forwards to its configured upstream", "invalid_request_error"
)
UNAUTHORIZED = deepseek_error(
    401, "Authentication Fails: unknown client token", "authentication_error"
)
TOO_LARGE = deepseek_error(413, "Request body too large", "invalid_request_error")
UPSTREAM_ERRORS = {
    "timeout": deepseek_error(504, "Upstream did not answer in time", "upstream_timeout"),
    "connect": deepseek_error(502, "Cannot reach the upstream API", "upstream_unreachable"),
    "reset": deepseek_error(502, "The upstream connection was reset", "upstream_reset"),
}


@dataclass(frozen=True, slots=True)
class Identity:
    account: str
    replacement_key: Secret | None = None  # set in key custody: the real key to send upstream


class KeyBook:
    """Maps presented keys to accounts by SHA-256 digests, compared in constant time."""

    def __init__(self, config: Config) -> None:
        self.custody = bool(config.proxy.clients)
        keys = {a.name: a.api_key for a in config.accounts}
        if self.custody:
            self.entries = [
                (c.token.fingerprint(), Identity(c.account, keys[c.account]))
                for c in config.proxy.clients
            ]
        else:
            self.entries = [(a.api_key.fingerprint(), Identity(a.name)) for a in config.accounts]
        # Keys already matched once, by their text: a dict lookup instead of a SHA-256 and a
        # comparison per configured key on every request. Only keys of the config get in (it
        # holds them anyway), so its size is bounded whatever clients send; str hashing is
        # keyed (SipHash), so lookup timing tells a client nothing about the keys.
        self._known: dict[str, Identity] = {}

    def identify(self, presented: str | None) -> Identity | None:
        """The identity for a key; None means refuse (custody) or count as unknown."""
        if not presented:
            return None
        found = self._known.get(presented)
        if found is not None:
            return found
        digest = Secret(presented).fingerprint()
        for fingerprint, identity in self.entries:  # no early exit: timing says nothing
            if hmac.compare_digest(fingerprint, digest):
                found = identity
        if found is not None:
            self._known[presented] = found
        return found


def presented_key(request: Request) -> tuple[str | None, bytes]:
    """The key the client sent and the header it came in."""
    auth = request.authorization
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip(), b"Authorization"
    api_key = request.api_key
    if api_key:
        return api_key.strip(), b"x-api-key"
    return None, b"Authorization"


class ModelSniffer:
    """Finds the request's model in a streamed body, holding only a small overlap between chunks."""

    __slots__ = ("_tail", "model")

    def __init__(self) -> None:
        self.model: bytes | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if self.model is not None:
            return
        data = self._tail + chunk
        match = MODEL_RE.search(data)
        if match:
            self.model = match.group(1)
        else:
            self._tail = data[-MODEL_SCAN_OVERLAP:]


class _Series:
    """The metric children of one (account, model): looked up once per request, not per
    chunk, and created once per pair."""

    __slots__ = ("codes", "duration", "labels", "metrics", "ttft")

    def __init__(self, metrics: ProxyMetrics, account: str, model: str) -> None:
        self.metrics = metrics
        self.labels = (account, model)
        self.duration = metrics.duration.labels(account, model)
        self.ttft = metrics.time_to_first_token.labels(account, model)
        self.codes: dict[int, Any] = {}

    def count(self, status: int) -> None:
        child = self.codes.get(status)
        if child is None:
            child = self.codes[status] = self.metrics.requests.labels(*self.labels, str(status))
        child.inc()


class Proxy:
    def __init__(
        self,
        config: Config,
        metrics: ProxyMetrics,
        prices: PriceTable,
        balances: CurrencySource,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.metrics = metrics
        self.balances = balances
        self.clock = clock
        self.gate: Gate | None = None
        self._pool: UpstreamPool | None = None
        self._series: dict[tuple[str, str], _Series] = {}
        self._in_flight: dict[str, Any] = {}
        self.reconfigure(config, prices)

    def reconfigure(self, config: Config, prices: PriceTable) -> None:
        old = getattr(self, "config", None)
        self.config = config
        self.prices = prices
        self.keys = KeyBook(config)
        self._currencies = {a.name: a.currency for a in config.accounts if a.currency}
        self.base_url = config.deepseek.base_url
        self.timeout = config.proxy.timeout
        self.max_body_bytes = config.proxy.max_body_bytes
        self.meter = Meter(self.metrics, prices, self.account_currency, self.clock)
        self.prime_costs()
        if self._pool is not None and (
            old is None
            or old.deepseek.base_url != config.deepseek.base_url
            or old.deepseek.timeout != config.deepseek.timeout
        ):
            self._pool.close()  # requests in flight finish on their connections
            self._pool = None

    def listener(
        self,
        gate: Gate | None = None,
        wrap: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None,
    ) -> ProxyListener:
        """The proxy listener (not yet listening); ``gate`` applies its web config, ``wrap``
        its TLS."""
        self.gate = gate
        return ProxyListener(self, wrap)

    async def open(self) -> None:
        self._get_pool()

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _get_pool(self) -> UpstreamPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = UpstreamPool(self.base_url, self.config.deepseek.timeout)
        return pool

    def account_currency(self, account: str) -> str | None:
        configured = self._currencies.get(account)
        if configured:
            return configured
        return self.balances.charging_currency(account)

    # -- a request arrives ------------------------------------------------------------------

    def dispatch(self, client: ClientConnection, request: Request) -> None:
        """Answer ``request`` (the http1 server calls this once per request, in order)."""
        gate = self.gate
        if gate is not None:
            verdict = gate.admit(request.proxy_authorization)
            if inspect.isawaitable(verdict):
                client.busy = True
                asyncio.get_running_loop().create_task(self._gated(client, request, verdict))
                return
            if verdict is not None:
                self._refuse_at_gate(client, request, verdict)
                return
        self._admit(client, request)

    async def _gated(self, client: ClientConnection, request: Request, verdict: Any) -> None:
        refusal = await verdict
        if client.closed:
            return
        if refusal is not None:
            self._refuse_at_gate(client, request, refusal)
        else:
            self._admit(client, request)

    def _refuse_at_gate(self, client: ClientConnection, request: Request, refusal: Any) -> None:
        status, reason, body, content_type, headers = refusal
        # The toolkit adds its headers to what the handler answers, auth refusals included,
        # but a rate-limited request is turned away before that.
        extra = [] if status == 429 or self.gate is None else self.gate.headers
        client.respond(request, SimpleResponse(status, reason, body, content_type, headers), extra)

    def _extra(self) -> list[tuple[bytes, bytes]]:
        return self.gate.headers if self.gate is not None else []

    def _admit(self, client: ClientConnection, request: Request) -> None:
        metrics = self.metrics
        if request.method == "CONNECT" or not request.target.startswith(b"/"):
            metrics.rejected.labels("bad_target").inc()
            client.respond(request, BAD_TARGET, self._extra())
            return
        key, key_header = presented_key(request)
        identity = self.keys.identify(key)
        if identity is None and self.keys.custody:
            metrics.rejected.labels("unauthorized").inc()
            client.respond(request, UNAUTHORIZED, self._extra())
            return
        account = identity.account if identity is not None else UNKNOWN_ACCOUNT
        length = request.content_length
        if (length is not None and length > self.max_body_bytes) or (
            request.body_size > self.max_body_bytes
        ):
            metrics.rejected.labels("body_too_large").inc()
            client.respond(request, TOO_LARGE, self._extra())
            return

        pool = self._get_pool()
        lines = [
            b"%s %s%s HTTP/1.1\r\nHost: %s\r\n"
            % (request.method.encode(), pool.prefix, request.target, pool.host_header)
        ]
        replacement = identity.replacement_key if identity is not None else None
        for lower, name, value in request.headers:
            if lower in _NOT_FORWARDED or (replacement is not None and lower in _KEY_HEADERS):
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if replacement is not None:
            real = replacement.reveal().encode()
            value = b"Bearer " + real if key_header == b"Authorization" else real
            lines.append(b"%s: %s\r\n" % (key_header, value))
        sniffer = ModelSniffer()
        body = b"".join(request.body)
        request.body = []
        if request.streamed and request.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif request.streamed:
            lines.append(b"Content-Length: %d\r\n" % (length or 0))
        elif body or length is not None or request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        if body:
            sniffer.feed(body)

        in_flight = self._in_flight.get(account)
        if in_flight is None:
            in_flight = self._in_flight[account] = metrics.in_flight.labels(account)
        in_flight.inc()
        exchange = Exchange(
            self,
            pool,
            client,
            request,
            b"".join(lines),
            body,
            account=account,
            sniffer=sniffer,
            timeout=self.timeout,
            max_body=self.max_body_bytes,
            extra_headers=self._extra(),
        )
        client.exchange = exchange
        exchange.start()

    def prime_costs(self) -> None:
        """Cost series at 0 for every configured account whose currency is known by now."""
        self.meter.prime(account.name for account in self.config.accounts)

    # -- what came of it (the exchange calls these) -----------------------------------------

    def _series_of(self, exchange: Exchange) -> _Series:
        series = exchange.series
        if series is None:
            if exchange.model is None:
                exchange.model = self.meter.label(exchange.request.path, exchange.sniffer.model)
            key = (exchange.account, exchange.model)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(self.metrics, *key)
            exchange.series = series
        return series

    def response_head(self, exchange: Exchange) -> None:
        self._series_of(exchange).count(exchange.status)

    def response_done(self, exchange: Exchange) -> None:
        series = self._series_of(exchange)
        series.duration.observe(time.perf_counter() - exchange.started)
        request = exchange.request
        if exchange.first_event is not None:
            series.ttft.observe(exchange.first_event - exchange.started)
        if 200 <= exchange.status < 300 and request.method == "POST":
            scanner = exchange.scanner
            if scanner is not None:
                usage = scanner.finish()
            else:
                body = b"".join(exchange.kept)
                usage = usage_from_json_body(_decoded(body, exchange.headers))
            self.meter.meter(exchange.account, exchange.model or "", request.path, usage)
        self._in_flight[exchange.account].dec()

    def aborted(self, exchange: Exchange, reason: str) -> None:
        series = self._series_of(exchange)
        self.metrics.stream_aborts.labels(exchange.account, exchange.model, reason).inc()
        if exchange.status:
            series.duration.observe(time.perf_counter() - exchange.started)
            if exchange.first_event is not None:  # the client got its first tokens
                series.ttft.observe(exchange.first_event - exchange.started)
            self._meter_cut_stream(exchange)
        self._in_flight[exchange.account].dec()

    def upstream_failed(self, exchange: Exchange, reason: str) -> None:
        self.metrics.upstream_errors.labels(exchange.account, reason).inc()
        if reason == "connect":
            log.warning("upstream connect failed: %s", self.base_url)
        self._in_flight[exchange.account].dec()
        exchange.client.respond(exchange.request, UPSTREAM_ERRORS[reason], exchange.extra_headers)

    def too_large(self, exchange: Exchange) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        self._in_flight[exchange.account].dec()
        exchange.client.respond(exchange.request, TOO_LARGE, exchange.extra_headers)

    def _meter_cut_stream(self, exchange: Exchange) -> None:
        """A stream cut short whose usage had already passed through was billed in full (a
        client may close as soon as the last event arrives): meter it. Without usage the cost
        is unknown, and only the abort is counted."""
        scanner = exchange.scanner
        request = exchange.request
        if scanner is None or not 200 <= exchange.status < 300 or request.method != "POST":
            return
        usage = scanner.finish()
        if usage is not None:
            self.meter.meter(exchange.account, exchange.model or "", request.path, usage)


def _decoded(body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The body as JSON text, for metering only: the client gets the bytes as they came."""
    encoding = next((v for n, v in headers if n.lower() == b"content-encoding"), b"").lower()
    if encoding in (b"gzip", b"deflate"):
        try:
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
            return inflater.decompress(body, MAX_METERED_BODY)
        except zlib.error:
            return b""
    return body

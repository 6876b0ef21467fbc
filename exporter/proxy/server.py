"""The transparent metering proxy.

Apps point their ``base_url`` here and change nothing else. Every request goes to
``deepseek.base_url`` and nowhere else; bodies stream through untouched in both directions while
a copy of what metering needs (the model, the usage) is picked out on the side.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from exporter.clock import Clock
from exporter.config import Config, Secret
from exporter.proxy.metering import Meter
from exporter.proxy.metrics import UNKNOWN_ACCOUNT, ProxyMetrics
from exporter.proxy.pricing import PriceTable
from exporter.proxy.usage import StreamUsageScanner, usage_from_json_body

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# A top-level-looking "model": "<name>" whose opening quote is not escaped (inside a JSON string
# every quote is). Scanning bytes keeps the request streaming instead of parsing it whole.
MODEL_RE = re.compile(rb'(?<!\\)"model"\s*:\s*"([^"\\]{1,128})"')
MODEL_SCAN_OVERLAP = 160
# Bodies up to this size arrive in one read anyway; forwarding them as one chunk is cheaper.
SMALL_BODY = 64 * 1024
# Non-streaming responses are kept (a copy) only up to this size to find their usage.
MAX_METERED_BODY = 4 * 1024 * 1024
# Seconds a connection may sit idle, or take to send a complete request head, before the server
# closes it (both listeners). aiohttp's low-level server would wait 3630 s; 75 s is what its
# run_app and nginx use, and bounds what idle or slowloris clients can hold.
KEEPALIVE_TIMEOUT = 75.0


Middleware = Callable[..., Awaitable[web.StreamResponse]]


class CurrencySource(Protocol):
    """Where the proxy learns an account's currency when the config does not set it: the
    balance side, which knows what each balance reports."""

    def charging_currency(self, account: str) -> str | None: ...


class BodyTooLarge(Exception):
    pass


def deepseek_error(status: int, message: str, error_type: str) -> web.Response:
    """An error in DeepSeek's own shape, so SDKs raise their usual exception for it."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": error_type}}
    return web.json_response(body, status=status)


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

    def identify(self, presented: str | None) -> Identity | None:
        """The identity for a key; None means refuse (custody) or count as unknown."""
        if not presented:
            return None
        digest = Secret(presented).fingerprint()
        found = None
        for fingerprint, identity in self.entries:  # no early exit: timing says nothing
            if hmac.compare_digest(fingerprint, digest):
                found = identity
        return found


def presented_key(headers: Mapping[str, str]) -> tuple[str | None, str]:
    """The key the client sent and the header it came in."""
    auth = headers.get("Authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip(), "Authorization"
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key.strip(), "x-api-key"
    return None, "Authorization"


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
        self._session: aiohttp.ClientSession | None = None
        self.reconfigure(config, prices)

    def reconfigure(self, config: Config, prices: PriceTable) -> None:
        self.config = config
        self.prices = prices
        self.keys = KeyBook(config)
        self.base_url = config.deepseek.base_url
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=config.deepseek.timeout, sock_read=config.proxy.timeout
        )
        self.meter = Meter(self.metrics, prices, self.account_currency, self.clock)
        self.prime_costs()

    def prime_costs(self) -> None:
        """Cost series at 0 for every configured account whose currency is known by now."""
        self.meter.prime(account.name for account in self.config.accounts)

    def make_server(self, middlewares: Sequence[Middleware] = ()) -> web.Server:
        """A low-level server: no router, so every method and target (CONNECT, absolute URLs)
        reaches :meth:`handle` to be refused in DeepSeek's error shape, and nothing is spent on
        routing the hot path."""
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] = self.handle
        for middleware in reversed(middlewares):
            handler = functools.partial(middleware, handler=handler)
        # handler_cancellation: a client that goes away cancels its handler, and so the upstream.
        return web.Server(
            handler,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )

    async def open(self) -> None:
        # limit=0: concurrency is the upstream's to limit (it answers 429), not ours.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def account_currency(self, account: str) -> str | None:
        configured = self.config.account(account)
        if configured is not None and configured.currency:
            return configured.currency
        return self.balances.charging_currency(account)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "CONNECT" or not request.raw_path.startswith("/"):
            self.metrics.rejected.labels("bad_target").inc()
            return deepseek_error(
                400, "The proxy only forwards to its configured upstream", "invalid_request_error"
            )
        key, key_header = presented_key(request.headers)
        identity = self.keys.identify(key)
        if identity is None and self.keys.custody:
            self.metrics.rejected.labels("unauthorized").inc()
            return deepseek_error(
                401, "Authentication Fails: unknown client token", "authentication_error"
            )
        account = identity.account if identity is not None else UNKNOWN_ACCOUNT
        length = request.content_length
        if length is not None and length > self.config.proxy.max_body_bytes:
            return self._too_large()

        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        if identity is not None and identity.replacement_key is not None:
            headers.popall("Authorization", None)
            headers.popall("x-api-key", None)
            real = identity.replacement_key.reveal()
            headers[key_header] = f"Bearer {real}" if key_header == "Authorization" else real

        sniffer = ModelSniffer()
        body: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            if length is not None and length <= SMALL_BODY:
                body = await request.read()
                sniffer.feed(body)
            else:
                body = self._stream_body(request, sniffer)

        in_flight = self.metrics.in_flight.labels(account)
        in_flight.inc()
        try:
            return await self._forward(request, headers, body, account, sniffer)
        finally:
            in_flight.dec()

    def _too_large(self) -> web.Response:
        self.metrics.rejected.labels("body_too_large").inc()
        return deepseek_error(413, "Request body too large", "invalid_request_error")

    async def _stream_body(
        self, request: web.BaseRequest, sniffer: ModelSniffer
    ) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > self.config.proxy.max_body_bytes:
                raise BodyTooLarge
            sniffer.feed(chunk)
            yield chunk

    async def _forward(
        self,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
        account: str,
        sniffer: ModelSniffer,
    ) -> web.StreamResponse:
        if self._session is None:
            await self.open()
        assert self._session is not None
        started = time.perf_counter()
        metrics = self.metrics
        try:
            upstream = await self._session.request(
                request.method,
                self.base_url + request.raw_path,
                headers=headers,
                data=body,
                allow_redirects=False,
                # Forward what the client sent, not aiohttp's defaults.
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                timeout=self.timeout,
            )
        except asyncio.CancelledError:
            # The client went away before the upstream answered (while still sending its body,
            # or waiting for the response head) and aiohttp cancelled us: an abort all the same.
            model = self.meter.label(request.path, sniffer.model)
            metrics.stream_aborts.labels(account, model, "client_disconnect").inc()
            raise
        except BodyTooLarge:
            return self._too_large()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            metrics.upstream_errors.labels(account, "timeout").inc()
            return deepseek_error(504, "Upstream did not answer in time", "upstream_timeout")
        except aiohttp.ClientConnectorError as err:
            metrics.upstream_errors.labels(account, "connect").inc()
            log.warning("upstream connect failed: %s", type(err).__name__)
            return deepseek_error(502, "Cannot reach the upstream API", "upstream_unreachable")
        except aiohttp.ClientError as err:
            if isinstance(err.__cause__, BodyTooLarge) or isinstance(err.__context__, BodyTooLarge):
                return self._too_large()
            metrics.upstream_errors.labels(account, "reset").inc()
            return deepseek_error(502, "The upstream connection was reset", "upstream_reset")

        model = self.meter.label(request.path, sniffer.model)
        try:
            return await self._relay(request, upstream, account, model, started)
        finally:
            # Back to the pool when read to the end; closed (cancelling upstream) otherwise.
            upstream.release()

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        account: str,
        model: str,
        started: float,
    ) -> web.StreamResponse:
        metrics = self.metrics
        status = upstream.status
        metrics.requests.labels(account, model, str(status)).inc()
        response_headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
        )
        response = web.StreamResponse(
            status=status, reason=upstream.reason, headers=response_headers
        )
        content_type = upstream.headers.get("Content-Type", "")
        streaming = content_type.startswith("text/event-stream")
        scanner = StreamUsageScanner() if streaming else None
        kept: list[bytes] = []
        kept_size = 0
        first_event: float | None = None
        abort: str | None = None
        try:
            await response.prepare(request)
            while True:
                try:
                    chunk = await upstream.content.readany()
                except (aiohttp.ClientError, TimeoutError):
                    abort = "upstream_disconnect"
                    break
                if not chunk:
                    break
                if scanner is not None:
                    if first_event is None and b"data:" in chunk:
                        # Observed now: a client that leaves after its tokens still got them.
                        first_event = time.perf_counter()
                        metrics.time_to_first_token.labels(account, model).observe(
                            first_event - started
                        )
                    scanner.feed(chunk)
                elif kept_size < MAX_METERED_BODY:
                    kept.append(chunk)
                    kept_size += len(chunk)
                await response.write(chunk)
            if abort is None:
                await response.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            abort = "client_disconnect"
        except asyncio.CancelledError:
            # The client went away and aiohttp cancelled us; leaving the context closes upstream.
            metrics.stream_aborts.labels(account, model, "client_disconnect").inc()
            self._meter_cut_stream(request, status, scanner, account, model)
            raise
        finally:
            metrics.duration.labels(account, model).observe(time.perf_counter() - started)

        if abort is not None:
            metrics.stream_aborts.labels(account, model, abort).inc()
            self._meter_cut_stream(request, status, scanner, account, model)
            if abort == "upstream_disconnect" and request.transport is not None:
                # Headers are out; cutting the connection is the only way to tell the client.
                request.transport.abort()
            return response
        if 200 <= status < 300 and request.method == "POST":
            if scanner is not None:
                usage = scanner.finish()
            else:
                usage = usage_from_json_body(_decoded(b"".join(kept), upstream.headers))
            self.meter.meter(account, model, request.path, usage)
        return response

    def _meter_cut_stream(
        self,
        request: web.BaseRequest,
        status: int,
        scanner: StreamUsageScanner | None,
        account: str,
        model: str,
    ) -> None:
        """A stream cut short whose usage had already passed through was billed in full (a
        client may close as soon as the last event arrives): meter it. Without usage the cost
        is unknown, and only the abort is counted."""
        if scanner is None or not 200 <= status < 300 or request.method != "POST":
            return
        usage = scanner.finish()
        if usage is not None:
            self.meter.meter(account, model, request.path, usage)


def _decoded(body: bytes, headers: Mapping[str, str]) -> bytes:
    """The body as JSON text, for metering only: the client gets the bytes as they came."""
    encoding = headers.get("Content-Encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
            return inflater.decompress(body, MAX_METERED_BODY)
        except zlib.error:
            return b""
    return body

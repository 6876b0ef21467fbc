"""One request's way to the upstream and its response's way back: the proxy's hot path.

An :class:`Exchange` sends the request over a pooled :class:`UpstreamConnection` and relays the
response with asyncio transport callbacks, no stream reader, no writer and no task between them:
each piece the upstream sends is written to the client as it came, chunked framing included
(``Transfer-Encoding`` is hop-by-hop, but the framing of a response forwarded whole to an
HTTP/1.1 client may stay as it is: re-framing it would cost a copy of every chunk). llhttp
(``httptools``) parses the same bytes alongside, to know where the response ends and to hand
the decoded payload to metering: the SSE usage scanner, or a bounded copy of a JSON body.

Back-pressure is the transports' own: a client that reads slowly pauses reading from the
upstream until its buffer drains, and the other way round for request bodies.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httptools

from exporter.proxy.upstream import UpstreamConnection, UpstreamError, UpstreamPool
from exporter.proxy.usage import StreamUsageScanner

if TYPE_CHECKING:
    from exporter.proxy.http1 import ClientConnection, Request

# Non-streaming responses are kept (a copy) only up to this size to find their usage.
MAX_METERED_BODY = 4 * 1024 * 1024

HOP_BY_HOP_BYTES = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

# Stages of an exchange.
CONNECTING, SENT, RAW, DECODED, DONE = range(5)


class Exchange:
    """One request forwarded and its response relayed. ``owner`` (the proxy) is told about
    the response head, the end and every way it can go wrong, and does the counting."""

    __slots__ = (
        "account",
        "chunked_body",
        "client",
        "client_paused_by_upstream",
        "client_transport",
        "close_after",
        "complete",
        "early",
        "extra_headers",
        "first_event",
        "head_bytes",
        "head_done",
        "headers",
        "kept",
        "kept_size",
        "last_read",
        "loop",
        "max_body",
        "model",
        "outgoing",
        "owner",
        "parser",
        "pool",
        "reason",
        "rechunk",
        "request",
        "reusable",
        "scanner",
        "series",
        "sniffer",
        "stage",
        "started",
        "status",
        "task",
        "timeout",
        "timer",
        "upstream",
    )

    def __init__(
        self,
        owner: Any,
        pool: UpstreamPool,
        client: ClientConnection,
        request: Request,
        head: bytes,
        body: bytes,
        *,
        account: str,
        sniffer: Any,
        timeout: float,
        max_body: int,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.owner = owner
        self.pool = pool
        self.client = client
        self.client_transport = client.transport
        self.request = request
        self.loop = client.loop
        self.account = account
        self.sniffer = sniffer
        self.timeout = timeout
        self.max_body = max_body
        self.extra_headers = extra_headers
        self.started = time.perf_counter()
        self.stage = CONNECTING
        self.upstream: UpstreamConnection | None = None
        self.parser: Any = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_read = 0.0
        # What goes upstream before anything else: the head, and the body as far as it came.
        self.chunked_body = request.streamed and request.chunked
        self.outgoing = [head, self._frame(body)] if body else [head]
        # The response.
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.early: list[bytes] = []  # decoded payload that came with the head
        self.head_bytes: list[bytes] = []
        self.scanner: StreamUsageScanner | None = None
        self.kept: list[bytes] = []
        self.kept_size = 0
        self.first_event: float | None = None
        self.reusable = True
        self.close_after = False
        self.rechunk = False  # a body whose end is the upstream's close, chunked for the client
        self.model: str | None = None  # the metric label, once known
        self.series: Any = None
        self.client_paused_by_upstream = False

    def _frame(self, body: bytes) -> bytes:
        if self.chunked_body and body:
            return b"%x\r\n%s\r\n" % (len(body), body)
        return body

    # -- sending ----------------------------------------------------------------------------

    def start(self) -> None:
        connection = self.pool.take_idle()
        if connection is not None:
            self._attach(connection)
        else:
            self.task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            connection = await self.pool.connect()
        except UpstreamError as err:
            self.task = None
            if self.stage is not DONE:
                self._fail(err.reason)
            return
        self.task = None
        if self.stage is DONE:  # the client went away meanwhile
            self.pool.release(connection)
            return
        self._attach(connection)

    def _attach(self, connection: UpstreamConnection) -> None:
        self.upstream = connection
        connection.exchange = self
        self.parser = httptools.HttpResponseParser(self)
        self.stage = SENT
        transport = connection.transport
        assert transport is not None
        request = self.request
        if request.complete and self.chunked_body:
            self.outgoing.append(b"0\r\n\r\n")
        transport.write(b"".join(self.outgoing))
        self.outgoing = []
        if request.complete:
            self._sent()

    def _sent(self) -> None:
        """The whole request is out: the response has ``timeout`` seconds between reads."""
        self.last_read = self.loop.time()
        self.timer = self.loop.call_at(self.last_read + self.timeout, self._on_timer)

    def request_body(self, body: bytes) -> None:
        """A piece of a streamed request body from the client."""
        if self.stage is DONE:
            return
        if self.request.body_size > self.max_body:
            self._too_large()
            return
        self.sniffer.feed(body)
        framed = self._frame(body)
        if self.upstream is None:
            self.outgoing.append(framed)
        elif self.upstream.transport is not None:
            self.upstream.transport.write(framed)

    def request_complete(self) -> None:
        if self.stage is DONE or self.upstream is None or self.upstream.transport is None:
            return  # still connecting: _attach sends the end
        if self.chunked_body:
            self.upstream.transport.write(b"0\r\n\r\n")
        if self.stage is SENT and self.timer is None:
            self._sent()

    # -- receiving --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the upstream."""
        self.last_read = self.loop.time()
        stage = self.stage
        if stage is RAW or stage is DECODED:
            if stage is RAW:  # as it came; DECODED writes from on_body
                self.client_transport.write(data)  # type: ignore[union-attr]
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self._cut("upstream_disconnect")
                return
            if self.complete:
                self._complete()
            return
        if stage is not SENT:
            return
        self.head_bytes.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.head_done:
                self._cut("upstream_disconnect")
            else:
                self._fail("reset")
            return
        if self.head_done:
            self._respond()

    # llhttp's callbacks, during feed_data.

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        scanner = self.scanner
        if scanner is not None:
            if self.first_event is None and b"data:" in body:
                self.first_event = time.perf_counter()
            scanner.feed(body)
        elif self.kept_size < MAX_METERED_BODY:
            self.kept.append(body)
            self.kept_size += len(body)
        stage = self.stage
        if stage is DECODED:
            if self.rechunk:
                body = b"%x\r\n%s\r\n" % (len(body), body)
            self.client_transport.write(body)  # type: ignore[union-attr]
        elif stage is SENT:
            self.early.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        # Asked now: once feed_data returns, llhttp has reset for the next message.
        self.reusable = self.reusable and self.parser.should_keep_alive()

    def _respond(self) -> None:
        """The response head is in: send the client its head (and what body came with it)."""
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints): the real one follows
            self._fail("reset")
            return
        self.status = status
        request = self.request
        chunked = False
        length: bytes | None = None
        content_type = b""
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason)]
        seen: set[bytes] = set()
        for name, value in self.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP_BYTES or lower in _FRAMING:
                if lower == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lower == b"content-length":
                    length = value
                continue
            if lower == b"content-type":
                content_type = value
            seen.add(lower)
            lines.append(b"%s: %s\r\n" % (name, value))
        for name, value in self.extra_headers:
            if name.lower() not in seen:
                lines.append(b"%s: %s\r\n" % (name, value))
        if content_type.startswith(b"text/event-stream"):
            self.scanner = StreamUsageScanner()
            for piece in self.early:  # what came with the head, before we knew
                self.on_body_scan(piece)
        no_body = request.method == "HEAD" or status in (204, 304)
        if request.method == "HEAD":
            self.reusable = False  # llhttp cannot be told that no body follows
        raw = request.http11 and not no_body and (chunked or length is not None)
        if no_body:
            if length is not None:
                lines.append(b"Content-Length: %s\r\n" % length)
        elif chunked and raw:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"Content-Length: %s\r\n" % length)
        elif request.http11:
            # The upstream ends the body by closing: chunked, so that a client can tell that
            # end from a connection cut short.
            self.rechunk = True
            self.reusable = False
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.close_after = True  # the end of the body is the end of the connection
        client = self.client
        if not request.keep_alive or client.listener.closing:
            self.close_after = True
        if self.close_after:
            lines.append(b"Connection: close\r\n")
        elif not request.http11:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.owner.response_head(self)
        if self.stage is DONE:
            return
        if raw:
            whole = b"".join(self.head_bytes)
            end = whole.find(b"\r\n\r\n")
            lines.append(whole[end + 4 :] if end >= 0 else b"")
            self.stage = RAW
        elif not no_body:
            if self.rechunk:
                lines.extend(b"%x\r\n%s\r\n" % (len(p), p) for p in self.early if p)
            else:
                lines.extend(self.early)
            self.stage = DECODED
        self.head_bytes = []
        self.early = []
        self.client_transport.write(b"".join(lines))  # type: ignore[union-attr]
        if no_body or self.complete:
            self._complete()

    def on_body_scan(self, body: bytes) -> None:
        scanner = self.scanner
        assert scanner is not None
        if self.first_event is None and b"data:" in body:
            self.first_event = time.perf_counter()
        scanner.feed(body)
        self.kept.clear()
        self.kept_size = 0

    # -- the end, and every way there ---------------------------------------------------------

    def _stop(self) -> None:
        self.stage = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.client_paused_by_upstream and not self.client.closed:
            # Ended while the upstream was not taking the request body as fast as the client
            # sent it: the client's connection must read again for its next request.
            self.upstream_resumed()

    def _complete(self) -> None:
        self._stop()
        if self.rechunk and self.client_transport is not None:
            self.client_transport.write(b"0\r\n\r\n")
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if self.reusable and self.complete:
                self.pool.release(upstream)
            else:
                self.pool.discard(upstream)
        self.owner.response_done(self)
        self.client.finished(self.request, close=self.close_after)

    def _drop_upstream(self) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            self.pool.discard(upstream)
        if self.task is not None:
            self.task.cancel()
            self.task = None

    def _fail(self, reason: str) -> None:
        """No response head came (or none that makes sense): 502 or 504 to the client."""
        self._stop()
        self._drop_upstream()
        self.owner.upstream_failed(self, reason)

    def _cut(self, reason: str) -> None:
        """The response broke off after its head went out: only cutting the connection tells
        the client."""
        self._stop()
        self._drop_upstream()
        self.owner.aborted(self, reason)
        if self.client_transport is not None:
            self.client_transport.abort()

    def _too_large(self) -> None:
        if self.stage in (RAW, DECODED):
            self._cut("client_disconnect")
            return
        self._stop()
        self._drop_upstream()
        self.owner.too_large(self)

    def _on_timer(self) -> None:
        self.timer = None
        if self.stage is DONE:
            return
        deadline = self.last_read + self.timeout
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
        elif self.stage is SENT:
            self._fail("timeout")
        else:
            self._cut("upstream_disconnect")

    def upstream_lost(self) -> None:
        if self.stage is DONE:
            return
        if self.stage is DECODED and not self.complete:
            length_known = any(n.lower() in _FRAMING for n, _ in self.headers)
            if not length_known:  # a body that ends with the connection has ended
                self.reusable = False
                self._complete()
                return
        if self.stage is SENT:
            self._fail("reset")
        else:
            self._cut("upstream_disconnect")

    def client_lost(self) -> None:
        if self.stage is DONE:
            return
        self._stop()
        self._drop_upstream()
        self.owner.aborted(self, "client_disconnect")

    def client_broke(self) -> None:
        """The client sent something malformed in the middle of a streamed body."""
        self.client_lost()

    # -- back-pressure ----------------------------------------------------------------------

    def client_paused(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def client_resumed(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.resume_reading()

    def upstream_paused(self) -> None:
        if self.client_transport is not None:
            self.client_paused_by_upstream = True
            self.client_transport.pause_reading()

    def upstream_resumed(self) -> None:
        self.client_paused_by_upstream = False
        if self.client_transport is not None and not self.client.queue:
            self.client_transport.resume_reading()

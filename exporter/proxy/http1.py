"""The proxy listener's HTTP/1.1 server: one :class:`ClientConnection` per client connection,
requests parsed by llhttp (``httptools``), responses written straight to the transport.

Why not aiohttp's server here (the metrics listener keeps it): on the proxy's hot path its
request and response objects, stream writer and handler task cost about twice what the whole
relay costs; see docs/benchmarks.md. What it did for us is done here, with the same limits:

- a request line or header field over 8190 bytes, more than 128 header fields, or a head over
  64 KiB in all: 400, logged as one line without the bytes (they may hold a key);
- a connection idle, or sending an incomplete head, for ``KEEPALIVE_TIMEOUT`` is closed;
- requests on one connection are answered in order (pipelining), one at a time;
- a request refused before its body was read gets its answer, then the rest of its body is
  read and dropped for up to ``LINGER_TIMEOUT`` before closing, so that the client sees the
  answer rather than a reset;
- ``Expect: 100-continue`` is answered here, not forwarded;
- back-pressure both ways: a client that reads slowly pauses the upstream, an upstream that
  reads slowly pauses the client (the transports' high-water marks).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

# Seconds a connection may sit idle, or take to send a complete request head, before it is
# closed. 75 s is what nginx and aiohttp's run_app use: it bounds what idle or slowloris
# clients can hold. Read at run time (tests shorten it).
KEEPALIVE_TIMEOUT = 75.0
# Seconds a refused request's remaining body is read and dropped before the connection closes.
LINGER_TIMEOUT = 5.0
MAX_LINE = 8190
MAX_HEADERS = 128
MAX_HEAD = 64 * 1024


class Gate(Protocol):
    """The listener's web config (rate limit, basic auth in ``Proxy-Authorization``, extra
    response headers), as the top level wires it in; the proxy knows only this interface."""

    headers: list[tuple[bytes, bytes]]  # added to every response that lacks them

    def admit(self, proxy_authorization: str | None) -> SimpleResponse | Any | None:
        """None to let the request through, a refusal, or an awaitable of either."""
        ...


@dataclass(slots=True)
class SimpleResponse:
    """A response the proxy makes itself (errors, refusals)."""

    status: int
    reason: str
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True, eq=False)
class Request:
    """One parsed request head (and, for small bodies, the whole body)."""

    method: str
    target: bytes  # as sent: path and query
    path: str  # percent-decoded, without the query
    http11: bool
    keep_alive: bool
    headers: list[tuple[bytes, bytes, bytes]]  # (lower-case name, name, value)
    content_length: int | None
    chunked: bool
    authorization: str | None = None
    api_key: str | None = None
    proxy_authorization: str | None = None
    expect_continue: bool = False
    body: list[bytes] = field(default_factory=list)
    body_size: int = 0
    complete: bool = False  # the whole body has arrived
    streamed: bool = False  # the body is forwarded as it arrives

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class Exchange(Protocol):
    """What a connection tells the exchange answering its request (exporter.proxy.relay)."""

    request: Request

    def request_body(self, body: bytes) -> None: ...
    def request_complete(self) -> None: ...
    def client_lost(self) -> None: ...
    def client_broke(self) -> None: ...
    def client_paused(self) -> None: ...
    def client_resumed(self) -> None: ...


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that breaks a limit."""


class Handler(Protocol):
    def dispatch(self, connection: ClientConnection, request: Request) -> None: ...


_DATE: list[Any] = [0, b""]


def http_date(loop: asyncio.AbstractEventLoop) -> bytes:
    """The ``Date`` header's value, formatted at most once a second."""
    now = int(loop.time())
    if _DATE[0] != now:
        _DATE[0], _DATE[1] = now, formatdate(usegmt=True).encode()
    return _DATE[1]


def simple_response(
    response: SimpleResponse,
    loop: asyncio.AbstractEventLoop,
    close: bool,
    extra: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
        % (
            response.status,
            response.reason.encode(),
            response.content_type,
            len(response.body),
            http_date(loop),
        )
    ]
    for name, value in response.headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    for name, value in extra:
        lines.append(b"%s: %s\r\n" % (name, value))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(response.body)
    return b"".join(lines)


BAD_REQUEST = SimpleResponse(
    400,
    "Bad Request",
    b'{"error":{"message":"Malformed HTTP request","type":"invalid_request_error",'
    b'"param":null,"code":"invalid_request_error"}}',
)


class ClientConnection(asyncio.Protocol):
    """One client connection to the proxy listener."""

    def __init__(self, handler: Handler, listener: ProxyListener) -> None:
        self.handler = handler
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.exchange: Exchange | None = None  # the request being answered
        self.queue: deque[Request] = deque()  # complete requests waiting their turn
        self.incoming: Request | None = None  # the request being parsed
        self.busy = False  # a request is being answered (or waits for the listener's gate)
        self.closed = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes, bytes]] = []
        self._head_size = 0
        self._to_dispatch: Request | None = None
        self._discarding: Request | None = None  # a refused request whose body is dropped
        self._idle_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchange = self.exchange
        if exchange is not None:
            exchange.client_lost()
        self.queue.clear()

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client_paused()

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client_resumed()

    def data_received(self, data: bytes) -> None:
        if self._head_size >= 0:  # inside a head: count its bytes
            self._head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._malformed("upgrade requested")
            return
        except httptools.HttpParserError as err:
            refused = err.__context__
            self._malformed(str(refused) if isinstance(refused, _Refused) else type(err).__name__)
            return
        if self._head_size > MAX_HEAD:
            self._malformed("request head too large")
            return
        request, self._to_dispatch = self._to_dispatch, None
        if request is not None:
            self._start(request)

    def eof_received(self) -> bool:
        return False  # half-closed clients are closed: nothing can be answered

    def close(self) -> None:
        """Close now if idle, else after the response in progress (graceful shutdown)."""
        if not self.busy and not self.queue and self.transport is not None:
            self.transport.close()

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        if self._head_size < 0:
            self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        if sum(map(len, self._url)) > MAX_LINE:
            raise _Refused("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(name) + len(value) > MAX_LINE:
            raise _Refused("header field too long")
        if len(headers) >= MAX_HEADERS:
            raise _Refused("too many header fields")
        headers.append((name.lower(), name, value))

    def on_headers_complete(self) -> None:
        self._head_size = -1
        self._idle_since = None
        parser = self.parser
        target = b"".join(self._url)
        path = target.split(b"?", 1)[0].decode("latin-1")
        request = Request(
            method=parser.get_method().decode(),
            target=target,
            path=unquote(path) if "%" in path else path,
            http11=parser.get_http_version() == "1.1",
            keep_alive=parser.should_keep_alive(),
            headers=self._headers,
            content_length=None,
            chunked=False,
        )
        for lname, _, value in self._headers:
            if lname == b"content-length":
                request.content_length = int(value)  # llhttp has checked it
            elif lname == b"transfer-encoding":
                request.chunked = b"chunked" in value.lower()
            elif lname == b"authorization":
                request.authorization = value.decode("latin-1")
            elif lname == b"x-api-key":
                request.api_key = value.decode("latin-1")
            elif lname == b"proxy-authorization":
                request.proxy_authorization = value.decode("latin-1")
            elif lname == b"expect":
                request.expect_continue = value.lower() == b"100-continue"
        self.incoming = request
        small = request.content_length is not None and request.content_length <= 64 * 1024
        if not request.has_body or small:
            return  # dispatched when complete
        request.streamed = True
        self._queue_or_dispatch(request)

    def on_body(self, body: bytes) -> None:
        request = self.incoming
        if request is None or request is self._discarding:
            return
        request.body_size += len(body)
        exchange = self.exchange
        if exchange is not None and exchange.request is request:
            exchange.request_body(body)  # streamed on as it arrives
        else:
            request.body.append(body)  # small, or not dispatched yet

    def on_message_complete(self) -> None:
        request = self.incoming
        self.incoming = None
        self._head_size = 0
        if request is None:
            return
        request.complete = True
        if request is self._discarding:
            self._discarding = None
            if self.transport is not None:
                self.transport.close()
            return
        if request.streamed:
            if request is self._active_request():
                assert self.exchange is not None
                self.exchange.request_complete()
            return
        self._queue_or_dispatch(request)

    # -- requests and responses -------------------------------------------------------------

    def _active_request(self) -> Request | None:
        exchange = self.exchange
        return exchange.request if exchange is not None else None

    def _queue_or_dispatch(self, request: Request) -> None:
        if not self.busy and not self.queue and self._to_dispatch is None:
            # After the parser returns: a request whose later bytes are malformed is refused
            # before anything of it is forwarded.
            self._to_dispatch = request
        else:
            self.queue.append(request)
            if self.transport is not None:
                self.transport.pause_reading()  # one request ahead is enough

    def _start(self, request: Request) -> None:
        if self.closed:
            return
        self.busy = True
        if request.expect_continue and not request.complete and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.handler.dispatch(self, request)

    def respond(self, request: Request, response: SimpleResponse, extra=()) -> None:  # type: ignore[no-untyped-def]
        """Answer ``request`` with a response of the proxy's own, then go on."""
        transport = self.transport
        if transport is None or self.closed:
            return
        unread = request.has_body and not request.complete
        close = unread or not request.keep_alive or self.listener.closing
        transport.write(simple_response(response, self.loop, close, extra))
        self.finished(request, close=close, unread=unread)

    def finished(self, request: Request, *, close: bool, unread: bool = False) -> None:
        """The response to ``request`` is out: next request, idle, lingering or closed."""
        self.exchange = None
        self.busy = False
        transport = self.transport
        if transport is None or self.closed:
            return
        if unread:
            # Keep reading (and dropping) the body so that the client reads the answer.
            self._discarding = request
            request.streamed = False
            request.body.clear()
            self._timer_at(self.loop.time() + LINGER_TIMEOUT)
            transport.resume_reading()
            return
        if close or self.listener.closing:
            transport.close()
            return
        if self.queue:
            next_request = self.queue.popleft()
            if not self.queue:
                transport.resume_reading()
            self.loop.call_soon(self._start, next_request)
            return
        self._idle()

    # -- malformed requests -----------------------------------------------------------------

    def _malformed(self, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.warning("malformed HTTP request from %s: %s", peer[0] if peer else "?", reason)
        exchange = self.exchange
        transport = self.transport
        if transport is None or self.closed:
            return
        if exchange is not None:
            exchange.client_broke()
        elif not self.busy and not self.queue:
            transport.write(simple_response(BAD_REQUEST, self.loop, True))
        self.queue.clear()
        self._to_dispatch = None
        transport.close()

    # -- timeouts ---------------------------------------------------------------------------

    def _idle(self) -> None:
        self._idle_since = self.loop.time()
        self._head_size = 0
        if self._timer is None:
            self._timer_at(self._idle_since + KEEPALIVE_TIMEOUT)

    def _timer_at(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or self.closed:
            return
        if self._discarding is not None:
            transport.close()
            return
        if self._idle_since is None:
            return  # a request is being answered; idle starts again after it
        deadline = self._idle_since + KEEPALIVE_TIMEOUT
        if self.loop.time() >= deadline:
            transport.close()
        else:
            self._timer_at(deadline)


class ProxyListener:
    """The sockets of the proxy listener and every connection they accepted."""

    def __init__(
        self,
        handler: Handler,
        wrap: Callable[[Callable[[], asyncio.BaseProtocol]], Callable[[], asyncio.BaseProtocol]]
        | None = None,
    ) -> None:
        self.handler = handler
        self.connections: set[ClientConnection] = set()
        self.closing = False
        self._wrap = wrap
        self._server: asyncio.Server | None = None

    def protocol(self) -> ClientConnection:
        return ClientConnection(self.handler, self)

    async def start(
        self, host: str | None, port: int, *, reuse_port: bool = False, backlog: int = 1024
    ) -> int:
        """Listen; the port listened on (``port`` may be 0)."""
        factory: Callable[[], asyncio.BaseProtocol] = self.protocol
        if self._wrap is not None:
            factory = self._wrap(factory)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, host, port, backlog=backlog, reuse_address=True, reuse_port=reuse_port
        )
        return self._server.sockets[0].getsockname()[1]

    @property
    def active(self) -> int:
        return sum(1 for c in self.connections if c.busy or c.queue)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let requests in progress finish for up to ``timeout`` seconds (idle
        connections close at once, busy ones after their response); then cut the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
            for connection in list(self.connections):
                connection.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run

"""Keep-alive connections to the upstream (``deepseek.base_url``), pooled: an
:class:`~exporter.proxy.relay.Exchange` takes one, sends its request on it and gives it back
once the response has been read to its end (or drops it when it cannot be reused)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol
from urllib.parse import urlsplit

# Idle upstream connections are closed after this many seconds.
UPSTREAM_KEEPALIVE = 30.0


class Exchange(Protocol):
    """What a connection tells the exchange using it (exporter.proxy.relay.Exchange)."""

    def feed(self, data: bytes) -> None: ...
    def upstream_lost(self) -> None: ...
    def upstream_paused(self) -> None: ...
    def upstream_resumed(self) -> None: ...


class UpstreamError(Exception):
    """No usable answer from the upstream; ``reason`` is a deepseek_upstream_errors reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; its bytes go to the exchange using it."""

    __slots__ = ("exchange", "idle_since", "loop", "lost", "pool", "transport")

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.feed(data)
        elif self.transport is not None:
            self.transport.abort()  # bytes nobody asked for: not reusable

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        exchange = self.exchange
        if exchange is not None:
            exchange.upstream_lost()
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.upstream_paused()

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.upstream_resumed()


class UpstreamPool:
    """Keep-alive connections to one upstream (``deepseek.base_url``); a reload with another
    URL builds another pool."""

    def __init__(self, base_url: str, connect_timeout: float) -> None:
        url = urlsplit(base_url)
        https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if https else 80)
        self.prefix = url.path.rstrip("/").encode()
        netloc = url.netloc.rsplit("@", 1)[-1]
        self.host_header = netloc.encode("idna") if not netloc.isascii() else netloc.encode()
        self.ssl = ssl.create_default_context() if https else None
        self.connect_timeout = connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if not connection.lost and transport is not None and not transport.is_closing():
                return connection
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamError("timeout") from None
        except (OSError, ssl.SSLError, ssl.CertificateError):
            raise UpstreamError("connect") from None
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        connection.exchange = None
        transport = connection.transport
        if self.closed or connection.lost or transport is None or transport.is_closing():
            if transport is not None:
                transport.close()
            return
        # Its exchange may have ended with reading paused: the last bytes' write to a slow
        # client crossed the client's high-water mark after they were read. Left paused, the
        # next request's response would never be read.
        transport.resume_reading()
        loop = connection.loop
        connection.idle_since = loop.time()
        self.idle.append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(UPSTREAM_KEEPALIVE / 3, self._sweep)

    def discard(self, connection: UpstreamConnection) -> None:
        connection.exchange = None
        if connection.transport is not None:
            connection.transport.abort()

    def forget(self, connection: UpstreamConnection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - UPSTREAM_KEEPALIVE
        keep = []
        for connection in self.idle:
            if connection.idle_since < oldest and connection.transport is not None:
                connection.transport.close()
            else:
                keep.append(connection)
        self.idle[:] = keep
        if keep:
            self._sweeper = loop.call_later(UPSTREAM_KEEPALIVE / 3, self._sweep)

    def close(self) -> None:
        """Close the idle connections; busy ones close when their exchange ends."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()

"""One listener's web config, kept current, and the TLS site that uses it per connection.

The toolkit reads its web config file on every request and its TLS settings and certificate
files on every new connection, so a certificate renewed on disk (cert-manager, Let's Encrypt)
is served without a restart. :class:`LiveWebConfig` does the same without re-reading
unchanged files: it compares the files' identities (device, inode, size, mtime, ctime; a
``stat`` each) on every new TLS connection and at most once a second on requests, and
reloads only when one changed, or when asked (SIGHUP, ``POST /-/reload``). New connections
get the new context; open connections keep theirs, and none is dropped. A file that does
not load keeps the running configuration, says why in one log line and sets
``deepseek_exporter_web_config_last_reload_successful{listener}`` to 0 (through
``on_load``); it is tried again when the files change again. Switching a running listener
between HTTP and HTTPS is refused the same way: that needs a restart.

TLS connections are accepted by :class:`LiveTLSSite`: a plain TCP server whose protocol
factory wraps each connection in asyncio's own ``SSLProtocol`` with the context of the
moment (what ``loop.create_server(ssl=...)`` does, with one context fixed for ever). When
``client_allowed_sans`` is set, the client certificate's SANs are checked when the
handshake completes, before aiohttp sees the connection: a refused client gets the
connection closed and no HTTP at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from asyncio import constants, sslproto
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from exporter.web.auth import BasicAuth, BcryptLanes, add_headers
from exporter.web.certnames import subject_alt_names
from exporter.web.ratelimit import TokenBucket
from exporter.web.webconfig import WebConfigError, WebSettings, load_web_config_parts

log = logging.getLogger(__name__)

OnLoad = Callable[[str, bool], None]  # (listener, succeeded)
_Stamp = tuple[int, int, int, int, int] | None

REFRESH_INTERVAL = 1.0  # seconds between looks at the files on the request path


def _stamps(paths: tuple[Path, ...]) -> tuple[_Stamp, ...]:
    stamps: list[_Stamp] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


@dataclass(frozen=True)
class _Watched:
    """Files and how they looked just before they were read."""

    paths: tuple[Path, ...]
    stamps: tuple[_Stamp, ...]

    def changed(self) -> bool:
        return _stamps(self.paths) != self.stamps


@dataclass(frozen=True)
class _State:
    settings: WebSettings
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth | None
    limiter: TokenBucket | None
    watched: _Watched


class LiveWebConfig:
    """A listener's web config file: loaded at start (WebConfigError if bad), kept current."""

    def __init__(
        self,
        path: Path,
        *,
        listener: str,
        for_proxy: bool = False,
        on_load: OnLoad | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.listener = listener
        self.for_proxy = for_proxy
        self._on_load = on_load or (lambda listener, ok: None)
        self._clock = clock
        self._lanes = BcryptLanes()
        self._failed: _Watched | None = None
        self._state = self._load(self.path, previous=None)
        self._next_look = clock() + REFRESH_INTERVAL
        self._on_load(listener, True)

    @property
    def settings(self) -> WebSettings:
        return self._state.settings

    @property
    def tls(self) -> bool:
        return self._state.ssl_context is not None

    def _load(self, path: Path, previous: _State | None) -> _State:
        # Stamps are taken before each file is read: a change while it is read is seen later.
        watched = _Watched((path,), _stamps((path,)))
        notes: list[str] = []
        try:
            settings, tls_files, build = load_web_config_parts(path)
            watched = _Watched((path, *tls_files), watched.stamps + _stamps(tls_files))
            ssl_context = build(notes)
        except WebConfigError:
            self._failed = watched
            raise
        if previous is not None and (ssl_context is None) != (previous.ssl_context is None):
            self._failed = watched
            raise WebConfigError(
                f"{path}: tls_server_config: switching a running listener between HTTP and "
                "HTTPS needs a restart"
            )
        for warning in (*settings.warnings, *notes):
            log.warning("%s listener: %s: %s", self.listener, path, warning)
        auth = None
        if settings.basic_auth_users:
            auth = BasicAuth(
                settings.basic_auth_users,
                self._lanes,
                previous=previous.auth if previous is not None else None,
            )
        limiter = None
        rate = settings.rate_limit
        if rate is not None:
            old = previous.limiter if previous is not None else None
            if old is not None and (old.interval, old.burst) == (rate.interval, rate.burst):
                limiter = old  # an unchanged limit keeps its bucket across reloads
            else:
                limiter = TokenBucket(rate.interval, rate.burst, self._clock)
        self._failed = None
        return _State(settings, ssl_context, auth, limiter, watched)

    def reload(self, path: Path | None = None, reason: str = "reload requested") -> str | None:
        """Read the file again (or `path` instead); on error keep the running config and
        return the one-line error."""
        path = self.path if path is None else Path(path)
        try:
            state = self._load(path, previous=self._state)
        except WebConfigError as err:
            log.error(
                "%s listener: web config reload failed, keeping the running one: %s",
                self.listener,
                err,
            )
            self._on_load(self.listener, False)
            return str(err)
        self.path, self._state = path, state
        log.info("%s listener: web config %s reloaded (%s)", self.listener, path, reason)
        self._on_load(self.listener, True)
        return None

    def refresh(self) -> None:
        """Reload if a file changed since it was last read (or since a failed attempt)."""
        watched = self._failed or self._state.watched
        if watched.changed():
            self.reload(reason="a file changed on disk")

    def maybe_refresh(self) -> None:
        now = self._clock()
        if now >= self._next_look:
            self._next_look = now + REFRESH_INTERVAL
            self.refresh()

    def for_new_connection(self) -> tuple[ssl.SSLContext, frozenset[str] | None]:
        """The TLS context for a connection being accepted, and the SANs it must show."""
        self.refresh()
        state = self._state
        assert state.ssl_context is not None, "for_new_connection() on a plain HTTP listener"
        tls = state.settings.tls
        sans = None
        if tls is not None and tls.client_allowed_sans is not None and tls.requests_client_cert:
            sans = frozenset(tls.client_allowed_sans)
        return state.ssl_context, sans

    def middleware(self) -> Middleware:
        """Rate limit, then headers and basic auth, in the toolkit's order, always as the file
        is now. On the metering proxy ``Authorization`` carries the DeepSeek key, so the
        credentials travel in ``Proxy-Authorization`` and a refusal is a 407."""
        credentials = hdrs.PROXY_AUTHORIZATION if self.for_proxy else hdrs.AUTHORIZATION
        status, challenge = (
            (407, hdrs.PROXY_AUTHENTICATE) if self.for_proxy else (401, hdrs.WWW_AUTHENTICATE)
        )

        @web.middleware
        async def web_config(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.maybe_refresh()
            state = self._state
            if state.limiter is not None and not state.limiter.allow():
                return web.Response(status=429, text="Too Many Requests\n")
            headers = state.settings.headers
            auth = state.auth
            if auth is not None and not await auth.check_header(request.headers.get(credentials)):
                response: web.StreamResponse = web.Response(
                    status=status,
                    text="Unauthorized\n",
                    headers={challenge: 'Basic realm="deepseek-exporter"'},
                )
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    # 404/405 from the router and handlers' HTTP errors arrive as exceptions.
                    add_headers(exc.headers, headers)
                    raise
            # A response the handler streamed itself is already on the wire as it built it.
            if not response.prepared:
                add_headers(response.headers, headers)
            return response

        return web_config

    def proxy_gate(self) -> ProxyGate:
        """The same checks for the proxy listener, which has its own HTTP server."""
        return ProxyGate(self)

    def wrap_tls(
        self, app_factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory that puts each new connection behind TLS with the context of the
        moment, then hands it to ``app_factory``'s protocol."""
        return lambda: _FirstBytes(lambda: _tls_protocol(self, app_factory))

    def site(
        self, runner: web.BaseRunner, host: str | None, port: int, *, reuse_address: bool = True
    ) -> web.BaseSite:
        if self.tls:
            return LiveTLSSite(runner, host, port, self, reuse_address=reuse_address)
        return web.TCPSite(runner, host, port, reuse_address=reuse_address)

    def close(self) -> None:
        self._lanes.close()


class LiveTLSSite(web.BaseSite):
    """A TCP site whose every new connection gets the listener's TLS context of the moment."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        live: LiveWebConfig,
        *,
        backlog: int = 128,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._live = host, port, live
        self._reuse_address = reuse_address

    @property
    def name(self) -> str:
        return str(URL.build(scheme="https", host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        return _FirstBytes(lambda: _tls_protocol(self._live, server))


def _tls_protocol(
    live: LiveWebConfig, app_factory: Callable[[], asyncio.BaseProtocol]
) -> asyncio.BaseProtocol:
    context, sans = live.for_new_connection()
    app: asyncio.BaseProtocol = app_factory()
    if sans is not None:
        app = _SANGate(app, sans, live.listener)
    return sslproto.SSLProtocol(
        asyncio.get_running_loop(),
        app,
        context,
        None,
        server_side=True,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    )


# A refusal as the proxy's HTTP server sends it: status, reason, body, content type, headers.
Refusal = tuple[int, str, bytes, bytes, tuple[tuple[bytes, bytes], ...]]
_TOO_MANY: Refusal = (429, "Too Many Requests", b"Too Many Requests\n", b"text/plain", ())
_PROXY_AUTH: Refusal = (
    407,
    "Proxy Authentication Required",
    b"Unauthorized\n",
    b"text/plain",
    ((b"Proxy-Authenticate", b'Basic realm="deepseek-exporter"'),),
)


class ProxyGate:
    """What :meth:`LiveWebConfig.middleware` does, for the proxy listener's own server: rate
    limit, then basic auth in ``Proxy-Authorization`` (the ``Authorization`` header carries the
    DeepSeek key), and the configured headers on every response, as the file is now."""

    def __init__(self, live: LiveWebConfig) -> None:
        self._live = live
        self._headers_of: tuple[object, list[tuple[bytes, bytes]]] = (None, [])

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        settings = self._live.settings
        if self._headers_of[0] is not settings:
            encoded = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in settings.headers.items()
            ]
            self._headers_of = (settings, encoded)
        return self._headers_of[1]

    def admit(self, proxy_authorization: str | None) -> Refusal | Awaitable[Refusal | None] | None:
        live = self._live
        live.maybe_refresh()
        state = live._state
        if state.limiter is not None and not state.limiter.allow():
            return _TOO_MANY
        if state.auth is None:
            return None
        return self._check(state.auth, proxy_authorization)

    async def _check(self, auth: BasicAuth, header: str | None) -> Refusal | None:
        return None if await auth.check_header(header) else _PROXY_AUTH


# The reply of Go's net/http to plain HTTP sent to a TLS port, word for word.
_HTTP_TO_HTTPS = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")  # Go's looksLikeHTTP
_TLS_HANDSHAKE_RECORD = 0x16


class _FirstBytes(asyncio.Protocol):
    """Looks at a new connection's first bytes: TLS goes on to a fresh SSLProtocol; plain HTTP
    gets Go's "Client sent an HTTP request to an HTTPS server" 400 instead of a bare close."""

    def __init__(self, tls_protocol: Callable[[], asyncio.BaseProtocol]) -> None:
        self._tls_protocol = tls_protocol
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport  # type: ignore[assignment]
        # The handshake timeout, counted from the connection as asyncio's own TLS server does.
        self._timeout = asyncio.get_running_loop().call_later(
            constants.SSL_HANDSHAKE_TIMEOUT, transport.abort
        )

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None and self._timeout is not None
        self._timeout.cancel()
        if data[0] != _TLS_HANDSHAKE_RECORD:
            if data[:5] in _HTTP_STARTS:
                transport.write(_HTTP_TO_HTTPS)
                transport.close()
            else:
                transport.abort()
            return
        tls = self._tls_protocol()
        assert isinstance(tls, asyncio.BufferedProtocol)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view:
            buffer = tls.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            tls.buffer_updated(size)
            view = view[size:]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timeout is not None:
            self._timeout.cancel()


class _SANGate(asyncio.Protocol):
    """Stands in for the HTTP protocol until the handshake is done, then hands the connection
    over if the client certificate has an allowed SAN, or closes it."""

    def __init__(self, app: asyncio.BaseProtocol, allowed: frozenset[str], listener: str) -> None:
        self._app, self._allowed, self._listener = app, allowed, listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        try:
            names = subject_alt_names(der) if der else []
        except ValueError:
            names = []
        if not self._allowed.intersection(names):
            log.debug(
                "%s listener: refused a client certificate: no SAN in client_allowed_sans",
                self._listener,
            )
            transport.abort()
            return
        transport.set_protocol(self._app)
        self._app.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        pass  # only reached after a refusal, while the connection closes

    def eof_received(self) -> bool:
        return False

"""A server wired exactly as exporter.app wires a listener's web config, and clients for it.

The server is a two-route aiohttp app behind :class:`LiveWebConfig` (its middleware and its
site), on a background loop; clients are httpx with Python's ``ssl`` contexts, and the
``openssl s_client`` command.
"""

from __future__ import annotations

import ssl
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from aiohttp import web

from exporter.web.listener import LiveWebConfig
from tests.conftest import BackgroundLoop, require_binary

BODY = "Hello World!"


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=BODY)


async def _own_header(request: web.Request) -> web.Response:
    return web.Response(text="own\n", headers={"X-Frame-Options": "sameorigin"})


@dataclass
class Served:
    url: str
    live: LiveWebConfig | None


@contextmanager
def serve(web_config: Path | None, *, clock: object = None) -> Iterator[Served]:
    """Serve `/` and `/own-header` with `web_config` (None: no file, plain HTTP)."""
    loop = BackgroundLoop()
    live = None
    runner: web.AppRunner | None = None
    try:
        app = web.Application()
        app.router.add_get("/", _hello)
        app.router.add_get("/own-header", _own_header)
        if web_config is not None:
            options = {"clock": clock} if clock is not None else {}
            live = LiveWebConfig(web_config, listener="web", **options)  # type: ignore[arg-type]
            app.middlewares.append(live.middleware())
        runner = web.AppRunner(app, access_log=None)
        loop.run(runner.setup())
        if live is not None:
            site = live.site(runner, "127.0.0.1", 0)
        else:
            site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run(site.start())
        scheme = "https" if live is not None and live.tls else "http"
        yield Served(f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", live)
    finally:
        if runner is not None:
            loop.run(runner.cleanup())
        if live is not None:
            live.close()
        loop.close()


def client_tls(
    ca: Path,
    cert: tuple[Path, Path] | None = None,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    curve: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1, asked for on purpose
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    if min_version is not None and min_version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    return ctx


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    headers: httpx.Headers
    tls_version: str | None
    cipher: str | None
    peer_cert: bytes | None = None


def get(
    url: str,
    tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    with httpx.Client(verify=tls if tls is not None else True, timeout=10) as client:
        response = client.get(url, auth=auth, headers=headers)
        ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
        return Reply(
            status=response.status_code,
            text=response.text,
            headers=response.headers,
            tls_version=ssl_object.version() if ssl_object else None,
            cipher=ssl_object.cipher()[0] if ssl_object else None,
            peer_cert=ssl_object.getpeercert(True) if ssl_object else None,
        )


def refused(url: str, tls: ssl.SSLContext | None = None) -> bool:
    """Whether the connection fails below HTTP (handshake refused, or closed right after)."""
    try:
        get(url, tls)
    except httpx.TransportError:
        return True
    return False


@dataclass(frozen=True)
class SClient:
    returncode: int
    output: str

    @property
    def answered(self) -> bool:
        return "HTTP/1.1 200 OK" in self.output and BODY in self.output


def s_client(url: str, ca: Path, *args: str) -> SClient:
    """`openssl s_client` sends one GET and prints the handshake and the reply."""
    openssl = require_binary("openssl")
    host_port = url.split("://", 1)[1].rstrip("/")
    result = subprocess.run(
        [openssl, "s_client", "-connect", host_port, "-servername", "localhost",
         "-CAfile", str(ca), "-verify_return_error", "-ign_eof", *args],
        input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True,
        timeout=20,
    )  # fmt: skip
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    return SClient(result.returncode, output)

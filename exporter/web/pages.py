"""The metrics listener: /metrics, the landing page, health, readiness and reload."""

from __future__ import annotations

import gzip
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder

from exporter.web import runbooks
from exporter.web.status import ExporterView
from exporter.web.status_page import render_status_page

EXPORTER: web.AppKey[ExporterView] = web.AppKey("exporter")


def make_web_app(exporter: ExporterView, middlewares: Sequence[Middleware] = ()) -> web.Application:
    app = web.Application(middlewares=list(middlewares))
    app[EXPORTER] = exporter
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _landing)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    app.router.add_get("/runbooks", _runbooks_index_redirect)
    app.router.add_get("/runbooks/", _runbook)
    app.router.add_get("/runbooks/{name}", _runbook)
    return app


async def _metrics(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(exporter.registry)
    headers = {"Content-Type": content_type}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = gzip.compress(body, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    if exporter.ready:
        return web.Response(text="Ready.\n")
    return web.Response(status=503, text="Not ready: not every account has been polled yet.\n")


async def _reload(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    result = await exporter.reload()
    if result.error:
        return web.Response(status=500, text=f"failed to reload config: {result.error}\n")
    lines = ("Reloaded.", *result.notes) if result.reloaded else result.notes
    return web.Response(text="".join(f"{line}\n" for line in lines))


async def _landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    page = render_status_page(exporter, request.url.host)
    return web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)


# The page is self-contained: the browser may load nothing from anywhere, not even from here.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "Cache-Control": "no-store",
}


async def _runbooks_index_redirect(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("runbooks/")


async def _runbook(request: web.Request) -> web.Response:
    # /runbooks/DeepSeekBalanceLow, also with the .md of the file the links name.
    name = request.match_info.get("name", runbooks.INDEX).removesuffix(".md")
    page = runbooks.render(name)
    if page is None:
        return web.Response(
            status=404, text=f"No runbook named {name[:80]!r}. See /runbooks/ for the list.\n"
        )
    return web.Response(text=page, content_type="text/html", headers=_PAGE_HEADERS)

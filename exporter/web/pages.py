"""The metrics listener: /metrics, the landing page, health, readiness and reload."""

from __future__ import annotations

import gzip
import html
import math
import time
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.web.status import AccountStatus, ExporterView

EXPORTER: web.AppKey[ExporterView] = web.AppKey("exporter")


def make_web_app(exporter: ExporterView, middlewares: Sequence[Middleware] = ()) -> web.Application:
    app = web.Application(middlewares=list(middlewares))
    app[EXPORTER] = exporter
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _landing)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
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


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if math.isinf(seconds):
        return "never (nothing spent)"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


async def _landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER]
    return web.Response(text=render_landing(exporter), content_type="text/html")


def render_landing(exporter: ExporterView) -> str:
    """A page a person can read at a glance; every value is escaped, no key is ever shown."""
    now = exporter.now()
    rows = [_status_row(status, now) for status in exporter.account_status()]
    table = "\n".join(rows) or '<tr><td colspan="7">No accounts configured.</td></tr>'
    return _PAGE.format(version=html.escape(__version__), rows=table)


def _status_row(status: AccountStatus, now: float) -> str:
    last_poll = (
        "never" if status.last_success is None else _duration(now - status.last_success) + " ago"
    )
    state = {"up": "up", "pending": "pending"}.get(status.poll_state, f"DOWN ({status.last_error})")
    if status.currency is None:
        return _row(status.name, "-", "-", "-", "-", state, last_poll)
    rate = status.burn_per_second
    per_day = "unknown" if rate is None else f"{rate * 86400:.2f} {status.currency}"
    seconds = status.exhaustion_seconds
    runs_out = _duration(seconds)
    if seconds is not None and not math.isinf(seconds):
        at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + seconds))
        runs_out = f"in {runs_out} ({at})"
    return _row(
        status.name,
        f"{status.balance} {status.currency}",
        "yes" if status.available else "NO",
        per_day,
        runs_out,
        state,
        last_poll,
    )


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DeepSeek Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:left}}</style></head>
<body><h1>DeepSeek Exporter</h1>
<p>Balance, burn rate and exhaustion forecast of DeepSeek API accounts. Version {version}.</p>
<table><tr><th>Account</th><th>Balance</th><th>Available</th><th>Burn per day</th>
<th>Runs out</th><th>Poll status</th><th>Last good poll</th></tr>
{rows}
</table>
<ul><li><a href="/metrics">Metrics</a></li><li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li></ul>
</body></html>
"""

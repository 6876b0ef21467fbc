"""The landing page: are we OK, and for how long?

One self-contained HTML page, rendered on the server: inline CSS and SVG, no script, no font, no
image, nothing fetched from anywhere; it refreshes itself every 30 seconds. Per account a
coloured state, the balance against its threshold, how long it lasts and what top-up keeps it
going a week or a month, a sparkline of the balance, and what the proxy saw (402s, errors,
requests, tokens, cost). Every value is escaped; no key is ever shown except the demo's fixed,
fake ones.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping
from decimal import Decimal

from exporter import __version__
from exporter.web import snippets
from exporter.web.status import (
    DOWN,
    EMPTY,
    LOW,
    NOT_POLLED,
    OK,
    PENDING,
    SEVERITY,
    UNAVAILABLE,
    AccountStatus,
    ExporterView,
    TrafficCounts,
    TrafficWindow,
)

REFRESH_SECONDS = 30
SPARKLINE_SPAN = 7 * 86400.0
_TONE = {OK: "ok", LOW: "warn", EMPTY: "bad", UNAVAILABLE: "bad", DOWN: "bad"}
_MEANING = {
    OK: "can pay for calls",
    LOW: "below its low-balance threshold",
    EMPTY: "nothing left: every call fails with 402",
    UNAVAILABLE: "DeepSeek says it cannot pay for calls: they fail with 402",
    DOWN: "the balance cannot be read",
    PENDING: "waiting for the first balance poll",
    NOT_POLLED: "this replica only proxies (poll_interval: 0)",
}


def render_status_page(exporter: ExporterView, host: str | None) -> str:
    """The whole page; ``host`` is the host name the browser reached it at."""
    now = exporter.now()
    statuses = exporter.account_status()
    by_account: dict[str, list[AccountStatus]] = {}
    for status in statuses:
        by_account.setdefault(status.name, []).append(status)
    windows = (
        exporter.traffic(now - 3600),
        exporter.traffic(now - 86400),
        exporter.traffic(now - now % 86400),  # since 00:00 UTC
    )
    cards = [_account_card(exporter, name, rows, windows, now) for name, rows in by_account.items()]
    unknown = windows[1].of("unknown")
    if unknown.requests or unknown.errors:
        cards.append(_unknown_card(windows, now))
    proxy_url = exporter.proxy_url_for(host)
    return _PAGE.format(
        refresh=REFRESH_SECONDS,
        css=_CSS,
        summary=_summary(statuses),
        cards="\n".join(cards) or '<p class="none">No accounts configured.</p>',
        proxy=_proxy_section(proxy_url, exporter.demo_keys),
        updated=html.escape(_clock(now)),
        version=html.escape(__version__),
    )


# ---- the headline ---------------------------------------------------------------------------


def _summary(statuses: list[AccountStatus]) -> str:
    worst_by_account: dict[str, str] = {}
    for status in statuses:
        current = worst_by_account.get(status.name, OK)
        worst_by_account[status.name] = min(current, status.state, key=SEVERITY.index)
    if not worst_by_account:
        return '<div class="summary idle">No accounts to watch.</div>'
    troubled = [(n, s) for n, s in worst_by_account.items() if _TONE.get(s) in ("bad", "warn")]
    if not troubled:
        count = len(worst_by_account)
        settled = all(s == OK for s in worst_by_account.values())
        text = f"All {count} account{'s' if count > 1 else ''} OK" if settled else "No trouble seen"
        return f'<div class="summary ok">{text}</div>'
    tone = "bad" if any(_TONE[s] == "bad" for _, s in troubled) else "warn"
    parts = [f"<strong>{html.escape(n)}</strong> {html.escape(s)}" for n, s in troubled]
    return f'<div class="summary {tone}">Needs attention: {", ".join(parts)}</div>'


# ---- one account ----------------------------------------------------------------------------


def _account_card(
    exporter: ExporterView,
    name: str,
    rows: list[AccountStatus],
    windows: tuple[TrafficWindow, ...],
    now: float,
) -> str:
    state = min((row.state for row in rows), key=SEVERITY.index)
    tone = _TONE.get(state, "idle")
    badge = html.escape(state)
    first = rows[0]
    if state == EMPTY:
        since = min((r.empty_since for r in rows if r.empty_since is not None), default=None)
        if since is not None:
            badge += f" since {html.escape(_clock(since, now))}"
    detail = _MEANING[state]
    if state == DOWN and first.last_error:
        detail = f"last poll failed: {first.last_error}"
    parts = [
        f'<section class="card {tone}" data-account="{html.escape(name)}">',
        f'<h2><span class="name">{html.escape(name)}</span>'
        f'<span class="badge {tone}">{badge}</span></h2>',
        f'<p class="detail">{html.escape(detail)}</p>',
    ]
    for row in rows:
        if row.currency is not None:
            parts.append(_balance_block(exporter, row, now))
        elif state not in (PENDING, NOT_POLLED):
            parts.append('<p class="muted">No fresh balance to show.</p>')
    if first.last_success is not None:
        ago = _ago(now - first.last_success)
        parts.append(f'<p class="muted">Last good balance poll {html.escape(ago)}.</p>')
    parts.append(_traffic_table(name, windows, now))
    parts.append("</section>")
    return "\n".join(parts)


def _balance_block(exporter: ExporterView, row: AccountStatus, now: float) -> str:
    assert row.currency is not None and row.balance is not None
    currency = html.escape(row.currency)
    threshold = (
        f"threshold {_money(row.threshold)}" if row.threshold is not None else "no threshold set"
    )
    burn = row.burn_per_second
    per_day = None if burn is None else burn * 86400
    facts = [
        ("Lasts", _lasts(row, now)),
        ("Burn", "—" if per_day is None else f"{_money(per_day)} {currency}/day"),
        ("Top-up for 7 days", _top_up(per_day, row.balance, 7, currency)),
        ("Top-up for 30 days", _top_up(per_day, row.balance, 30, currency)),
    ]
    points = exporter.balance_history(row.name, row.currency, now - SPARKLINE_SPAN)
    return (
        f'<div class="balance" data-currency="{currency}">'
        f'<p class="amount"><span class="value">{_money(row.balance)}</span> {currency} '
        f'<span class="threshold">{html.escape(threshold)}</span></p>'
        '<dl class="facts">'
        + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
        + "</dl>"
        + _sparkline(points, row, now)
        + "</div>"
    )


def _lasts(row: AccountStatus, now: float) -> str:
    seconds = row.exhaustion_seconds
    if row.balance is not None and row.balance <= 0:
        return "empty now"
    if seconds is None:
        return "unknown yet (needs two polls)"
    if math.isinf(seconds):
        return "no spend seen"
    return f"{_span(seconds)}, until {_clock(now + seconds, now)}"


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{seconds:.0f} seconds"


def _top_up(per_day: float | None, balance: Decimal, days: int, currency: str) -> str:
    if per_day is None:
        return "—"
    needed = per_day * days - float(balance)
    return "covered" if needed <= 0 else f"+{_money(needed)} {currency}"


def _sparkline(points: list[tuple[float, Decimal]], row: AccountStatus, now: float) -> str:
    assert row.balance is not None
    series = [(t, float(b)) for t, b in points]
    if not series or series[-1][0] < now - 1:
        series.append((now, float(row.balance)))
    if len(series) < 2:
        return '<p class="spark muted">Balance history builds up as polls arrive.</p>'
    width, height, pad = 300.0, 56.0, 3.0
    start, end = series[0][0], series[-1][0]
    top = max([b for _, b in series] + [float(row.threshold or 0)]) * 1.1 or 1.0

    def x(t: float) -> float:
        return pad + (t - start) / max(end - start, 1e-9) * (width - 2 * pad)

    def y(b: float) -> float:
        return height - pad - max(b, 0.0) / top * (height - 2 * pad)

    line = " ".join(f"{x(t):.1f},{y(b):.1f}" for t, b in series)
    area = f"{x(start):.1f},{height - pad} {line} {x(end):.1f},{height - pad}"
    threshold = ""
    if row.threshold is not None:
        ty = y(float(row.threshold))
        threshold = (
            f'<line class="limit" x1="{pad}" x2="{width - pad}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
        )
    span = end - start
    label = "last 7 days" if span >= 6.9 * 86400 else f"since {_clock(start, now)}"
    title = (
        f"Balance {label}: from {_money(Decimal(str(series[0][1])))} to "
        f"{_money(row.balance)} {row.currency}"
    )
    tone = _TONE.get(row.state, "idle")
    return (
        f'<figure class="spark {tone}"><svg viewBox="0 0 {width:g} {height:g}" '
        f'preserveAspectRatio="none" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>"
        f'<polygon class="area" points="{area}"/>{threshold}'
        f'<polyline class="line" points="{line}"/></svg>'
        f"<figcaption>balance, {html.escape(label)}</figcaption></figure>"
    )


def _traffic_table(name: str, windows: tuple[TrafficWindow, ...], now: float) -> str:
    hour, day, today = (w.of(name) for w in windows)
    # While the exporter has run less than a window, the window starts at start-up: say so.
    heads = [
        label if window.start <= now - span + 90 else f"since {_clock(window.start, now, False)}"
        for label, window, span in (
            ("last hour", windows[0], 3600),
            ("last 24 h", windows[1], 86400),
        )
    ]
    return (
        '<table class="traffic"><thead><tr><th>Through the proxy</th>'
        f"<th>{heads[0]}</th><th>{heads[1]}</th></tr></thead><tbody>"
        f'<tr class="{"bad" if day.payment_required else ""}"><td>402 Insufficient Balance</td>'
        f"<td>{_count(hour.payment_required)}</td><td>{_count(day.payment_required)}</td></tr>"
        f'<tr class="{"warn" if day.errors else ""}"><td>other errors</td>'
        f"<td>{_count(hour.errors)}</td><td>{_count(day.errors)}</td></tr>"
        "</tbody></table>"
        f'<p class="today">Today (UTC): {_today(today)}</p>'
    )


def _today(counts: TrafficCounts) -> str:
    cost = ", ".join(
        f"{_money(amount)} {html.escape(currency)}"
        for currency, amount in counts.cost.items()
        if amount
    )
    return (
        f'<span class="requests">{_count(counts.requests)} requests</span> · '
        f'<span class="tokens">{_tokens(counts.tokens)} tokens</span> · '
        f'<span class="cost">{cost or "0"} estimated cost</span>'
    )


def _unknown_card(windows: tuple[TrafficWindow, ...], now: float) -> str:
    return (
        '<section class="card idle" data-account="unknown"><h2><span class="name">unknown'
        '</span><span class="badge idle">OTHER KEYS</span></h2>'
        '<p class="detail">Requests with keys that no configured account has (no cost).</p>'
        + _traffic_table("unknown", windows, now)
        + "</section>"
    )


# ---- how to use the proxy -------------------------------------------------------------------


def _proxy_section(proxy_url: str | None, keys: Mapping[str, str]) -> str:
    if proxy_url is None:
        return (
            '<section class="use"><h2>Metering proxy</h2><p>The proxy is off on this exporter '
            "(<code>proxy.enabled: false</code>).</p></section>"
        )
    key = next(iter(keys.values()), None)
    url = html.escape(proxy_url)
    lines = [
        '<section class="use"><h2>Meter your app: point its base URL at the proxy</h2>',
        f'<p class="proxy-url">Proxy: <code>{url}</code> — change nothing else; every request'
        " is counted by account, model and status, with its tokens and estimated cost.</p>",
    ]
    if keys:
        listed = ", ".join(
            f"<code>{html.escape(k)}</code> ({html.escape(a)})" for a, k in keys.items()
        )
        lines.append(f'<p class="demo-keys">Demo keys (fake, for this demo only): {listed}</p>')
    else:
        lines.append("<p>Use your own DeepSeek key, as you would with the API itself.</p>")
    models = ", ".join(f"<code>{m}</code>" for m in snippets.CURRENT_MODELS)
    lines += [
        f"<p>Current models: {models}. Retired ones (<code>deepseek-chat</code>, "
        "<code>deepseek-reasoner</code>) answer 400 Model Not Exist.</p>",
        '<div class="snippets"><figure><figcaption>curl</figcaption><pre>'
        + html.escape(snippets.curl(proxy_url, key))
        + "</pre></figure><figure><figcaption>Python, openai SDK</figcaption><pre>"
        + html.escape(snippets.python(proxy_url, key))
        + "</pre></figure></div></section>",
    ]
    return "\n".join(lines)


# ---- formatting -----------------------------------------------------------------------------


def _money(amount: Decimal | float) -> str:
    value = float(amount)
    if value and abs(value) < 0.01:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def _count(value: float) -> str:
    return f"{int(value):,}"


def _tokens(value: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{int(value)}"


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{max(seconds, 0):.0f}s ago"


def _clock(at: float, now: float | None = None, zone: bool = True) -> str:
    """A time as a person reads it: today's as 14:05 UTC, others with their date."""
    suffix = " UTC" if zone else ""
    if now is not None and time.gmtime(at)[:3] == time.gmtime(now)[:3]:
        return time.strftime("%H:%M", time.gmtime(at)) + suffix
    pattern = "%Y-%m-%d %H:%M:%S" if now is None else "%b %d %H:%M"
    return time.strftime(pattern, time.gmtime(at)) + suffix


_CSS = """
:root{--ok:#1a7f37;--ok-bg:#dafbe1;--warn:#9a6700;--warn-bg:#fff8c5;--bad:#cf222e;
--bad-bg:#ffebe9;--idle:#57606a;--idle-bg:#eaeef2;--line:#d0d7de;--fg:#1f2328;--muted:#59636e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:#f6f8fa}
header,main,footer{max-width:1180px;margin:0 auto;padding:0 20px}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:12px;padding-top:18px}
header h1{font-size:22px;margin:0}
header .meta{color:var(--muted);font-size:13px}
.summary{margin:14px 0;padding:12px 16px;border-radius:8px;font-size:17px;font-weight:600;
border:1px solid}
.summary.ok{background:var(--ok-bg);color:var(--ok);border-color:#aceebb}
.summary.warn{background:var(--warn-bg);color:var(--warn);border-color:#eed888}
.summary.bad{background:var(--bad-bg);color:var(--bad);border-color:#ffcecb}
.summary.idle{background:var(--idle-bg);color:var(--idle);border-color:var(--line)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px}
.card{background:#fff;border:1px solid var(--line);border-left:6px solid var(--idle);
border-radius:8px;padding:14px 16px}
.card.ok{border-left-color:var(--ok)}.card.warn{border-left-color:var(--warn)}
.card.bad{border-left-color:var(--bad)}
.card h2{display:flex;justify-content:space-between;align-items:center;margin:0 0 4px;
font-size:18px}
.badge{font-size:12px;font-weight:700;letter-spacing:.04em;padding:3px 9px;border-radius:999px;
white-space:nowrap}
.badge.ok{background:var(--ok);color:#fff}.badge.warn{background:#d4a72c;color:#1f2328}
.badge.bad{background:var(--bad);color:#fff}.badge.idle{background:var(--idle-bg);color:var(--idle)}
.detail{margin:0 0 8px;color:var(--muted);font-size:13px}
.amount{margin:6px 0;font-size:14px;color:var(--muted)}
.amount .value{font-size:30px;font-weight:700;color:var(--fg);font-variant-numeric:tabular-nums}
.amount .threshold{margin-left:10px;font-size:13px}
.facts{display:grid;grid-template-columns:1fr 1fr;gap:6px 14px;margin:8px 0}
.facts div{min-width:0}.facts dt{font-size:12px;color:var(--muted)}
.facts dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
.spark{margin:6px 0 8px}.spark svg{display:block;width:100%;height:56px}
.spark figcaption{font-size:12px;color:var(--muted)}
.spark .line{fill:none;stroke:var(--idle);stroke-width:2;vector-effect:non-scaling-stroke}
.spark .area{fill:var(--idle-bg)}
.spark.ok .line{stroke:var(--ok)}.spark.ok .area{fill:var(--ok-bg)}
.spark.warn .line{stroke:var(--warn)}.spark.warn .area{fill:var(--warn-bg)}
.spark.bad .line{stroke:var(--bad)}.spark.bad .area{fill:var(--bad-bg)}
.spark .limit{stroke:var(--warn);stroke-dasharray:4 3;vector-effect:non-scaling-stroke}
.muted{color:var(--muted);font-size:13px}
table.traffic{width:100%;border-collapse:collapse;margin-top:8px;font-size:13px}
.traffic th,.traffic td{padding:4px 6px;border-top:1px solid var(--line);text-align:right;
font-variant-numeric:tabular-nums}
.traffic th:first-child,.traffic td:first-child{text-align:left}
.traffic th{color:var(--muted);font-weight:500}
.traffic tr.bad td{color:var(--bad);font-weight:700}
.traffic tr.warn td{color:var(--warn);font-weight:600}
.today{margin:8px 0 0;font-size:13px}
.use{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px;
margin:18px 0}
.use h2{font-size:17px;margin:0 0 6px}
.snippets{display:grid;gap:10px}
.snippets figure{margin:0}.snippets figcaption{font-size:12px;color:var(--muted)}
pre{background:#0d1117;color:#e6edf3;padding:10px 12px;border-radius:6px;overflow-x:auto;
font-size:12.5px;margin:4px 0 0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
footer{padding-bottom:24px;color:var(--muted);font-size:13px}
footer a{color:#0969da;margin-right:14px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>DeepSeek exporter: status</title>
<style>{css}</style></head>
<body>
<header><h1>DeepSeek exporter</h1>
<span class="meta">Updated {updated}; refreshes every {refresh} s.</span></header>
<main>
{summary}
<div class="cards">
{cards}
</div>
{proxy}
</main>
<footer><nav><a href="/metrics">Metrics</a><a href="/runbooks/">Runbooks</a>
<a href="/-/healthy">Health</a><a href="/-/ready">Readiness</a></nav>
<p>deepseek-exporter {version}</p></footer>
</body></html>
"""

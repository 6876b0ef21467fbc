"""The measurement behind the server stack: a minimal pass-through proxy written several ways.

    python bench/server_stack.py           # ~4 minutes, rewrites its section of docs/benchmarks.md
    python bench/server_stack.py --quick   # ~1 minute smoke run, prints the report only

Each candidate is the same straightforward pass-through (read the request, forward method, path,
headers and body to the upstream over a keep-alive pool, stream the response back), with no
metering, each in its own process, against the same fast upstream (``bench/upstream.py``):

* ``uvicorn + httpx``: raw ASGI on uvicorn (``http="httptools"``, asyncio loop), upstream with
  ``httpx.AsyncClient`` (pool limits raised to 1,000 so that the pool does not close connections);
* ``uvicorn + aiohttp``: the same ASGI app, upstream with ``aiohttp.ClientSession``;
* ``aiohttp + aiohttp``: aiohttp's low-level ``web.Server`` and ``aiohttp.ClientSession``;

and, for context, variants that are not candidates but answer "what would it take":
``uvicorn + httpx`` with httpx's default pool limits (100 connections, 20 kept alive),
``aiohttp + aiohttp`` with response headers sent together with the body (one ``send()`` less per
request), and ``aiohttp + aiohttp`` on uvloop (if installed).

Load: latency at concurrency 1 with the blocking raw-socket client (interleaved rounds), then
``wrk -t1`` at 1, 32 and 128 connections (interleaved rounds, medians); CPU per request from
``/proc/<pid>/stat``. Like ``proxy_bench.py``: waits for an idle machine, runs at nice -10.

``python bench/server_stack.py serve VARIANT --port P --upstream-port U`` runs one candidate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

import benchlib as bl

sys.path.insert(0, str(bl.REPO))
from exporter.proxy.relay import HOP_BY_HOP_BYTES  # the real proxy's header rules

SECTION = "server_stack"
DOC = bl.REPO / "docs" / "benchmarks.md"
HOP_BY_HOP = frozenset(h.decode() for h in HOP_BY_HOP_BYTES)
SKIP_AUTO = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")

CANDIDATES = {
    "uvicorn+httpx": "uvicorn (httptools) raw ASGI + httpx.AsyncClient",
    "uvicorn+aiohttp": "uvicorn (httptools) raw ASGI + aiohttp client",
    "aiohttp": "aiohttp low-level server + aiohttp client",
}
EXTRAS = {
    "uvicorn+httpx-defaults": "uvicorn + httpx, httpx's default pool limits",
    "aiohttp-coalesced": "aiohttp + aiohttp, headers sent with the body",
    "aiohttp-uvloop": "aiohttp + aiohttp on uvloop",
}


# --------------------------------------------------------------------------------------------
# the candidates (run in their own processes)


def asgi_app(upstream: str, client_kind: str):
    """A raw ASGI pass-through; the upstream client is created on first use, in the loop."""
    state: dict[str, object] = {}

    def client():
        if "client" not in state:
            if client_kind == "httpx":
                import httpx

                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
                state["client"] = httpx.AsyncClient(limits=limits, timeout=60)
            elif client_kind == "httpx-defaults":
                import httpx

                state["client"] = httpx.AsyncClient(timeout=60)
            else:
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
                state["client"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return state["client"]

    async def lifespan(receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                client_ = state.get("client")
                if client_ is not None:
                    await (client_.aclose() if client_kind.startswith("httpx") else client_.close())
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP_BYTES]
        session = client()
        if client_kind.startswith("httpx"):
            request = session.build_request(
                scope["method"], upstream + target, headers=headers, content=body
            )
            response = await session.send(request, stream=True)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [
                            (k, v)
                            for k, v in response.headers.raw
                            if k.lower() not in HOP_BY_HOP_BYTES
                        ],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()
            return
        str_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        async with session.request(
            scope["method"],
            upstream + target,
            headers=str_headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=SKIP_AUTO,
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (k, v) for k, v in response.raw_headers if k.lower() not in HOP_BY_HOP_BYTES
                    ],
                }
            )
            while chunk := await response.content.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


class _CoalescedResponse(web.StreamResponse):
    _send_headers_immediately = False


async def serve_aiohttp(upstream: str, port: int, coalesce: bool) -> None:
    from multidict import CIMultiDict

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    response_class = _CoalescedResponse if coalesce else web.StreamResponse

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        body = await request.read() if request.body_exists else None
        with contextlib.suppress(ConnectionResetError):
            return await forward(request, headers, body)
        return web.Response(status=499)  # the client went away; nobody reads this

    async def forward(request, headers, body) -> web.StreamResponse:
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=SKIP_AUTO,
        ) as upstream_response:
            response = response_class(
                status=upstream_response.status,
                reason=upstream_response.reason,
                headers=CIMultiDict(
                    (k, v)
                    for k, v in upstream_response.headers.items()
                    if k.lower() not in HOP_BY_HOP
                ),
            )
            await response.prepare(request)
            while chunk := await upstream_response.content.readany():
                await response.write(chunk)
            await response.write_eof()
            return response

    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, bl.HOST, port, backlog=4096).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def serve(variant: str, port: int, upstream_port: int) -> None:
    upstream = f"http://{bl.HOST}:{upstream_port}"
    if variant.startswith("uvicorn"):
        import uvicorn

        client = {"uvicorn+httpx": "httpx", "uvicorn+httpx-defaults": "httpx-defaults"}.get(
            variant, "aiohttp"
        )
        config = uvicorn.Config(
            asgi_app(upstream, client),
            host=bl.HOST,
            port=port,
            http="httptools",
            loop="asyncio",
            lifespan="on",
            access_log=False,
            log_level="warning",
            backlog=4096,
        )
        uvicorn.Server(config).run()
    elif variant == "aiohttp-uvloop":
        import uvloop

        uvloop.run(serve_aiohttp(upstream, port, coalesce=False))
    else:
        asyncio.run(serve_aiohttp(upstream, port, coalesce=variant == "aiohttp-coalesced"))


# --------------------------------------------------------------------------------------------
# the measurement


@dataclass
class Candidate:
    name: str
    label: str
    port: int
    proc: subprocess.Popen | None
    pids: list[int]
    c1: list[float] = field(default_factory=list)
    wrk: dict[int, list[bl.WrkResult]] = field(default_factory=dict)

    def median(self, connections: int, attr: str) -> float:
        """The median over the interleaved wrk rounds at ``connections``."""
        runs = self.wrk.get(connections)
        if not runs:
            return float("nan")
        return statistics.median(getattr(r, attr) for r in runs)


def start_candidate(variant: str, upstream_port: int) -> tuple[subprocess.Popen, int]:
    port = bl.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "serve",
            variant,
            "--port",
            str(port),
            "--upstream-port",
            str(upstream_port),
        ]
    )
    bl.wait_port(port, proc=proc)
    return proc, port


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def render(
    cands: list[Candidate], plan: dict, command: str, noise: str, started: dt.datetime
) -> str:
    direct = cands[0]
    d1 = (bl.percentile(direct.c1, 50), bl.percentile(direct.c1, 99))
    aio_rps = next(c for c in cands if c.name == "aiohttp").median(32, "rps")
    rows = []
    for c in cands:
        p50, p99 = bl.percentile(c.c1, 50), bl.percentile(c.c1, 99)
        m = c.median
        rows.append(
            [
                f"**{c.label}**" if c.name in CANDIDATES else c.label,
                "-" if c is direct else bl.fmt(p50 - d1[0], 3),
                "-" if c is direct else bl.fmt(p99 - d1[1], 3),
                bl.fmt(m(1, "rps"), 0),
                bl.fmt(m(32, "rps"), 0),
                f"{m(32, 'p50_ms'):.2f} / {m(32, 'p99_ms'):.2f}",
                bl.fmt(m(128, "rps"), 0),
                f"{m(128, 'p50_ms'):.2f} / {m(128, 'p99_ms'):.2f}",
                "-" if c is direct else bl.fmt(m(32, "cpu_us_per_request"), 0),
                "-" if c is direct else bl.ratio(m(32, "rps"), aio_rps),
            ]
        )
    errors = sum(r.socket_errors + r.non_2xx for c in cands for rs in c.wrk.values() for r in rs)
    import httpx
    import uvicorn

    lines = [
        "## Server stack: raw ASGI on uvicorn vs aiohttp",
        "",
        "Generated by `bench/server_stack.py`; do not edit by hand. The same minimal pass-through "
        "proxy (no metering) written on each stack, each in its own process, in front of the same "
        "fast upstream (`bench/upstream.py`). Added latency at c=1 is over direct, from the "
        "raw-socket client; the rest is `wrk -t1` (closed loop). **Bold**: the candidates of "
        'issue 2; the other rows answer "what would it take".',
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`",
        f"- CPU: {bl.cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"aiohttp {aiohttp.__version__}, uvicorn {uvicorn.__version__}, httpx {httpx.__version__}, "
        f"wrk {bl.wrk_version()}",
        f"- Background: {noise}",
        "",
        bl.table(
            [
                "stack",
                "added p50 c=1 ms",
                "added p99 c=1 ms",
                "req/s c=1",
                "req/s c=32",
                "p50 / p99 c=32 ms",
                "req/s c=128",
                "p50 / p99 c=128 ms",
                "CPU µs / req (c=32)",
                "req/s c=32 vs aiohttp",
            ],
            rows,
        ),
        "",
        f"c=1 raw client: {plan['c1_rounds']} interleaved rounds of {plan['c1_seconds']} s per "
        f"stack. wrk: {plan['wrk_rounds']} interleaved round(s) of {plan['step']} s per stack "
        "and connection count, medians shown. Socket errors and non-2xx responses: "
        f"{errors}.",
    ]
    return "\n".join(lines)


def measure(quick: bool, priority: str) -> int:
    plan = {
        "c1_rounds": 2 if quick else 4,
        "c1_seconds": 1.0 if quick else 1.5,
        "step": 2 if quick else 3,
        "wrk_rounds": 1 if quick else 3,
    }
    command = " ".join(["python bench/server_stack.py", *sys.argv[1:]])
    started = dt.datetime.now(dt.UTC)
    noise = bl.Noise()
    tmp = bl.make_tmp("server-stack-")
    upstream, upstream_port = bl.start_upstream()
    variants = dict(CANDIDATES)
    variants.update(EXTRAS)
    if not uvloop_available():
        del variants["aiohttp-uvloop"]
    cands = [Candidate("direct", "direct (no proxy)", upstream_port, None, [upstream.pid])]
    try:
        for name, label in variants.items():
            proc, port = start_candidate(name, upstream_port)
            cands.append(Candidate(name, label, port, proc, [proc.pid]))
        for cand in cands:
            bl.RawClient(cand.port).timed()  # answers correctly
        script = bl.write_wrk_script(tmp)
        print("latency at concurrency 1 ...", flush=True)
        for _ in range(plan["c1_rounds"]):
            for cand in cands:
                cand.c1 += bl.latency_run(cand.port, plan["c1_seconds"])
        print("wrk ...", flush=True)
        for cand in cands:
            bl.run_wrk(cand.port, script, 32, 1)  # warm the pools
        for conns, _round, cand in itertools.product(
            (1, 32, 128), range(plan["wrk_rounds"]), cands
        ):
            result = bl.run_wrk(cand.port, script, conns, plan["step"], cand.pids)
            cand.wrk.setdefault(conns, []).append(result)
            print(
                f"  {cand.name:24} c={conns:<3} {result.rps:8.0f} req/s  "
                f"p50 {result.p50_ms:6.2f}  p99 {result.p99_ms:6.2f} ms  "
                f"cpu {result.cpu_us_per_request:5.0f} µs/req",
                flush=True,
            )
    finally:
        for cand in cands:
            bl.stop_process(cand.proc)
        bl.stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    report = render(cands, plan, command, f"{priority}; {noise.finish()[0]}", started)
    print()
    print(report)
    if not quick:
        bl.replace_section(DOC, SECTION, report, "Benchmarks")
        print(f"\nwrote {DOC.relative_to(bl.REPO)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("serve", help="run one candidate")
    one.add_argument("variant", choices=[*CANDIDATES, *EXTRAS])
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument(
        "--quick", action="store_true", help="~1 minute smoke run, report not written"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of the benchmark and every server it starts (default -10; 0 leaves it)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (default 300, --quick 0)",
    )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.variant, args.port, args.upstream_port)
        return 0
    priority = bl.raise_priority(args.nice)
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 300)
    if wait:
        priority += "; " + bl.wait_for_quiet(wait)
    return measure(args.quick, priority)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())

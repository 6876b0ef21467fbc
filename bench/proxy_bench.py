"""The metering proxy against direct and nginx, side by side in one run.

    python bench/proxy_bench.py           # full run (~3 min); rewrites its section of the docs
    python bench/proxy_bench.py --quick   # ~1 min smoke run; prints the report only

Everything runs on loopback, each server in its own process:

* ``bench/upstream.py``: the fast upstream (a fixed ``chat.completion`` with usage, at once) and
  the slow one (64 SSE chunks 20 ms apart, then usage and ``[DONE]``);
* nginx (one worker) as a plain reverse proxy with a keep-alive upstream pool
  (``proxy_buffering off`` on the SSE port);
* the exporter itself: ``python -m exporter --config.file <tmp>`` with ``deepseek.base_url`` at
  the upstream, ``balance.poll_interval: 0s`` and one account whose key the load generators send
  (with a ``currency``, so every request also goes through the cost computation).

What measures what:

* latency at concurrency 1: a blocking raw-socket client (prebuilt request bytes, one
  keep-alive connection), rounds interleaved across targets so background load hits all alike;
* throughput and latency at concurrency 32: ``wrk -t1`` with a Lua script for the POST body,
  ramping connections until p99 passes 20 ms; CPU per request from ``/proc/<pid>/stat``
  (utime + stime of the middle process, across the c=32 step);
* streaming: an asyncio raw-socket client, 32 streams in flight, staggered; time to first
  token, gap between chunks, and each chunk's one-way delay (arrival minus the upstream's
  ``CLOCK_MONOTONIC`` send time carried in the chunk); plus time to first token with one short
  stream at a time, nothing else in flight;
* memory: 1,000 streams held open (one chunk a second), ``VmRSS`` from ``/proc/<pid>/status``.

The machine may be shared: a full run first waits (``--wait-quiet``, up to 300 s) for it to be
idle, runs everything at ``nice -10`` (``--nice``; every target alike), and reports how much CPU
other processes used meanwhile, with a warning in the report above 15 %. Nothing is pinned.
``--exporter-src DIR`` measures another copy of the ``exporter`` package (a patch to try).
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
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import benchlib as bl

TARGETS = ("direct", "nginx", "proxy")
SECTION = "proxy_bench"
DOC = bl.REPO / "docs" / "benchmarks.md"
# Targets (2-core machine), from issue 3.
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_RPS = 1500
TARGET_P99_CEILING_MS = 20.0
TARGET_ADDED_TTFT_MS = 2.0
TARGET_RSS_MB = 250
# Issue 14: ratios to nginx in the same run.
TARGET_CPU_PER_REQUEST_VS_NGINX = 5.0
TARGET_CPU_PER_CHUNK_VS_NGINX = 2.0
TARGET_ADDED_TTFT_32_MS = 0.5
STREAM_CHUNKS = 64
STREAM_INTERVAL_MS = 20
HELD_STREAMS = 1000
HOLD_PATH = f"{bl.CHAT_PATH}?interval_ms=1000&chunks=100000"
SHORT_STREAM_PATH = f"{bl.CHAT_PATH}?interval_ms=0&chunks=1"


@dataclass(frozen=True)
class Plan:
    c1_rounds: int
    c1_seconds: float  # per round per target
    ramp: tuple[int, ...]
    step_seconds: float
    c32_seconds: float
    stream_seconds: float  # per round per target
    stream_rounds: int
    ttft_alone_seconds: float  # per round per target
    stream_concurrency: int = 32


FULL = Plan(
    c1_rounds=6,
    c1_seconds=1.0,
    ramp=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    step_seconds=3,
    c32_seconds=6,
    stream_seconds=2.6,
    stream_rounds=3,
    ttft_alone_seconds=1.0,
)
QUICK = Plan(
    c1_rounds=1,
    c1_seconds=1.5,
    ramp=(1, 8, 32, 128),
    step_seconds=1,
    c32_seconds=2,
    stream_seconds=2.6,
    stream_rounds=1,
    ttft_alone_seconds=0.7,
)


@dataclass
class Target:
    name: str
    port: int  # fast upstream through this target
    stream_port: int  # slow upstream through this target
    pids: list[int]  # the process(es) whose CPU and memory are this target's cost
    c1: list[float] = field(default_factory=list)
    ramp: list[bl.WrkResult] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    streams: int = 0
    streams_ok: int = 0
    ttft_alone: list[float] = field(default_factory=list)
    stream_cpu_s: float = 0.0
    rss_idle: int = 0
    rss_held: int = 0
    rss_after: int = 0
    held_open: int = 0

    @property
    def stream_cpu(self) -> float:
        """CPU seconds of the middle process per full stream."""
        return self.stream_cpu_s / self.streams if self.streams else float("nan")

    def step(self, connections: int) -> bl.WrkResult | None:
        return next((r for r in self.ramp if r.connections == connections), None)

    @property
    def best(self) -> bl.WrkResult | None:
        ok = [
            r
            for r in self.ramp
            if r.p99_ms < TARGET_P99_CEILING_MS and not r.socket_errors and not r.non_2xx
        ]
        return max(ok, key=lambda r: r.rps, default=None)


# --------------------------------------------------------------------------------------------
# the exporter under test

EXPORTER_CONFIG = """\
deepseek:
  base_url: http://{host}:{upstream_port}
  timeout: 10s
balance:
  poll_interval: 0s
accounts:
  - name: bench
    api_key: {key}
    currency: CNY
web:
  listen_address: {host}:{web_port}
proxy:
  listen_address: {host}:{proxy_port}
"""


class Exporter:
    def __init__(self, tmp: Path, upstream_port: int, source: Path = bl.REPO) -> None:
        self.web_port = bl.free_port()
        self.port = bl.free_port()
        config = tmp / "exporter.yml"
        config.write_text(
            EXPORTER_CONFIG.format(
                host=bl.HOST,
                upstream_port=upstream_port,
                key=bl.API_KEY,
                web_port=self.web_port,
                proxy_port=self.port,
            )
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(config), "--log.level", "warn"],
            cwd=source,
        )
        bl.wait_port(self.port, proc=self.proc)
        bl.wait_port(self.web_port, proc=self.proc)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        with urllib.request.urlopen(f"http://{bl.HOST}:{self.web_port}/metrics") as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self) -> None:
        bl.stop_process(self.proc)


# --------------------------------------------------------------------------------------------
# phases


def check_targets(targets: list[Target]) -> None:
    """Each target answers a completion and a full stream correctly before anything is timed."""
    for target in targets:
        client = bl.RawClient(target.port)
        try:
            client.timed()
        finally:
            client.close()

        async def one_stream(port: int) -> bl.StreamResult:
            reader, writer = await asyncio.open_connection(bl.HOST, port)
            try:
                request = bl.build_request(port, bl.CHAT_PATH, bl.STREAM_BODY)
                return await bl.sse_request(reader, writer, request)
            finally:
                writer.close()

        result = asyncio.run(one_stream(target.stream_port))
        if len(result.arrivals_ns) != STREAM_CHUNKS or not result.done:
            raise RuntimeError(f"{target.name}: broken stream ({len(result.arrivals_ns)} chunks)")


def phase_c1(targets: list[Target], plan: Plan) -> None:
    for _ in range(plan.c1_rounds):
        for target in targets:
            target.c1 += bl.latency_run(target.port, plan.c1_seconds)


def phase_ramp(targets: list[Target], plan: Plan, script: Path) -> None:
    """Connections step by step, the targets interleaved at each step, until p99 passes 20 ms."""
    for target in targets:
        bl.run_wrk(target.port, script, 32, 1)  # warm the pools
    running = list(targets)
    for connections in plan.ramp:
        for target in list(running):
            seconds = plan.c32_seconds if connections == 32 else plan.step_seconds
            result = bl.run_wrk(target.port, script, connections, seconds, target.pids)
            target.ramp.append(result)
            print(
                f"  {target.name:6} c={connections:<3} {result.rps:8.0f} req/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                flush=True,
            )
            if result.p99_ms >= TARGET_P99_CEILING_MS and connections >= 32:
                running.remove(target)


async def _stream_load(target: Target, plan: Plan) -> None:
    """``stream_concurrency`` workers, staggered over one stream's length, each running full
    streams back to back on its own keep-alive connection for ``stream_seconds``."""
    request = bl.build_request(target.stream_port, bl.CHAT_PATH, bl.STREAM_BODY)
    stream_s = STREAM_CHUNKS * STREAM_INTERVAL_MS / 1000
    loop = asyncio.get_running_loop()
    end = loop.time() + plan.stream_seconds
    results: list[bl.StreamResult] = []

    async def worker(index: int) -> None:
        await asyncio.sleep(index * stream_s / plan.stream_concurrency)
        reader, writer = await asyncio.open_connection(bl.HOST, target.stream_port)
        try:
            while loop.time() < end:
                results.append(await bl.sse_request(reader, writer, request))
        finally:
            writer.close()

    cpu0 = bl.cpu_seconds(target.pids)
    await asyncio.gather(*(worker(i) for i in range(plan.stream_concurrency)))
    cpu = bl.cpu_seconds(target.pids) - cpu0
    for result in results:
        target.streams += 1
        target.streams_ok += result.done and len(result.arrivals_ns) == STREAM_CHUNKS
        target.ttft.append(result.ttft_ms)
        arrivals, sent = result.arrivals_ns, result.sent_ns
        target.gaps += [(b - a) / 1e6 for a, b in itertools.pairwise(arrivals)]
        target.delays += [(a - s) / 1e6 for a, s in zip(arrivals, sent, strict=True)]
    target.stream_cpu_s += cpu


async def _ttft_alone(target: Target, seconds: float) -> None:
    """One stream at a time (a single chunk, then usage and [DONE]): time to first token with
    nothing else in flight."""
    request = bl.build_request(target.stream_port, SHORT_STREAM_PATH, bl.STREAM_BODY)
    reader, writer = await asyncio.open_connection(bl.HOST, target.stream_port)
    try:
        await bl.sse_request(reader, writer, request)  # warm-up
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            target.ttft_alone.append((await bl.sse_request(reader, writer, request)).ttft_ms)
    finally:
        writer.close()


def phase_streams(targets: list[Target], plan: Plan) -> None:
    for _ in range(plan.stream_rounds):
        for target in targets:
            asyncio.run(_ttft_alone(target, plan.ttft_alone_seconds))
        for target in targets:
            asyncio.run(_stream_load(target, plan))


async def _hold(target: Target, exporter: Exporter | None) -> None:
    target.rss_idle = bl.rss_bytes(target.pids)
    held: list[tuple[asyncio.StreamWriter, asyncio.Task]] = []
    try:
        for _ in range(0, HELD_STREAMS, 100):
            batch = [bl.open_held_stream(target.stream_port, HOLD_PATH) for _ in range(100)]
            held += await asyncio.gather(*batch)
        await asyncio.sleep(2.5)  # every stream has passed a couple more chunks
        target.rss_held = bl.rss_bytes(target.pids)
        if exporter is not None:
            in_flight = await asyncio.to_thread(
                exporter.metric, "deepseek_requests_in_flight", account="bench"
            )
            target.held_open = int(in_flight)
        else:
            target.held_open = sum(not task.done() for _, task in held)
    finally:
        for writer, task in held:
            task.cancel()
            writer.close()
        await asyncio.gather(*(task for _, task in held), return_exceptions=True)
    await asyncio.sleep(2)
    target.rss_after = bl.rss_bytes(target.pids)


def phase_rss(targets: list[Target], exporter: Exporter) -> None:
    for target in targets:
        if target.name != "direct":
            asyncio.run(_hold(target, exporter if target.name == "proxy" else None))


# --------------------------------------------------------------------------------------------
# the report


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**MISS**"


def render(
    targets: dict[str, Target],
    plan: Plan,
    command: str,
    noise: str,
    metered: float,
    started: dt.datetime,
    exporter_at: str,
) -> tuple[str, list[tuple[str, str, str, bool]]]:
    d, n, p = targets["direct"], targets["nginx"], targets["proxy"]
    out: list[str] = []
    w = out.append

    def pct(values: list[float], q: float) -> float:
        return bl.percentile(values, q)

    # concurrency 1
    c1 = {t.name: (pct(t.c1, 50), pct(t.c1, 99)) for t in targets.values()}
    added_c1 = {k: (v[0] - c1["direct"][0], v[1] - c1["direct"][1]) for k, v in c1.items()}
    # concurrency 32
    c32 = {t.name: t.step(32) for t in targets.values()}
    w("### Latency of a non-streaming completion (fast upstream)\n")
    rows = []
    for label, q in (("p50", 0), ("p99", 1)):
        rows.append(
            [
                f"c=1 {label} (raw client)",
                *(bl.fmt(c1[t][q], 3) for t in TARGETS),
                bl.fmt(added_c1["nginx"][q], 3),
                bl.fmt(added_c1["proxy"][q], 3),
                bl.ratio(c1["proxy"][q], c1["direct"][q]),
                bl.ratio(c1["proxy"][q], c1["nginx"][q]),
            ]
        )
    for conns in (1, 32):
        for label, attr in (("p50", "p50_ms"), ("p99", "p99_ms")):
            steps = {t: targets[t].step(conns) for t in TARGETS}
            if any(s is None for s in steps.values()):
                continue
            vals = {t: getattr(s, attr) for t, s in steps.items()}
            rows.append(
                [
                    f"c={conns} {label} (wrk)",
                    *(bl.fmt(vals[t], 3) for t in TARGETS),
                    bl.fmt(vals["nginx"] - vals["direct"], 3),
                    bl.fmt(vals["proxy"] - vals["direct"], 3),
                    bl.ratio(vals["proxy"], vals["direct"]),
                    bl.ratio(vals["proxy"], vals["nginx"]),
                ]
            )
    w(
        bl.table(
            [
                "ms",
                "direct",
                "nginx",
                "proxy",
                "nginx added",
                "proxy added",
                "proxy / direct",
                "proxy / nginx",
            ],
            rows,
        )
    )
    w(
        f"\nc=1 (raw client): {len(d.c1):,} / {len(n.c1):,} / {len(p.c1):,} requests "
        f"(direct / nginx / proxy), {plan.c1_rounds} interleaved round(s). "
        "The wrk rows are closed-loop, so at c=32 latency is mostly queueing: 32 / throughput.\n"
    )

    w("### Throughput: highest req/s with p99 under 20 ms (wrk, ramping connections)\n")
    best = {t: targets[t].best for t in TARGETS}
    rows = []
    for t in TARGETS:
        b = best[t]
        rows.append(
            [
                t,
                bl.fmt(b.rps, 0) if b else "n/a",
                str(b.connections) if b else "n/a",
                bl.fmt(b.p99_ms, 2) if b else "n/a",
                bl.ratio(b.rps, best["direct"].rps) if b and best["direct"] else "n/a",
                bl.ratio(b.rps, best["nginx"].rps) if b and best["nginx"] else "n/a",
            ]
        )
    w(bl.table(["target", "req/s", "at connections", "p99 ms", "vs direct", "vs nginx"], rows))
    w("\nEvery step of the ramp (req/s, p99 ms):\n")
    conns_all = sorted({r.connections for t in targets.values() for r in t.ramp})
    rows = []
    for c in conns_all:
        row = [str(c)]
        for t in TARGETS:
            s = targets[t].step(c)
            row.append(f"{s.rps:,.0f} / {s.p99_ms:.2f}" if s else "-")
        rows.append(row)
    w(bl.table(["connections", "direct", "nginx", "proxy"], rows))
    errors = sum(r.socket_errors + r.non_2xx for t in targets.values() for r in t.ramp)
    w(f"\nSocket errors and non-2xx responses over the whole ramp: {errors}.\n")

    w("### CPU time per request (wrk, c=32)\n")
    rows = [
        [
            "CPU µs / request",
            *(bl.fmt(c32[t].cpu_us_per_request, 1) if c32[t] else "n/a" for t in TARGETS),
            bl.ratio(c32["proxy"].cpu_us_per_request, c32["nginx"].cpu_us_per_request)
            if c32["proxy"] and c32["nginx"]
            else "n/a",
        ]
    ]
    w(
        bl.table(
            [
                "",
                "direct (the upstream itself)",
                "nginx (worker)",
                "proxy (exporter)",
                "proxy / nginx",
            ],
            rows,
        )
    )
    w(
        "\nutime + stime from `/proc/<pid>/stat` over the c=32 step, divided by the requests wrk "
        "completed. The direct column is the upstream's own cost, for scale.\n"
    )

    w(
        f"### Streaming ({STREAM_CHUNKS} chunks {STREAM_INTERVAL_MS} ms apart, "
        f"{plan.stream_concurrency} streams in flight unless said otherwise)\n"
    )
    rows = []
    for label, values, q in (
        ("time to first token p50", "ttft", 50),
        ("time to first token p99", "ttft", 99),
        ("time to first token p50, one stream at a time", "ttft_alone", 50),
        ("time to first token p99, one stream at a time", "ttft_alone", 99),
        ("gap between chunks p50", "gaps", 50),
        ("gap between chunks p99", "gaps", 99),
        ("chunk delivery delay p50", "delays", 50),
        ("chunk delivery delay p99", "delays", 99),
    ):
        v = {t: pct(getattr(targets[t], values), q) for t in TARGETS}
        rows.append(
            [
                label,
                *(bl.fmt(v[t], 3) for t in TARGETS),
                bl.fmt(v["nginx"] - v["direct"], 3),
                bl.fmt(v["proxy"] - v["direct"], 3),
                bl.ratio(v["proxy"], v["nginx"]),
            ]
        )
    rows.append(
        [
            "CPU ms / stream",
            *(bl.fmt(targets[t].stream_cpu * 1000, 2) for t in TARGETS),
            "",
            "",
            bl.ratio(p.stream_cpu, n.stream_cpu),
        ]
    )
    w(
        bl.table(
            ["ms", "direct", "nginx", "proxy", "nginx added", "proxy added", "proxy / nginx"], rows
        )
    )
    w(
        f"\nStreams completed intact (all {STREAM_CHUNKS} chunks, usage, `[DONE]`): "
        + ", ".join(f"{t} {targets[t].streams_ok}/{targets[t].streams}" for t in TARGETS)
        + ". Delivery delay = arrival at the client minus the upstream's send time stamped in the "
        "chunk (both `CLOCK_MONOTONIC`): the latency each chunk picks up on its way. CPU per "
        "stream: the middle process (for direct, the upstream). One stream at a time: "
        f"`{SHORT_STREAM_PATH}` back to back on one connection, nothing else in flight "
        f"({len(p.ttft_alone):,} proxy samples); it isolates the path to the first token from "
        "the load of other streams.\n"
    )

    w(f"### Memory with {HELD_STREAMS:,} concurrent slow streams open\n")
    mb = 1024 * 1024
    rows = [
        [
            "RSS before (idle, after the load above)",
            "-",
            bl.fmt(n.rss_idle / mb, 1),
            bl.fmt(p.rss_idle / mb, 1),
        ],
        [
            f"RSS with {HELD_STREAMS:,} streams open",
            "-",
            bl.fmt(n.rss_held / mb, 1),
            bl.fmt(p.rss_held / mb, 1),
        ],
        [
            "per open stream (KiB)",
            "-",
            bl.fmt((n.rss_held - n.rss_idle) / 1024 / HELD_STREAMS, 1),
            bl.fmt((p.rss_held - p.rss_idle) / 1024 / HELD_STREAMS, 1),
        ],
        [
            "RSS 2 s after they closed",
            "-",
            bl.fmt(n.rss_after / mb, 1),
            bl.fmt(p.rss_after / mb, 1),
        ],
    ]
    w(bl.table(["MB", "direct", "nginx (master + worker)", "proxy (exporter)"], rows))
    w(
        f"\nStreams from the slow upstream at one chunk a second (`{HOLD_PATH}`), opened 100 at a "
        f"time, each drained by the client; measured 2.5 s after the last opened. The proxy's own "
        f"`deepseek_requests_in_flight` read {p.held_open:,} at that moment.\n"
    )

    # targets
    checks = [
        (
            "added p50 at c=1",
            f"<= {TARGET_ADDED_P50_MS} ms",
            f"{added_c1['proxy'][0]:.3f} ms",
            added_c1["proxy"][0] <= TARGET_ADDED_P50_MS,
        ),
        (
            "added p99 at c=1",
            f"<= {TARGET_ADDED_P99_MS} ms",
            f"{added_c1['proxy'][1]:.3f} ms",
            added_c1["proxy"][1] <= TARGET_ADDED_P99_MS,
        ),
        (
            "throughput with p99 < 20 ms",
            f">= {TARGET_RPS:,} req/s",
            f"{best['proxy'].rps:,.0f} req/s" if best["proxy"] else "none",
            bool(best["proxy"] and best["proxy"].rps >= TARGET_RPS),
        ),
    ]
    ttft_added = pct(p.ttft, 50) - pct(d.ttft, 50)
    if c32["proxy"] and c32["nginx"]:
        per_request = c32["proxy"].cpu_us_per_request / c32["nginx"].cpu_us_per_request
        checks.append(
            (
                "CPU per non-streaming request vs nginx",
                f"<= {TARGET_CPU_PER_REQUEST_VS_NGINX:g}x",
                f"{per_request:.2f}x ({c32['proxy'].cpu_us_per_request:.1f} vs "
                f"{c32['nginx'].cpu_us_per_request:.1f} µs)",
                per_request <= TARGET_CPU_PER_REQUEST_VS_NGINX,
            )
        )
    chunks = STREAM_CHUNKS + 2  # the data events, then usage and [DONE]
    per_chunk = p.stream_cpu / n.stream_cpu
    checks.append(
        (
            "CPU per streamed chunk vs nginx",
            f"<= {TARGET_CPU_PER_CHUNK_VS_NGINX:g}x",
            f"{per_chunk:.2f}x ({p.stream_cpu / chunks * 1e6:.1f} vs "
            f"{n.stream_cpu / chunks * 1e6:.1f} µs, the stream's request included)",
            per_chunk <= TARGET_CPU_PER_CHUNK_VS_NGINX,
        )
    )
    checks.append(
        (
            "added time to first token, 32 streams (p50)",
            f"<= {TARGET_ADDED_TTFT_32_MS} ms",
            f"{ttft_added:.3f} ms",
            ttft_added <= TARGET_ADDED_TTFT_32_MS,
        )
    )
    checks.append(
        (
            "added time to first token (p50)",
            f"<= {TARGET_ADDED_TTFT_MS} ms",
            f"{ttft_added:.3f} ms with {plan.stream_concurrency} streams in flight (p99 "
            f"{pct(p.ttft, 99) - pct(d.ttft, 99):.3f} ms); alone: p50 "
            f"{pct(p.ttft_alone, 50) - pct(d.ttft_alone, 50):.3f} ms",
            ttft_added <= TARGET_ADDED_TTFT_MS,
        )
    )
    checks.append(
        (
            f"RSS with {HELD_STREAMS:,} streams",
            f"< {TARGET_RSS_MB} MB",
            f"{p.rss_held / mb:.1f} MB",
            p.rss_held / mb < TARGET_RSS_MB and p.held_open >= HELD_STREAMS,
        )
    )
    summary = bl.table(
        ["target (2-core machine)", "goal", "proxy", ""],
        [[name, goal, got, verdict(ok)] for name, goal, got, ok in checks],
    )

    facts = [
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}`",
        f"- CPU: {bl.cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}",
        f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"nginx {bl.nginx_version()}, wrk {bl.wrk_version()}",
        f"- Exporter: {exporter_at}",
        f"- Background: {noise}",
        f"- Requests metered by the proxy during the run (`deepseek_requests_total`, account "
        f"bench): {metered:,.0f}",
    ]
    head = [
        "## Metering proxy vs direct vs nginx",
        "",
        "Generated by `bench/proxy_bench.py`; do not edit by hand. All three targets in one run, "
        "on loopback: **direct** (client to upstream), **nginx** (one worker, plain reverse proxy, "
        "keep-alive upstream pool, `proxy_buffering off` for SSE) and **proxy** (this exporter's "
        "proxy listener, in its own process, with metering on). The upstream is "
        "`bench/upstream.py`; the load generators are described in the script's docstring.",
        "",
        *facts,
        "",
        "### Targets",
        "",
        summary,
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(out), checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"rewrite the section in {DOC.relative_to(bl.REPO)} (default: yes unless --quick)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of the benchmark and every server it starts (default -10; 0 leaves it)",
    )
    parser.add_argument(
        "--exporter-src",
        type=Path,
        default=bl.REPO,
        metavar="DIR",
        help="directory holding the exporter package to measure (default: this repository), "
        "to try a patch before committing it",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (default 300, --quick 0)",
    )
    args = parser.parse_args()
    priority = bl.raise_priority(args.nice)
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 300)
    if wait:
        priority += "; " + bl.wait_for_quiet(wait)
    plan = QUICK if args.quick else FULL
    write = args.write if args.write is not None else not args.quick
    command = " ".join(["python bench/proxy_bench.py", *sys.argv[1:]])
    started = dt.datetime.now(dt.UTC)

    noise = bl.Noise()
    tmp = bl.make_tmp("proxy-bench-")
    upstream = nginx = exporter = None
    try:
        upstream, upstream_port = bl.start_upstream()
        nginx = bl.Nginx(tmp, upstream_port)
        exporter = Exporter(tmp, upstream_port, args.exporter_src.resolve())
        targets = [
            Target("direct", upstream_port, upstream_port, [upstream.pid]),
            Target("nginx", nginx.fast_port, nginx.stream_port, nginx.pids()),
            Target("proxy", exporter.port, exporter.port, [exporter.proc.pid]),
        ]
        check_targets(targets)
        script = bl.write_wrk_script(tmp)
        print("latency at concurrency 1 ...", flush=True)
        phase_c1(targets, plan)
        print("throughput ramp (wrk) ...", flush=True)
        phase_ramp(targets, plan, script)
        print("streaming ...", flush=True)
        phase_streams(targets, plan)
        print(f"{HELD_STREAMS} held streams ...", flush=True)
        phase_rss(targets, exporter)
        metered = exporter.metric("deepseek_requests_total", account="bench")
    finally:
        for stop in (exporter, nginx):
            if stop is not None:
                stop.stop()
        bl.stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    report, checks = render(
        {t.name: t for t in targets},
        plan,
        command,
        f"{priority}; {noise.finish()[0]}",
        metered,
        started,
        bl.git_state() if args.exporter_src.resolve() == bl.REPO else str(args.exporter_src),
    )
    print()
    print(report)
    if write:
        bl.replace_section(DOC, SECTION, report, "Benchmarks")
        print(f"\nwrote {DOC.relative_to(bl.REPO)}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())

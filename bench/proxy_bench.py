"""The metering proxy against direct, nginx and (``--peers``) LiteLLM, side by side in one run.

    python bench/proxy_bench.py            # full run (~12 min); rewrites its section of the docs
    python bench/proxy_bench.py --peers    # the same, with LiteLLM's proxy (installed on first use)
    python bench/proxy_bench.py --quick    # ~5 min smoke run; prints the report only

Everything runs on loopback, each server in its own process:

* ``bench/upstream.py``: the fast upstream (a fixed ``chat.completion`` with usage, at once) and
  the slow one (SSE chunks at a steady pace, then usage and ``[DONE]``);
* nginx as a plain reverse proxy with a keep-alive upstream pool (``proxy_buffering off`` on the
  SSE port), with one worker and with two;
* the exporter itself: ``python -m exporter --config.file <tmp>`` with ``deepseek.base_url`` at
  the upstream, ``balance.poll_interval: 0s`` and one account whose key the load generators send
  (with a ``currency``, so every request also goes through the cost computation); with one
  proxy process, and with ``--proxy.workers 2``;
* with ``--peers``, LiteLLM's proxy (``bench/peers.py``: its own virtualenv, a pass-through, no
  database, no callbacks), one worker.

What measures what:

* latency at concurrency 1: a blocking raw-socket client (prebuilt request bytes, one
  keep-alive connection; each answer checked: a 200 with usage), rounds interleaved across
  targets so background load hits all alike;
* throughput: ``wrk -t1`` with a Lua script for the POST body, ramping connections until p99
  passes 20 ms, the targets interleaved at each step; CPU per request from ``/proc/<pid>/stat``
  (utime + stime of the target's processes, across the c=32 step);
* streaming: an asyncio raw-socket client, 32 streams in flight, staggered; time to first
  token, gap between chunks, and each chunk's one-way delay (arrival minus the upstream's
  ``CLOCK_MONOTONIC`` send time carried in the chunk); plus time to first token with one short
  stream at a time, nothing else in flight; every stream checked whole;
* streaming capacity (``bench/stream_capacity.py``): the most concurrent streams at 30 chunks a
  second each target carries with chunk delivery delay p99 under 50 ms, every stream checked
  whole;
* memory: 1,000 streams held open (one chunk a second), ``VmRSS`` from ``/proc/<pid>/status``;
* counting: the exporter's ``deepseek_requests_total`` against what the clients sent.

The machine may be shared: a full run first waits (``--wait-quiet``, up to 300 s) for it to be
idle, runs everything at ``nice -10`` (``--nice``; every target alike), and reports how much CPU
other processes used meanwhile, with a warning in the report above 15 %. Nothing is pinned.
``--exporter-src DIR`` measures another copy of the ``exporter`` package (a patch to try).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

import benchlib as bl
import proxy_report
import stream_capacity as sc

SECTION = "proxy_bench"
DOC = bl.REPO / "docs" / "benchmarks.md"
STREAM_CHUNKS = 64
STREAM_INTERVAL_MS = 20
HELD_STREAMS = 1000
HOLD_WAIT = 20.0  # seconds a batch of held streams may take to get their first events
STREAM_REQUEST = bl.stream_body()
# Stream shapes go in the body: LiteLLM does not forward a query string.
HOLD_BODY = bl.stream_body(chunks=100_000, interval_ms=1000)
SHORT_BODY = bl.stream_body(chunks=1, interval_ms=0)


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
    capacity: sc.CapacityPlan
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
    capacity=sc.FULL_CAPACITY,
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
    capacity=sc.QUICK_CAPACITY,
)

# Which targets take part in which phase: the 2-worker ones are there for throughput and
# streaming capacity, what a second process is for.
SINGLE = ("direct", "nginx", "proxy", "litellm")
SCALED = ("direct", "nginx", "nginx2", "proxy", "proxy2", "litellm")
HELD = ("nginx", "proxy", "litellm")


@dataclass
class Target:
    key: str
    label: str
    port: int  # fast upstream through this target
    stream_port: int  # slow upstream through this target
    processes: Callable[[], list[int]]  # the pids whose CPU and memory are this target's cost
    metered: Callable[[], float] | None = None  # the exporter's count of requests, if it is one
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
    capacity: sc.Capacity | None = None
    # (phase, sent by the clients, counted by the exporter, in flight when wrk stopped at most)
    counts: list[tuple[str, int, int, int]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return self.processes()

    @property
    def stream_cpu(self) -> float:
        """CPU seconds of the target per full stream."""
        return self.stream_cpu_s / self.streams if self.streams else float("nan")

    def step(self, connections: int) -> bl.WrkResult | None:
        return next((r for r in self.ramp if r.connections == connections), None)

    @property
    def best(self) -> bl.WrkResult | None:
        ok = [
            r
            for r in self.ramp
            if r.p99_ms < proxy_report.TARGET_P99_CEILING_MS
            and not r.socket_errors
            and not r.non_2xx
        ]
        return max(ok, key=lambda r: r.rps, default=None)

    @contextlib.contextmanager
    def counting(self, phase: str, in_flight: int = 0):  # type: ignore[no-untyped-def]
        """Count what the body of the ``with`` sends (``sent[0]``) against the exporter's count."""
        sent = [0]
        before = self.metered() if self.metered else 0.0
        yield sent
        if self.metered:
            time.sleep(0.5)  # requests that wrk stopped waiting for finish
            counted = int(self.metered() - before)
            self.counts.append((phase, sent[0], counted, in_flight))


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
  workers: {workers}
"""


class Exporter:
    def __init__(
        self, tmp: Path, upstream_port: int, source: Path = bl.REPO, workers: int = 1
    ) -> None:
        self.web_port = bl.free_port()
        self.port = bl.free_port()
        self.workers = workers
        config = tmp / f"exporter-{workers}.yml"
        config.write_text(
            EXPORTER_CONFIG.format(
                host=bl.HOST,
                upstream_port=upstream_port,
                key=bl.API_KEY,
                web_port=self.web_port,
                proxy_port=self.port,
                workers=workers,
            )
        )
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "exporter",
                "--config.file", str(config),
                "--storage.path", str(tmp / f"storage-{workers}"),
                "--log.level", "warn",
            ],
            cwd=source,
        )  # fmt: skip
        bl.wait_port(self.port, proc=self.proc)
        bl.wait_port(self.web_port, proc=self.proc)
        deadline = time.monotonic() + 15
        while workers > 1 and len(self.pids()) < workers + 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} proxy workers did not start")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The exporter and its proxy workers (multiprocessing may add a resource tracker,
        whose CPU is the exporter's too)."""
        return [self.proc.pid, *bl.child_pids(self.proc.pid)]

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

    def requests(self) -> float:
        return self.metric("deepseek_requests_total", account="bench")

    def stop(self) -> None:
        bl.stop_process(self.proc, timeout=40)


# --------------------------------------------------------------------------------------------
# phases


async def _one_stream(port: int, body: bytes = STREAM_REQUEST) -> bl.StreamResult:
    reader, writer = await asyncio.open_connection(bl.HOST, port)
    try:
        return await bl.sse_request(reader, writer, bl.build_request(port, bl.CHAT_PATH, body))
    finally:
        writer.close()


def check_targets(targets: list[Target]) -> None:
    """Each target answers a completion and a full stream correctly before anything is timed
    (a cold LiteLLM takes its first requests slowly: these warm it too)."""
    for target in targets:
        client = bl.RawClient(target.port)
        try:
            for _ in range(3):
                client.timed()
        finally:
            client.close()
        result = asyncio.run(_one_stream(target.stream_port))
        if len(result.arrivals_ns) != STREAM_CHUNKS or not result.done:
            raise RuntimeError(f"{target.key}: broken stream ({len(result.arrivals_ns)} chunks)")


def phase_c1(targets: list[Target], plan: Plan) -> None:
    for _ in range(plan.c1_rounds):
        for target in targets:
            target.c1 += bl.latency_run(target.port, plan.c1_seconds)


def phase_ramp(targets: list[Target], plan: Plan, script: Path) -> None:
    """Connections step by step, the targets interleaved at each step, until p99 passes 20 ms."""
    in_flight = {t.key: 32 + sum(plan.ramp) for t in targets}
    with contextlib.ExitStack() as stack:
        sent = {
            t.key: stack.enter_context(t.counting("wrk ramp", in_flight[t.key])) for t in targets
        }
        for target in targets:
            sent[target.key][0] += bl.run_wrk(target.port, script, 32, 1).requests  # warm pools
        running = list(targets)
        for connections in plan.ramp:
            for target in list(running):
                seconds = plan.c32_seconds if connections == 32 else plan.step_seconds
                result = bl.run_wrk(target.port, script, connections, seconds, target.pids)
                target.ramp.append(result)
                sent[target.key][0] += result.requests
                print(
                    f"  {target.key:8} c={connections:<3} {result.rps:8.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms",
                    flush=True,
                )
                if result.p99_ms >= proxy_report.TARGET_P99_CEILING_MS and connections >= 32:
                    running.remove(target)


async def _stream_load(target: Target, plan: Plan) -> int:
    """``stream_concurrency`` workers, staggered over one stream's length, each running full
    streams back to back on its own keep-alive connection for ``stream_seconds``."""
    request = bl.build_request(target.stream_port, bl.CHAT_PATH, STREAM_REQUEST)
    stream_s = STREAM_CHUNKS * STREAM_INTERVAL_MS / 1000
    loop = asyncio.get_running_loop()
    end = loop.time() + plan.stream_seconds
    results: list[bl.StreamResult] = []

    async def worker(index: int) -> None:
        # Spread over one stream's length, and over one chunk interval too: the upstream paces
        # a stream from its request on, and streams started a multiple of the interval apart
        # would send their chunks at the same instants, in bursts no real traffic has.
        n = plan.stream_concurrency
        await asyncio.sleep(index * (stream_s + STREAM_INTERVAL_MS / 1000) / n)
        reader, writer = await asyncio.open_connection(bl.HOST, target.stream_port)
        try:
            while loop.time() < end:
                results.append(await bl.sse_request(reader, writer, request))
        finally:
            writer.close()

    pids = target.pids
    cpu0 = bl.cpu_seconds(pids)
    await asyncio.gather(*(worker(i) for i in range(plan.stream_concurrency)))
    cpu = bl.cpu_seconds(pids) - cpu0
    for result in results:
        target.streams += 1
        target.streams_ok += result.done and len(result.arrivals_ns) == STREAM_CHUNKS
        target.ttft.append(result.ttft_ms)
        arrivals, sent = result.arrivals_ns, result.sent_ns
        target.gaps += [(b - a) / 1e6 for a, b in itertools.pairwise(arrivals)]
        target.delays += [(a - s) / 1e6 for a, s in zip(arrivals, sent, strict=True)]
    target.stream_cpu_s += cpu
    return len(results)


async def _ttft_alone(target: Target, seconds: float) -> int:
    """One stream at a time (a single chunk, then usage and [DONE]): time to first token with
    nothing else in flight."""
    request = bl.build_request(target.stream_port, bl.CHAT_PATH, SHORT_BODY)
    reader, writer = await asyncio.open_connection(bl.HOST, target.stream_port)
    sent = 1
    try:
        await bl.sse_request(reader, writer, request)  # warm-up
        end = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < end:
            result = await bl.sse_request(reader, writer, request)
            sent += 1
            if not result.done or len(result.arrivals_ns) != 1:
                raise RuntimeError(f"{target.key}: broken short stream")
            target.ttft_alone.append(result.ttft_ms)
    finally:
        writer.close()
    return sent


def phase_streams(targets: list[Target], plan: Plan) -> None:
    with contextlib.ExitStack() as stack:
        sent = {t.key: stack.enter_context(t.counting("streams")) for t in targets}
        for _ in range(plan.stream_rounds):
            for target in targets:
                sent[target.key][0] += asyncio.run(_ttft_alone(target, plan.ttft_alone_seconds))
            for target in targets:
                sent[target.key][0] += asyncio.run(_stream_load(target, plan))


async def _hold(target: Target) -> None:
    """Open ``HELD_STREAMS`` slow streams, 100 at a time; a stream counts as open once its first
    event arrived. A target that queues streams past a limit of its own (LiteLLM holds 500
    upstream connections) holds what it holds: its later streams get no first event within
    ``HOLD_WAIT`` and are not counted."""
    pids = target.pids
    target.rss_idle = bl.rss_bytes(pids)
    held: list[tuple[asyncio.StreamWriter, asyncio.Task]] = []
    pending: list[asyncio.Task] = []
    try:
        for _ in range(0, HELD_STREAMS, 100):
            batch = [
                asyncio.ensure_future(bl.open_held_stream(target.stream_port, HOLD_BODY))
                for _ in range(100)
            ]
            done, waiting = await asyncio.wait(batch, timeout=HOLD_WAIT)
            held += [task.result() for task in done if task.exception() is None]
            pending += waiting
            if waiting:
                break  # the target holds no more
        await asyncio.sleep(2.5)  # every stream has passed a couple more chunks
        target.rss_held = bl.rss_bytes(pids)
        target.held_open = sum(not task.done() for _, task in held)
    finally:
        for task in pending:
            task.cancel()
        for writer, task in held:
            task.cancel()
            writer.close()
        await asyncio.gather(*pending, *(task for _, task in held), return_exceptions=True)
    await asyncio.sleep(2)
    target.rss_after = bl.rss_bytes(pids)


def phase_rss(targets: list[Target]) -> None:
    for target in targets:
        with target.counting("held streams") as sent:
            asyncio.run(_hold(target))
            sent[0] = target.held_open


def phase_capacity(targets: list[Target], plan: Plan) -> None:
    for target in targets:
        with target.counting("capacity") as sent:
            pids = target.pids
            target.capacity = uvloop.run(
                sc.find_capacity(
                    target.key,
                    target.stream_port,
                    bl.CHAT_PATH,
                    plan.capacity,
                    lambda pids=pids: bl.cpu_seconds(pids),
                )
            )
            sent[0] = sum(s.streams - s.refused for s in target.capacity.steps)


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~5 minute smoke run")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also run LiteLLM's proxy (installed into bench/.peers/ on first use)",
    )
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
    if args.peers:
        import peers

        peers.ensure_litellm()  # before anything is timed: the first install takes a minute
    priority = bl.raise_priority(args.nice)
    wait = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 300)
    if wait:
        priority += "; " + bl.wait_for_quiet(wait)
    plan = QUICK if args.quick else FULL
    write = args.write if args.write is not None else not args.quick
    command = " ".join(["python bench/proxy_bench.py", *sys.argv[1:]])
    started = dt.datetime.now(dt.UTC)
    source = args.exporter_src.resolve()

    noise = bl.Noise()
    tmp = bl.make_tmp("proxy-bench-")
    upstream = None
    servers: list = []
    targets: dict[str, Target] = {}
    try:
        upstream, upstream_port = bl.start_upstream()
        targets["direct"] = Target(
            "direct", "direct", upstream_port, upstream_port, lambda: [upstream.pid]
        )
        for workers, key, label in ((1, "nginx", "nginx"), (2, "nginx2", "nginx, 2 workers")):
            nginx = bl.Nginx(tmp, upstream_port, workers)
            servers.append(nginx)
            targets[key] = Target(key, label, nginx.fast_port, nginx.stream_port, nginx.pids)
        for workers, key, label in ((1, "proxy", "proxy"), (2, "proxy2", "proxy, 2 workers")):
            exporter = Exporter(tmp, upstream_port, source, workers)
            servers.append(exporter)
            targets[key] = Target(
                key, label, exporter.port, exporter.port, exporter.pids, exporter.requests
            )
        if args.peers:
            litellm = peers.LiteLLM(tmp, upstream_port)
            servers.append(litellm)
            label = f"LiteLLM {peers.LITELLM_VERSION}"
            targets["litellm"] = Target("litellm", label, litellm.port, litellm.port, litellm.pids)

        def among(keys: tuple[str, ...]) -> list[Target]:
            return [targets[k] for k in keys if k in targets]

        check_targets(list(targets.values()))
        script = bl.write_wrk_script(tmp)
        print("latency at concurrency 1 ...", flush=True)
        phase_c1(among(SINGLE), plan)
        print("throughput ramp (wrk) ...", flush=True)
        phase_ramp(among(SCALED), plan, script)
        print("streaming ...", flush=True)
        phase_streams(among(SINGLE), plan)
        print(f"{HELD_STREAMS} held streams ...", flush=True)
        phase_rss(among(HELD))
        print("streaming capacity ...", flush=True)
        phase_capacity(among(SCALED), plan)
    finally:
        for server in reversed(servers):
            server.stop()
        bl.stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    report, checks = proxy_report.render(
        targets,
        proxy_report.RunFacts(
            command=command,
            noise=f"{priority}; {noise.finish()[0]}",
            started=started,
            exporter_at=bl.git_state() if source == bl.REPO else str(source),
            stream_chunks=STREAM_CHUNKS,
            stream_interval_ms=STREAM_INTERVAL_MS,
            held_streams=HELD_STREAMS,
            plan=dataclasses.asdict(plan),
        ),
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

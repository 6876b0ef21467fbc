"""Soak: mixed traffic with faults through the metering proxy for a long while; the exporter's
memory and file descriptors must stay flat and its counters must match what the clients saw.

    python bench/soak.py                          # 30 minutes, rewrites the Soak section of
                                                  # docs/benchmarks.md
    python bench/soak.py --minutes 1 --no-doc     # smoke run: prints the report only

What runs, each in its own process, on loopback:

* the simulator, ``python -m exporter simulate`` (its demo accounts, balances raised so that
  they never run dry), streams of 12 chunks 50 ms apart;
* the exporter, ``python -m exporter --config.file <tmp>/deepseek.yml``: two accounts
  (``demo-cny``, ``demo-usd``), ``poll_interval: 5s``, ``proxy.timeout: 2s``,
  ``proxy.max_body_bytes: 1 MiB``;
* this script: an aiohttp client sending requests at ``--rate`` per second (Poisson arrivals, at
  most ``--concurrency`` at once) in a mix of non-streaming and streaming chat completions, FIM,
  Anthropic messages, unknown keys, a key of an account the exporter does not know, bad JSON,
  oversized bodies, clients that go away mid-stream or before the response head; and a chaos
  task that queues a random simulator fault (``/_simulator/faults``: error statuses, HTML pages,
  malformed JSON and SSE, dropped and reset connections, stalls and delays beyond and within
  ``proxy.timeout``, replies without usage, 4 MB replies) every ``--fault-interval`` seconds.

Every 10 s it samples the exporter's ``VmRSS`` (``/proc/PID/status``) and open descriptors
(``/proc/PID/fd``) and checks ``/-/healthy``. At the end it stops the traffic, waits for the
in-flight requests, then up to 90 s for the descriptor count to return to its idle baseline (the
proxy closes an idle upstream connection 30 to 60 s after its last use: a 30 s keep-alive,
enforced by aiohttp every 30 s), and compares what the clients saw with
``deepseek_requests_total``, ``deepseek_upstream_errors_total``, ``deepseek_stream_aborts_total``,
``deepseek_proxy_rejected_requests_total`` and with the simulator's ``/_simulator/stats``.

Every request is classified by what its client saw, not by what it was meant to provoke: faults
are consumed by whichever request comes next, so only observation is exact.

Verdicts: **flat** when RSS grew less than 10 % from the end of the warm-up (5 minutes, or a
third of a shorter run) to the end of the traffic, and the descriptor count is back to the idle
baseline (+2) within 90 s of the drain; **consistent** when every client-side count equals the
exporter's, and the simulator received exactly the requests the clients sent per account.
Raw samples go to ``bench/results/soak-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
ACCOUNTS = {"demo-cny": ("sk-sim-demo-cny", "CNY"), "demo-usd": ("sk-sim-demo-usd", "USD")}
FOREIGN_KEY = "sk-sim-demo-both"  # valid upstream, unknown to the exporter: account "unknown"
UNKNOWN_KEY = "sk-soak-nobody-0000"
ALL_KEYS = (*(k for k, _ in ACCOUNTS.values()), FOREIGN_KEY, UNKNOWN_KEY)
CHAT = "/chat/completions"
MESSAGES_PATH = "/anthropic/v1/messages"
FIM = "/beta/completions"
PROXY_ERRORS = {
    "upstream_unreachable": "connect",
    "upstream_timeout": "timeout",
    "upstream_reset": "reset",
}
SAMPLE_EVERY = 10.0
# The proxy closes an idle upstream connection 30 s after its last use, at aiohttp's next cleanup
# round (every 30 s): 30 to 60 s. Descriptors get this long to return to the idle baseline.
IDLE_POOL_WAIT = 90.0
MAX_BODY = 1 << 20
FD_SLACK = 2  # descriptors "back to baseline": at most this many above the idle count
WORDS = ["balance", "burn", "rate", "top", "up", "tokens", "cache", "stream", "proxy"]
# (weight, scenario)
SCENARIOS = [
    (30, "chat"),
    (28, "chat_stream"),
    (5, "fim"),
    (5, "anthropic"),
    (6, "disconnect_mid_stream"),
    (3, "disconnect_before_head"),
    (4, "unknown_key"),
    (3, "foreign_key"),
    (3, "bad_json"),
    (1, "oversized"),
]
# Faults the chaos task queues for the next chat completion, whoever sends it: (weight, fault).
FAULTS: list[tuple[int, dict[str, Any]]] = [
    (3, {"kind": "status", "status": 429}),
    (2, {"kind": "status", "status": 500}),
    (2, {"kind": "status", "status": 503}),
    (1, {"kind": "status", "status": 402}),
    (1, {"kind": "status", "status": 400}),
    (2, {"kind": "html"}),
    (2, {"kind": "non_json"}),
    (
        2,
        {
            "kind": "body",
            "content_type": "text/event-stream",
            "body_text": 'data: {"usage": {"prompt_tokens": 1\n\ndata: {broken\n\ndata: [DONE',
        },
    ),
    (2, {"kind": "drop"}),
    (3, {"kind": "reset", "after_chunks": 3}),
    (2, {"kind": "stall", "seconds": 3.0, "after_chunks": 2}),  # beyond proxy.timeout
    (2, {"kind": "stall", "seconds": 0.3, "after_chunks": 2}),  # within
    (2, {"kind": "delay", "seconds": 3.0}),  # beyond: 504
    (2, {"kind": "delay", "seconds": 0.3}),  # within
    (3, {"kind": "no_usage"}),
    (1, {"kind": "huge", "size": 4_000_000}),
]


# --- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw, in the exporter's terms."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (account, code)
    upstream_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    aborts: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)  # completions that reached upstream
    # ... of which ended while the simulator still held them in a "delay" fault (the client left
    # before the head, or the proxy gave up with 504): it had not identified their account yet.
    unattributed: Counter[str] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    anomalies: list[str] = field(default_factory=list)
    sent: int = 0


@dataclass
class Sample:
    t: float  # seconds since the traffic started (negative: before)
    rss_kib: int
    fds: int
    healthy: bool
    sent: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- processes -------------------------------------------------------------------------------


def start_simulator(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    log = (tmp / "simulator.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--listen-address", f"{HOST}:0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("the simulator did not start; see simulator.log")


def write_config(tmp: Path, sim_url: str, web_port: int, proxy_port: int) -> Path:
    accounts = "\n".join(
        f"  - {{name: {name}, api_key_env: SOAK_KEY_{i}, low_balance_threshold: 5}}"
        for i, name in enumerate(ACCOUNTS)
    )
    file = tmp / "deepseek.yml"
    file.write_text(
        f"deepseek: {{base_url: '{sim_url}', timeout: 2s}}\n"
        "balance: {poll_interval: 5s, max_staleness: 1m}\n"
        f"accounts:\n{accounts}\n"
        f"web: {{listen_address: '{HOST}:{web_port}', shutdown_timeout: 5s}}\n"
        f"proxy: {{listen_address: '{HOST}:{proxy_port}', timeout: 2s, "
        f"max_body_bytes: {MAX_BODY}}}\n"
    )
    return file


def start_exporter(tmp: Path, config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for i, (key, _) in enumerate(ACCOUNTS.values()):
        env[f"SOAK_KEY_{i}"] = key
    log = (tmp / "exporter.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--log.level", "info"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- traffic ---------------------------------------------------------------------------------


class Driver:
    def __init__(self, args: argparse.Namespace, proxy: str, web: str, sim: str) -> None:
        self.args = args
        self.proxy, self.web, self.sim = proxy, web, sim
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.session: aiohttp.ClientSession | None = None  # keep-alive pool, like an SDK
        self.closing: aiohttp.ClientSession | None = None  # one connection per request

    # one request, classified by what its client saw

    async def observe(
        self,
        account: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        *,
        forwarded: bool = True,
        leave_after_first_event: bool = False,
        head_timeout: float | None = None,
    ) -> None:
        tally = self.tally
        session = self.closing if (leave_after_first_event or head_timeout) else self.session
        assert session is not None
        request = session.post(self.proxy + path, data=body, headers=headers)
        try:
            response = await asyncio.wait_for(request, head_timeout)
        except TimeoutError:  # no head yet: we leave
            tally.aborts[(account, "client_disconnect")] += 1
            tally.forwarded[account] += forwarded
            tally.unattributed[account] += forwarded
            return
        except aiohttp.ClientError as err:
            tally.anomalies.append(f"{path}: no response: {type(err).__name__}: {err}")
            return
        tally.forwarded[account] += forwarded
        cut = False
        left = False
        data = b""
        try:
            streaming = response.content_type == "text/event-stream"
            if leave_after_first_event and response.status == 200 and streaming:
                data = await response.content.readuntil(b"\n\n")
                response.close()  # goes away mid-stream
                left = True
            else:
                data = await response.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ValueError):
            cut = True
        finally:
            response.release()
        error_type = None
        if response.status in (502, 504) and response.content_type == "application/json":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                error_type = json.loads(data)["error"]["type"]
        if error_type in PROXY_ERRORS:
            reason = PROXY_ERRORS[error_type]
            tally.upstream_errors[(account, reason)] += 1
            tally.unattributed[account] += forwarded and reason == "timeout"
            return
        tally.requests[(account, str(response.status))] += 1
        if left:
            tally.aborts[(account, "client_disconnect")] += 1
        elif cut:
            tally.aborts[(account, "upstream_disconnect")] += 1

    async def oversized(self, account: str, key: str) -> None:
        """A Content-Length over the limit and no body: refused before anything is read."""
        host, port = self.proxy.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"POST {CHAT} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {MAX_BODY * 2}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
            self.tally.anomalies.append(f"oversized: {type(err).__name__}")
            return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if head.startswith(b"HTTP/1.1 413"):
            self.tally.rejected["body_too_large"] += 1
        else:
            self.tally.anomalies.append(f"oversized: {head[:40]!r}")

    def prompt(self) -> list[dict[str, str]]:
        # A small vocabulary: repeated prefixes give the simulator's cache some hits.
        words = " ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 40)))
        return [{"role": "user", "content": f"How is the {self.rng.choice(WORDS)} doing? {words}"}]

    async def one(self, scenario: str) -> None:
        rng = self.rng
        account = rng.choice(list(ACCOUNTS))
        key = ACCOUNTS[account][0]
        bearer = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        anthropic = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        # Mostly served models; a legacy alias (deepseek-v4-flash), a retired model and a foreign
        # one now and then (400 Model Not Exist).
        model = rng.choices(
            ["deepseek-flash", "deepseek-v4-pro", "deepseek-v4-flash", "deepseek-chat", "gpt-4o"],
            [50, 30, 10, 5, 5],
        )[0]
        chat = {"model": model, "messages": self.prompt()}
        self.tally.scenarios[scenario] += 1
        self.tally.sent += 1
        if scenario in ("chat", "chat_stream"):
            body = {**chat, "stream": scenario == "chat_stream"}
            if scenario == "chat_stream" and rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
            await self.observe(account, CHAT, bearer, json.dumps(body).encode())
        elif scenario == "fim":
            body = {"model": "deepseek-flash", "prompt": "def add(a, b):", "max_tokens": 16}
            await self.observe(account, FIM, bearer, json.dumps(body).encode())
        elif scenario in ("anthropic", "disconnect_mid_stream", "disconnect_before_head"):
            # The Anthropic path: chaos faults (queued for the chat path) never land here.
            body = {"model": "deepseek-flash", "max_tokens": 64, "messages": self.prompt()}
            body["stream"] = scenario != "anthropic" or rng.random() < 0.5
            head_timeout = None
            if scenario == "disconnect_before_head":
                # Slow the next Anthropic request's head (1.5 s, within proxy.timeout): ours,
                # unless another takes it first; either way each client reports what it saw.
                await self.control(
                    "POST", "/_simulator/faults", kind="delay", seconds=1.5, path=MESSAGES_PATH
                )
                head_timeout = 0.5
            await self.observe(
                account,
                MESSAGES_PATH,
                anthropic,
                json.dumps(body).encode(),
                leave_after_first_event=scenario == "disconnect_mid_stream",
                head_timeout=head_timeout,
            )
        elif scenario in ("unknown_key", "foreign_key"):
            other = UNKNOWN_KEY if scenario == "unknown_key" else FOREIGN_KEY
            headers = {**bearer, "Authorization": f"Bearer {other}"}
            body = {**chat, "stream": rng.random() < 0.5}
            await self.observe("unknown", CHAT, headers, json.dumps(body).encode(), forwarded=False)
        elif scenario == "bad_json":
            await self.observe(account, CHAT, bearer, b'{"model": "deepseek-flash", "messages": [')
        elif scenario == "oversized":
            await self.oversized(account, key)

    async def control(self, method: str, route: str, /, **body: Any) -> Any:
        assert self.session is not None
        async with self.session.request(method, self.sim + route, json=body or None) as response:
            response.raise_for_status()
            return await response.json()

    async def chaos(self, stop_at: float) -> None:
        loop = asyncio.get_running_loop()
        weights = [w for w, _ in FAULTS]
        while loop.time() < stop_at:
            await asyncio.sleep(self.rng.expovariate(1 / self.args.fault_interval))
            fault = self.rng.choices([f for _, f in FAULTS], weights)[0]
            try:
                await self.control("POST", "/_simulator/faults", path=CHAT, times=1, **fault)
            except aiohttp.ClientError as err:
                self.tally.anomalies.append(f"chaos: {err}")
                continue
            label = fault["kind"]
            if "status" in fault:
                label += f" {fault['status']}"
            if "seconds" in fault:
                label += f" {fault['seconds']:g}s"
            self.tally.faults[label] += 1

    async def traffic(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + seconds
        limit = asyncio.Semaphore(self.args.concurrency)
        weights = [w for w, _ in SCENARIOS]
        names = [s for _, s in SCENARIOS]
        tasks: set[asyncio.Task[None]] = set()
        chaos = asyncio.create_task(self.chaos(stop_at))

        async def run(scenario: str) -> None:
            try:
                await self.one(scenario)
            except Exception as err:  # a soak reports, it does not stop
                self.tally.anomalies.append(f"{scenario}: {type(err).__name__}: {err}")
            finally:
                limit.release()

        while loop.time() < stop_at:
            await asyncio.sleep(self.rng.expovariate(self.args.rate))
            await limit.acquire()
            task = asyncio.create_task(run(self.rng.choices(names, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await chaos
        if tasks:
            await asyncio.gather(*tasks)


# --- sampling --------------------------------------------------------------------------------


async def healthy(session: aiohttp.ClientSession, web: str) -> bool:
    try:
        async with session.get(web + "/-/healthy", timeout=aiohttp.ClientTimeout(5)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def sampler(
    pid: int, web: str, driver: Driver, started: float, samples: list[Sample], done: asyncio.Event
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while not done.is_set():
            ok = await healthy(session, web)
            samples.append(
                Sample(
                    time.monotonic() - started, rss_kib(pid), fd_count(pid), ok, driver.tally.sent
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), SAMPLE_EVERY)


async def scrape(web: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(web + "/metrics") as response,
    ):
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by(samples: dict[Any, float], name: str, *labels: str) -> Counter[Any]:
    out: Counter[Any] = Counter()
    for (sample, label_set), value in samples.items():
        if sample == name and value:
            values = dict(label_set)
            key = tuple(values[label] for label in labels)
            out[key if len(key) > 1 else key[0]] += int(value)
    return out


# --- the run ---------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sim_proc, sim_url = start_simulator(tmp)
    web_port, proxy_port = free_port(), free_port()
    web, proxy = f"http://{HOST}:{web_port}", f"http://{HOST}:{proxy_port}"
    exporter = start_exporter(tmp, write_config(tmp, sim_url, web_port, proxy_port))
    try:
        async with (
            aiohttp.ClientSession() as session,  # the simulator's control API
            # The exporter's metrics listener, a connection per request: none left open to
            # count among the exporter's descriptors.
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as probe,
        ):
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with probe.get(web + "/-/ready") as r:
                        if r.status == 200:
                            break
                if exporter.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the exporter did not become ready; see exporter.log")
                await asyncio.sleep(0.1)
            driver = Driver(args, proxy, web, sim_url)
            driver.session = session
            for name, (_, currency) in ACCOUNTS.items():
                await driver.control(
                    "PUT",
                    f"/_simulator/accounts/{name}/balance",
                    currency=currency,
                    granted="0",
                    topped_up="1000000",
                )
            await driver.control(
                "PUT",
                "/_simulator/accounts/demo-both/balance",
                currency="USD",
                granted="0",
                topped_up="1000000",
            )
            await driver.control(
                "PATCH", "/_simulator/config", stream_chunks=12, chunk_interval=0.05
            )
            await driver.control("DELETE", "/_simulator/requests")  # polls so far
            stats_before = await driver.control("GET", "/_simulator/stats")
            await asyncio.sleep(6)  # a poll or two: the idle baseline
            idle = Sample(0.0, rss_kib(exporter.pid), fd_count(exporter.pid), True, 0)

            started = time.monotonic()
            samples: list[Sample] = [replace_t(idle, -6.0)]
            done = asyncio.Event()
            sampling = asyncio.create_task(
                sampler(exporter.pid, web, driver, started, samples, done)
            )
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as pool,
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, force_close=True),
                    timeout=aiohttp.ClientTimeout(total=120),
                ) as closing,
            ):
                driver.session, driver.closing = pool, closing
                await driver.traffic(args.minutes * 60)
                driver.session = session
            traffic_seconds = time.monotonic() - started
            done.set()
            await sampling
            end_of_traffic = samples[-1]

            # Drain: nothing in flight, then the proxy's idle upstream pool expires.
            deadline = time.monotonic() + 60
            while True:
                metrics = await scrape(web)
                if not sum(by(metrics, "deepseek_requests_in_flight", "account").values()):
                    break
                if time.monotonic() > deadline:
                    driver.tally.anomalies.append("requests still in flight after 60 s")
                    break
                await asyncio.sleep(0.5)
            # Then the proxy's idle upstream pool empties: back to the idle descriptor count?
            drained = time.monotonic()
            settle: list[tuple[float, int]] = []
            while True:
                settle.append((time.monotonic() - drained, fd_count(exporter.pid)))
                if settle[-1][1] <= idle.fds + FD_SLACK:
                    break
                if time.monotonic() - drained > IDLE_POOL_WAIT:
                    break
                await asyncio.sleep(5)
            after = Sample(
                time.monotonic() - started,
                rss_kib(exporter.pid),
                settle[-1][1],
                await healthy(probe, web),
                driver.tally.sent,
            )
            metrics = await scrape(web)
            stats = await driver.control("GET", "/_simulator/stats")
            async with probe.get(web + "/") as r:
                landing = await r.text()
            async with probe.get(web + "/metrics") as r:
                metrics_text = await r.text()
    finally:
        alive = exporter.poll() is None
        stop(exporter)
        stop(sim_proc)
    log_text = (tmp / "exporter.log").read_text(errors="replace")
    return {
        "args": vars(args),
        "traffic_seconds": traffic_seconds,
        "tally": driver.tally,
        "samples": samples,
        "idle": idle,
        "end_of_traffic": end_of_traffic,
        "after_drain": after,
        "settle": settle,
        "metrics": metrics,
        "stats": stats,
        "stats_before": stats_before,
        "alive_at_end": alive,
        "log_lines": len(log_text.splitlines()),
        "log_errors": [
            line for line in log_text.splitlines() if "level=error" in line or "Traceback" in line
        ],
        "keys_leaked": [
            where
            for where, text in (("log", log_text), ("landing", landing), ("metrics", metrics_text))
            if any(k in text for k in ALL_KEYS)
        ],
    }


def replace_t(sample: Sample, t: float) -> Sample:
    return Sample(t, sample.rss_kib, sample.fds, sample.healthy, sample.sent)


# --- the report ------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0


def compare(
    name: str, client: Counter[Any], exporter: Counter[Any], labels: list[str]
) -> tuple[str, bool]:
    keys = sorted(set(client) | set(exporter), key=str)
    rows, ok = [], True
    for key in keys:
        parts = list(key) if isinstance(key, tuple) else [key]
        same = client[key] == exporter[key]
        ok &= same
        rows.append([*parts, str(client[key]), str(exporter[key]), "yes" if same else "**NO**"])
    if not rows:
        rows.append([*("-" for _ in labels), "0", "0", "yes"])
    return f"`{name}`\n\n" + table([*labels, "clients saw", "exporter", "equal"], rows), ok


def render(result: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    tally: Tally = result["tally"]
    metrics = result["metrics"]
    samples: list[Sample] = result["samples"]
    idle: Sample = result["idle"]
    end: Sample = result["end_of_traffic"]
    after: Sample = result["after_drain"]
    seconds = result["traffic_seconds"]
    warmup = min(300.0, seconds / 3)
    warm = next((s for s in samples if s.t >= warmup), end)
    steady = [(s.t, s.rss_kib) for s in samples if s.t >= warmup]
    rss_growth = (end.rss_kib - warm.rss_kib) / warm.rss_kib
    rss_flat = rss_growth < 0.10
    fd_flat = after.fds <= idle.fds + FD_SLACK
    settled_in = result["settle"][-1][0]
    unhealthy = sum(not s.healthy for s in samples) + (not after.healthy)

    sections = []
    consistent = True
    for name, client, exported, labels in (
        (
            "deepseek_requests_total",
            tally.requests,
            by(metrics, "deepseek_requests_total", "account", "code"),
            ["account", "code"],
        ),
        (
            "deepseek_upstream_errors_total",
            tally.upstream_errors,
            by(metrics, "deepseek_upstream_errors_total", "account", "reason"),
            ["account", "reason"],
        ),
        (
            "deepseek_stream_aborts_total",
            tally.aborts,
            by(metrics, "deepseek_stream_aborts_total", "account", "reason"),
            ["account", "reason"],
        ),
        (
            "deepseek_proxy_rejected_requests_total",
            tally.rejected,
            by(metrics, "deepseek_proxy_rejected_requests_total", "reason"),
            ["reason"],
        ),
    ):
        text, ok = compare(name, client, exported, labels)
        sections.append(text)
        consistent &= ok

    # The simulator: every completion request a client sent for an account reached it once.
    sim_rows = []
    for account in ACCOUNTS:
        got = result["stats"].get(account, {}).get("completions", {})
        total = sum(got.values())
        expected = tally.forwarded[account] - tally.unattributed[account]
        same = total == expected
        consistent &= same
        detail = ", ".join(f"{code}: {n}" for code, n in sorted(got.items(), key=lambda i: i[0]))
        cost = result["stats"].get(account, {}).get("cost", "0")
        metered = sum(
            v
            for (n, labels), v in metrics.items()
            if n == "deepseek_estimated_cost_total" and dict(labels).get("account") == account
        )
        sim_rows.append(
            [
                account,
                str(tally.forwarded[account]),
                str(tally.unattributed[account]),
                str(total),
                "yes" if same else "**NO**",
                detail,
                f"{float(cost):.4f} / {metered:.4f}",
            ]
        )
    sections.append(
        "The simulator (`/_simulator/stats`: completions by status per account; `0`: dropped "
        "before any byte, `499`: the client, or the proxy on a timeout, went away first). It "
        "counts a request for an account once it has read its key, which a request still held "
        "in a `delay` fault never got to (a client that left before the head, a 504): those are "
        "set apart. Cost: what the simulator charged, and what the exporter metered from the "
        "usage it saw (streams cut short and replies without usage are charged but not "
        "metered).\n\n"
        + table(
            [
                "account",
                "sent",
                "held in a delay",
                "simulator counted",
                "equal",
                "by status",
                "cost charged / metered",
            ],
            sim_rows,
        )
    )
    consistent &= not tally.anomalies

    def row(label: str, s: Sample) -> list[str]:
        return [label, f"{s.t / 60:.1f} min", mib(s.rss_kib), str(s.fds)]

    fd_slope = slope_per_hour([(s.t, s.fds) for s in samples if s.t >= warmup])
    verdict = (
        f"**{'PASS' if rss_flat and fd_flat else 'MISS'}** flat (RSS growth after warm-up "
        f"{rss_growth:+.1%}, limit +10 %; descriptors {after.fds} against {idle.fds} idle, "
        f"{settled_in:.0f} s after the drain, limit +{FD_SLACK} within {IDLE_POOL_WAIT:.0f} s) · "
        f"**{'PASS' if consistent else 'MISS'}** counters consistent · "
        f"**{'PASS' if not unhealthy and result['alive_at_end'] else 'MISS'}** alive "
        f"({unhealthy} failed health checks) · "
        f"**{'PASS' if not result['keys_leaked'] else 'MISS'}** no key in logs, metrics or "
        "landing page"
    )
    total_sent = tally.sent
    faults = ", ".join(f"{k} x{v}" for k, v in sorted(tally.faults.items()))
    scenarios = ", ".join(f"{k} {v}" for k, v in tally.scenarios.most_common())
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    runtime = f"{platform.python_implementation()} {platform.python_version()}"
    header = (
        f"`python bench/soak.py --minutes {args.minutes:g}`: {when}, {runtime}, "
        f"{os.cpu_count()} CPUs, {git_state()}. {seconds / 60:.1f} minutes of traffic, "
        f"{total_sent:,} requests ({total_sent / seconds:.1f}/s, at most {args.concurrency} at "
        f"once), {sum(tally.faults.values())} simulator faults. The exporter runs in its own "
        "process (`python -m exporter --config.file ...`, two accounts, `poll_interval: 5s`, "
        "`proxy.timeout: 2s`), and so does the simulator."
    )
    peak = (
        f"Peak during traffic: {mib(max(s.rss_kib for s in samples))} MiB RSS, "
        f"{max(s.fds for s in samples)} descriptors. Slope after warm-up (least squares over "
        f"{len(steady)} samples, one every {SAMPLE_EVERY:.0f} s): RSS "
        f"{slope_per_hour(steady) / 1024:+.2f} MiB/h, descriptors {fd_slope:+.1f}/h. During "
        "traffic the descriptors follow the requests in flight (each holds a client and an "
        "upstream socket) and the proxy's idle upstream pool."
    )
    memory = table(
        ["when", "at", "RSS MiB", "open fds"],
        [
            row("idle, before traffic", idle),
            row(f"after warm-up ({warmup / 60:.1f} min)", warm),
            row("end of traffic", end),
            row(f"drained, then {settled_in:.0f} s for the idle upstream pool to close", after),
        ],
    )
    anomalies = "".join("\n- " + a for a in tally.anomalies[:10])
    counters = "\n\n".join(sections)
    text = f"""## Soak

{header}

{verdict}

Scenarios: {scenarios}.

Faults queued for the next chat completion: {faults}.

### Memory and descriptors of the exporter

{memory}

{peak}

### Counters: what the clients saw against what the exporter counted

Each request is classified by what its client observed: the status of a response from upstream
(`deepseek_requests_total`), the proxy's own 502/504 (`deepseek_upstream_errors_total`), a
response cut by the upstream or left by the client (`deepseek_stream_aborts_total`), a 413
(`deepseek_proxy_rejected_requests_total`). Clients that leave use the Anthropic path, which the
queued faults never target, so that what they saw cannot race with a fault.

{counters}

Client-side anomalies (a request that got no answer at all, or not what it should): \
{len(tally.anomalies)}{anomalies}

Exporter log: {result["log_lines"]} lines, {len(result["log_errors"])} at error level or with a
traceback.
"""
    alive = not unhealthy and result["alive_at_end"]
    return text, rss_flat and fd_flat and consistent and alive and not result["keys_leaked"]


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "exporter")
    return f"commit {commit}" + (" + uncommitted changes in exporter/" if dirty else "")


def write_section(text: str) -> None:
    """Replace (or append) the block between ``<!-- soak:start -->`` and ``<!-- soak:end -->``;
    the rest of the file belongs to the other benchmarks."""
    start, end = "<!-- soak:start -->", "<!-- soak:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start in doc and end in doc:
        before, rest = doc.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        doc = before + block + ("\n" + after if after else "")
    else:
        doc = doc.rstrip() + "\n\n" + block
    DOC.write_text(doc)


def save(result: dict[str, Any], path: Path) -> None:
    tally: Tally = result["tally"]

    def counter(c: Counter[Any]) -> dict[str, int]:
        return {"/".join(k) if isinstance(k, tuple) else k: v for k, v in c.items()}

    data = {
        "args": result["args"],
        "traffic_seconds": result["traffic_seconds"],
        "samples": [vars(s) for s in result["samples"]],
        "idle": vars(result["idle"]),
        "after_drain": vars(result["after_drain"]),
        "settle": result["settle"],
        "client": {
            "requests": counter(tally.requests),
            "upstream_errors": counter(tally.upstream_errors),
            "aborts": counter(tally.aborts),
            "rejected": counter(tally.rejected),
            "forwarded": counter(tally.forwarded),
            "scenarios": counter(tally.scenarios),
            "faults": counter(tally.faults),
            "anomalies": tally.anomalies,
        },
        "simulator": result["stats"],
        "log_errors": result["log_errors"][:50],
        "keys_leaked": result["keys_leaked"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="traffic duration (30)")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (10)")
    parser.add_argument("--concurrency", type=int, default=64, help="most requests at once (64)")
    parser.add_argument(
        "--fault-interval", type=float, default=2.0, help="mean seconds between faults (2)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-doc", action="store_true", help="print the report only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
        tmp = Path(tmp_name)
        result = asyncio.run(soak(args, tmp))
        log_copy = RESULTS / f"soak-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-exporter.log"
        log_copy.parent.mkdir(parents=True, exist_ok=True)
        log_copy.write_text((tmp / "exporter.log").read_text(errors="replace"))
    text, ok = render(result, args)
    save(result, log_copy.with_name(log_copy.name.replace("-exporter.log", ".json")))
    print(text)
    if not args.no_doc:
        write_section(text)
        print(f"wrote the Soak section of {DOC.relative_to(REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

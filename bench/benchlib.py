"""Shared pieces of the benchmarks: processes, /proc accounting, wrk, cheap load clients, reports.

The load generators are chosen to cost as little CPU as possible on a 2-core machine:

* ``wrk`` (C, one thread, a Lua script only to set the POST body) for closed-loop throughput and
  latency under concurrency;
* :class:`RawClient`, a blocking socket with prebuilt request bytes, for latency at
  concurrency 1 (its own cost is the same for every target, so it cancels in "added" latency);
* :func:`sse_request`, asyncio streams with a hand-rolled chunked decoder, for streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HOST = "127.0.0.1"
API_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")

REQUEST_BODY = json.dumps(
    {
        "model": "deepseek-chat",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
        "stream": False,
    },
    separators=(",", ":"),
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    separators=(",", ":"),
).encode()
CHAT_PATH = "/chat/completions"


def stream_body(chunks: int | None = None, interval_ms: float | None = None) -> bytes:
    """STREAM_BODY asking bench/upstream.py for another stream shape in the body itself (its
    ``?chunks=&interval_ms=`` query does the same, but LiteLLM does not forward a query)."""
    body = json.loads(STREAM_BODY)
    if chunks is not None:
        body["bench_chunks"] = chunks
    if interval_ms is not None:
        body["bench_interval_ms"] = interval_ms
    return json.dumps(body, separators=(",", ":")).encode()


def build_request(port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nAccept: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


# --------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of unsorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --------------------------------------------------------------------------------------------
# processes and /proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


def stop_process(
    proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_upstream() -> tuple[subprocess.Popen, int]:
    """The fast + slow upstream (bench/upstream.py) in its own process."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "upstream.py"), "--host", HOST, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        stop_process(proc)
        raise RuntimeError(f"upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pids: Iterable[int]) -> int:
    return sum(status_kib(pid, "VmRSS") for pid in pids) * 1024


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                if int(_stat_fields(int(entry.name))[1]) == parent:
                    found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU time spent non-idle by the whole machine since boot, in core-seconds."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU of this process plus every child (and grandchild) already waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def raise_priority(niceness: int) -> str:
    """Run this process and every server it starts at ``niceness`` (inherited by children).

    The machine may be shared (other people's test runs): a lower niceness keeps their load from
    landing on one target's measurement and not another's. It applies to every target alike.
    """
    if niceness:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return f"nice {os.getpriority(os.PRIO_PROCESS, 0)}"


BUSY_WARNING = 0.15  # share of the machine used by others above which a report says so


def wait_for_quiet(max_wait: float, busy_below: float = 0.10, window: float = 3.0) -> str:
    """Wait up to ``max_wait`` seconds for the machine to be idle (< ``busy_below`` of its CPU
    busy over ``window`` seconds) before measuring; say how that went."""
    cores = os.cpu_count() or 1
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        share = (machine_busy_seconds() - before) / (window * cores)
        waited = time.monotonic() - started
        if share < busy_below:
            return f"machine {share:.0%} busy just before the start (waited {waited:.0f} s)"
        if waited >= max_wait:
            return f"machine still {share:.0%} busy after waiting {waited:.0f} s"
        print(f"machine {share:.0%} busy: waiting for it to quiet down ...", flush=True)


@dataclass
class Noise:
    """How much CPU other people's processes used while we measured: a benchmark's error bar."""

    busy0: float = field(default_factory=machine_busy_seconds)
    own0: float = field(default_factory=own_cpu_seconds)
    wall0: float = field(default_factory=time.monotonic)
    load0: str = field(default_factory=lambda: Path("/proc/loadavg").read_text().split()[0])

    def finish(self) -> tuple[str, float]:
        """Call after every child process was stopped and reaped: the text for the report and
        the share of the machine that processes outside the benchmark used."""
        wall = time.monotonic() - self.wall0
        foreign = max((machine_busy_seconds() - self.busy0) - (own_cpu_seconds() - self.own0), 0)
        share = foreign / (wall * (os.cpu_count() or 1))
        load1 = Path("/proc/loadavg").read_text().split()[0]
        text = (
            f"{wall:.0f} s wall; CPU used by processes outside the benchmark: {foreign:.1f} "
            f"core-s ({share:.0%} of the machine); load average (1 min) {self.load0} at start, "
            f"{load1} at end"
        )
        if share > BUSY_WARNING:
            text += (
                f". **Other processes used {share:.0%} of the machine during this run: expect "
                "inflated tails; rerun on a quiet machine before drawing conclusions.**"
            )
        return text, share


# --------------------------------------------------------------------------------------------
# nginx


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream api {{
        server {host}:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {host}:{fast_port} backlog=4096;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen {host}:{stream_port} backlog=4096;
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class Nginx:
    """nginx as a plain reverse proxy: one port for the fast upstream (default buffering), one
    for SSE (``proxy_buffering off``), both with a keep-alive upstream pool; one worker (the
    same single core the proxy gets) unless told otherwise."""

    def __init__(self, tmp: Path, upstream_port: int, workers: int = 1) -> None:
        self.fast_port = free_port()
        self.stream_port = free_port()
        tmp = tmp / f"nginx-{workers}"
        tmp.mkdir(exist_ok=True)
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                workers=workers,
                tmp=tmp,
                host=HOST,
                upstream_port=upstream_port,
                fast_port=self.fast_port,
                stream_port=self.stream_port,
            )
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf), "-p", str(tmp), "-g", "daemon off; user root;"],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_port(self.fast_port, proc=self.proc)
        wait_port(self.stream_port, proc=self.proc)

    def pids(self) -> list[int]:
        return [self.proc.pid, *child_pids(self.proc.pid)]

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)


def nginx_version() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return out.stderr.strip().removeprefix("nginx version: nginx/")


# --------------------------------------------------------------------------------------------
# wrk

WRK_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    connections: int
    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float = 0.0  # of the measured middle process(es) during the run
    machine_busy: float = 0.0  # share of all the machine's cores busy during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("nan")


def write_wrk_script(tmp: Path, body: bytes = REQUEST_BODY) -> Path:
    path = tmp / "post.lua"
    path.write_text(WRK_LUA.format(body=json.dumps(body.decode()), key=API_KEY))
    return path


def run_wrk(
    port: int,
    script: Path,
    connections: int,
    seconds: float,
    cpu_pids: Sequence[int] = (),
    path: str = CHAT_PATH,
) -> WrkResult:
    cpu0 = cpu_seconds(cpu_pids)
    busy0, wall0 = machine_busy_seconds(), time.monotonic()
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://{HOST}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = cpu_seconds(cpu_pids) - cpu0
    busy = (machine_busy_seconds() - busy0) / ((time.monotonic() - wall0) * (os.cpu_count() or 1))
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line[6:])
    return WrkResult(
        connections=connections,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        socket_errors=data["socket_errors"],
        non_2xx=data["non_2xx"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu_seconds=cpu,
        machine_busy=busy,
    )


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split("\n")[0].split(" [")[0].removeprefix("wrk ")


# --------------------------------------------------------------------------------------------
# a blocking raw-socket client for latency at concurrency 1


class RawClient:
    """One keep-alive connection; sends prebuilt bytes, reads one response, times it."""

    def __init__(self, port: int, path: str = CHAT_PATH, body: bytes = REQUEST_BODY) -> None:
        self.request = build_request(port, path, body)
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while (at := self.buf.find(marker)) < 0:
            self._fill()
        line, self.buf = self.buf[:at], self.buf[at + len(marker) :]
        return line

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _response(self) -> tuple[int, bytes]:
        head = self._read_until(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            parts = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                parts.append(self._read_exactly(size + 2)[:-2])
            self._read_until(b"\r\n")
            return status, b"".join(parts)
        match = re.search(rb"content-length:\s*(\d+)", lower)
        return status, self._read_exactly(int(match.group(1)) if match else 0)

    def call(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        return self._response()

    def timed(self) -> int:
        """One request; its latency in nanoseconds. Raises on anything but a 200 with usage."""
        start = time.perf_counter_ns()
        self.sock.sendall(self.request)
        status, body = self._response()
        elapsed = time.perf_counter_ns() - start
        if status != 200 or b'"usage"' not in body:
            raise RuntimeError(f"unexpected response {status}: {body[:200]!r}")
        return elapsed


def latency_run(port: int, seconds: float, warmup: float = 0.3) -> list[float]:
    """Sequential requests on one connection for ``seconds``; latencies in milliseconds."""
    client = RawClient(port)
    try:
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            client.timed()
        samples = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            samples.append(client.timed() / 1e6)
        return samples
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# an asyncio streaming client

# bench/upstream.py puts each chunk's number and send time in its delta content, which every
# proxy keeps (LiteLLM re-serialises chunks and drops fields it does not know)
_T_RE = re.compile(rb'"content":"seq=(\d+),t=(\d+)"')


@dataclass
class StreamResult:
    ttft_ms: float
    arrivals_ns: list[int]  # arrival of each data event carrying a send timestamp, in order
    sent_ns: list[int]  # the upstream's monotonic send time of the same events
    done: bool  # saw usage and [DONE]


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:200]!r}")
    if b"transfer-encoding: chunked" not in head.lower():
        raise RuntimeError(f"expected a chunked SSE response: {head[:300]!r}")
    return head


async def sse_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> StreamResult:
    """One streamed completion on an open keep-alive connection, timed chunk by chunk."""
    start = time.monotonic_ns()
    writer.write(request)
    await _read_head(reader)
    arrivals: list[int] = []
    sent: list[int] = []
    ttft = None
    pending = b""
    usage = done = False
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        data = (await reader.readexactly(size + 2))[:-2]
        now = time.monotonic_ns()
        pending += data
        *events, pending = pending.split(b"\n\n")
        for event in events:
            match = _T_RE.search(event)
            if match:
                if ttft is None:
                    ttft = (now - start) / 1e6
                arrivals.append(now)
                sent.append(int(match.group(2)))
            elif b'"usage":{' in event:
                usage = True
            elif event == b"data: [DONE]":
                done = True
    return StreamResult(ttft if ttft is not None else float("nan"), arrivals, sent, usage and done)


async def open_held_stream(port: int, body: bytes) -> tuple[asyncio.StreamWriter, asyncio.Task]:
    """Start a long stream, wait for its first event, then keep draining it in the background."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(build_request(port, CHAT_PATH, body))
    await _read_head(reader)
    await reader.readuntil(b"\n\n")

    async def drain() -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.read(65536):
                pass

    return writer, asyncio.create_task(drain())


# --------------------------------------------------------------------------------------------
# report helpers


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_state(paths: Sequence[str] = ("exporter",)) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *paths)
    return f"{commit}" + (" + uncommitted changes in " + ", ".join(paths) if dirty else "")


def replace_section(path: Path, name: str, content: str, title: str) -> None:
    """Replace (or append) the block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{content.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else f"# {title}\n\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}x"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def make_tmp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))

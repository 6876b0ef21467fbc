"""Fault injection: the exporter against everything its upstream, the network and its clients
can throw at it, over real loopback sockets.

The upstream is the simulator (its :class:`~exporter.simulator.FaultKind` faults) or, for what it
cannot do (refused connections, a reply that is not HTTP, a lying ``Content-Length``, recording the
exact bytes it received), a tiny raw asyncio server on its own loop. Clients are httpx, aiohttp and
raw sockets.

After every fault :meth:`Bench.check` asserts the invariants:

* the exporter is alive: ``/-/healthy`` answers and a normal proxied completion succeeds;
* every request was counted exactly once with the right code or reason: the deltas of
  ``deepseek_requests_total``, ``deepseek_upstream_errors_total``,
  ``deepseek_stream_aborts_total``, ``deepseek_proxy_rejected_requests_total`` and
  ``deepseek_usage_missing_total`` are exactly what the client saw, and nothing else moved;
* ``deepseek_requests_in_flight`` is back to 0;
* no asyncio task is left behind on the exporter's loop, no file descriptor in the process;
* no key appears in any output (metrics, landing page, logs, what the clients received), and
  nothing was logged at ERROR (no unhandled exception, no "Task exception was never retrieved").

Slow and idle clients (slowloris), and what bounds them. Each open connection costs the exporter
one file descriptor, one small task and its buffers, and never blocks anyone else (one event
loop, no per-connection thread). The limits that apply, all from aiohttp's HTTP server:

* a connection that is idle, or has not sent a complete request head, is closed 75 s after it
  was opened or after its previous response, on both listeners
  (``exporter.proxy.KEEPALIVE_TIMEOUT``; aiohttp's own default for its low-level server is 3630 s);
* a request line or header field over 8190 bytes, or more than 128 header fields: 400;
* a request body that arrives slowly has no timeout of its own (the proxy cannot tell a slow
  upload from a large one); bodies over ``proxy.max_body_bytes`` get 413 as soon as the limit is
  passed, or at once when ``Content-Length`` announces it;
* upstream: ``deepseek.timeout`` to connect, ``proxy.timeout`` for the response head and between
  body chunks (then 504, or the stream is cut and counted as ``upstream_disconnect``).

So the ceiling is the process's descriptor limit (``LimitNOFILE``); in front of untrusted clients,
put a load balancer with header and idle timeouts of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from exporter.app import load_all
from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop
from tests.harness import (
    PROD_KEY,
    USD_KEY,
    RunningExporter,
    exporter_config,
    parse_samples,
    running_exporter,
    running_simulator,
    wait_until,
)

MODEL = "deepseek-flash"
CHAT = "/chat/completions"
UNKNOWN_KEY = "sk-fault-unknown-key-5550123"
KEYS = (PROD_KEY, USD_KEY, UNKNOWN_KEY)
MESSAGES = [{"role": "user", "content": "Is the money going to last the month? " * 4}]
AUTH = {"Authorization": f"Bearer {PROD_KEY}", "Content-Type": "application/json"}
# The families whose deltas must match what the clients saw, with their label names.
COUNTED = {
    "requests": ("deepseek_requests_total", ("account", "model", "code")),
    "upstream_errors": ("deepseek_upstream_errors_total", ("account", "reason")),
    "aborts": ("deepseek_stream_aborts_total", ("account", "model", "reason")),
    "rejected": ("deepseek_proxy_rejected_requests_total", ("reason",)),
    "usage_missing": ("deepseek_usage_missing_total", ("account", "model")),
}
# Idle upstream connections the proxy keeps for reuse (two descriptors each, both ends being in
# this process) and sockets the servers have not finished closing: a small, bounded slack. A leak
# shows up anyway: most faults below are repeated more times than this.
FD_SLACK = 3
TIMEOUT = 2.0  # proxy.timeout of the default bench
SHORT_TIMEOUT = 0.3  # for faults beyond the timeout
ABORTED = (httpx.RemoteProtocolError, httpx.ReadError)
# One client for the whole module (building one costs ~50 ms), keeping no idle connection: each
# request's connection is closed after it, so none is left open between checks.
HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def chat_body(stream: bool = False, model: str = MODEL) -> bytes:
    return json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Bench:
    """The simulator, an exporter in front of it, and the invariants to check after a fault."""

    def __init__(
        self,
        sim: Simulator,
        running: RunningExporter,
        caplog: pytest.LogCaptureFixture,
        raw_loop: BackgroundLoop,
    ) -> None:
        self.sim = sim
        self.running = running
        self.caplog = caplog
        self.raw_loop = raw_loop
        self.seen: list[str] = []  # everything clients received, searched for keys
        self.baseline()

    @property
    def proxy_url(self) -> str:
        return self.running.proxy_url

    @property
    def exporter_loop(self) -> BackgroundLoop:
        return self.running.loop

    # -- clients ------------------------------------------------------------------------------

    def post(
        self,
        body: bytes | None = None,
        path: str = CHAT,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> httpx.Response:
        response = HTTP.post(
            self.proxy_url + path,
            content=chat_body() if body is None else body,
            headers=AUTH if headers is None else headers,
            **options,
        )
        self.seen.append(response.text)
        return response

    def post_aborted(self, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        """A request whose response is cut short: the status must be 200, then the connection
        ends early. Returns what arrived before the cut."""
        received = b""
        with (
            pytest.raises(ABORTED),
            HTTP.stream(
                "POST", self.proxy_url + CHAT, content=body, headers=headers or AUTH
            ) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += chunk
        self.seen.append(received.decode("utf-8", "replace"))
        return received

    def raw(self, data: bytes, *, wait_for: bytes = b"\r\n\r\n", keep: bool = True) -> bytes:
        """Send raw bytes to the proxy; read until ``wait_for`` (and the body, if sized) or EOF."""
        host, port = self.proxy_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(data)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
                head, sep, body = reply.partition(b"\r\n\r\n")
                if sep and wait_for in reply:
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    if length is None or len(body) >= int(length.group(1)):
                        break
        if keep:
            self.seen.append(reply.decode("utf-8", "replace"))
        return reply

    def in_flight(self) -> float:
        registry = self.running.exporter.registry
        return sum(
            registry.get_sample_value("deepseek_requests_in_flight", {"account": a}) or 0
            for a in ("prod", "usd", "unknown")
        )

    # -- upstream switching -------------------------------------------------------------------

    def point_upstream(self, url: str) -> None:
        """Send the proxy to another upstream, as a reload would."""
        exporter = self.running.exporter

        async def apply() -> None:
            config = exporter.config
            new = replace(config, deepseek=replace(config.deepseek, base_url=url))
            exporter.proxy.reconfigure(new, exporter.prices)

        self.exporter_loop.run(apply())

    @contextlib.contextmanager
    def raw_upstream(self, script: Script) -> Iterator[RawUpstream]:
        upstream = RawUpstream(self.raw_loop, script)
        self.point_upstream(upstream.url)
        try:
            yield upstream
        finally:
            self.point_upstream(self.sim.base_url)
            upstream.close()

    def close_idle_upstream(self) -> None:
        """After concurrent requests the proxy keeps one idle upstream connection per request
        that was in flight at once, for reuse (30 s keep-alive): bounded, not leaked. Close
        them (a new session) so that the descriptor count can return to its baseline."""
        proxy = self.running.exporter.proxy

        async def recycle() -> None:
            await proxy.aclose()
            await proxy.open()

        self.exporter_loop.run(recycle())

    # -- invariants ---------------------------------------------------------------------------

    def scrape(self) -> str:
        self.running.settle()
        response = HTTP.get(self.running.web_url + "/metrics")
        response.raise_for_status()
        return response.text

    def counters(self) -> Counter[tuple[str, tuple[str, ...]]]:
        samples = parse_samples(self.scrape())
        counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
        for family, (name, labels) in COUNTED.items():
            for (sample, label_set), value in samples.items():
                if sample == name:
                    values = dict(label_set)
                    counts[(family, tuple(values[label] for label in labels))] = int(value)
        return counts

    def tasks(self) -> set[asyncio.Task[Any]]:
        async def collect() -> set[asyncio.Task[Any]]:
            return set(asyncio.all_tasks()) - {asyncio.current_task()}

        return self.exporter_loop.run(collect())

    def alive(self) -> None:
        assert HTTP.get(self.running.web_url + "/-/healthy").status_code == 200
        response = self.post()
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] > 0

    def baseline(self) -> None:
        self.alive()  # warm: the proxy's upstream pool holds a connection, as it will after
        self.running.settle()
        self.counts = self.counters()
        self.tasks_before = self.tasks()
        self.fds_before = fd_count()

    def check(self, **expected: dict[tuple[str, ...], int]) -> None:
        """Assert the invariants; ``expected`` gives the counter deltas by family, e.g.
        ``requests={("prod", MODEL, "200"): 3}``. Every other delta must be zero."""
        assert set(expected) <= set(COUNTED), set(expected) - set(COUNTED)
        self.running.settle()  # in flight back to 0, or fail after a deadline
        assert self.in_flight() == 0
        after = self.counters()
        deltas = {
            key: after[key] - self.counts.get(key, 0)
            for key in set(after) | set(self.counts)
            if after[key] != self.counts.get(key, 0)
        }
        wanted = {
            (family, labels): n
            for family, by_labels in expected.items()
            for labels, n in by_labels.items()
            if n
        }
        assert deltas == wanted

        self.alive()

        def leftover() -> set[asyncio.Task[Any]]:
            return {
                t
                for t in self.tasks() - self.tasks_before
                if t.get_name() != "balance-poller" and not t.done()
            }

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not leftover(), timeout=10)
        assert not leftover(), f"tasks left behind: {leftover()}"

        with contextlib.suppress(AssertionError):
            wait_until(lambda: fd_count() <= self.fds_before + FD_SLACK, timeout=10)
        assert fd_count() <= self.fds_before + FD_SLACK, (self.fds_before, fd_count())

        outputs = [
            self.scrape(),
            HTTP.get(self.running.web_url + "/").text,
            self.caplog.text,
            *self.seen,
        ]
        for output in outputs:
            for key in KEYS:
                assert key not in output
        errors = [r for r in self.caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        self.baseline()  # a test may go on with another fault


# -- a raw upstream, for what the simulator cannot do -----------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """A scripted HTTP/1.1 server on its own loop: reads each request (head and a sized body),
    keeps its exact bytes, then runs ``script`` to answer (or not)."""

    def __init__(self, loop: BackgroundLoop, script: Script) -> None:
        self.loop = loop
        self.script = script
        self.received: list[tuple[bytes, bytes]] = []
        self.server = loop.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            self.received.append((head, body))
            await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    def close(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.loop.run(close())


async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say nothing more until the proxy hangs up."""
    while await reader.read(65536):
        pass


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def raw_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


BenchFactory = Callable[..., Bench]


@pytest.fixture
def make_bench(
    background_loop: BackgroundLoop, raw_loop: BackgroundLoop, caplog: pytest.LogCaptureFixture
) -> Iterator[BenchFactory]:
    for logger in ("exporter", "aiohttp", "asyncio"):  # everything the exporter may log
        caplog.set_level(logging.DEBUG, logger=logger)
    with contextlib.ExitStack() as stack:

        def make(timeout: float = TIMEOUT, max_body_bytes: int = 1 << 20, **options: Any) -> Bench:
            sim = stack.enter_context(running_simulator())
            config = exporter_config(sim.base_url)
            config = replace(
                config,
                proxy=replace(config.proxy, timeout=timeout, max_body_bytes=max_body_bytes),
            )
            running = stack.enter_context(running_exporter(config, background_loop, **options))
            return Bench(sim, running, caplog, raw_loop)

        yield make


@pytest.fixture
def bench(make_bench: BenchFactory) -> Bench:
    return make_bench()


# -- the upstream fails -----------------------------------------------------------------------

REPEAT = 5  # more than FD_SLACK: a descriptor leaked per request cannot hide in the slack


def test_upstream_refuses_connections(bench: Bench) -> None:
    # A port that is bound but not listening refuses connections, and stays ours meanwhile.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        bench.point_upstream(f"http://127.0.0.1:{placeholder.getsockname()[1]}")
        for _ in range(REPEAT):
            response = bench.post()
            assert response.status_code == 502
            assert response.json()["error"]["message"] == "Cannot reach the upstream API"
    bench.point_upstream(bench.sim.base_url)
    bench.check(upstream_errors={("prod", "connect"): REPEAT})


def test_upstream_drops_the_connection_before_answering(bench: Bench) -> None:
    bench.sim.add_fault("drop", path=CHAT, times=REPEAT)
    for _ in range(REPEAT):
        response = bench.post()
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_reset"
    bench.check(upstream_errors={("prod", "reset"): REPEAT})


@pytest.mark.parametrize("stream", [False, True], ids=["mid-body", "mid-stream"])
def test_upstream_resets(bench: Bench, stream: bool) -> None:
    bench.sim.add_fault("reset", path=CHAT, times=REPEAT, after_chunks=3)
    for _ in range(REPEAT):
        received = bench.post_aborted(chat_body(stream))
        assert received  # half a body, or the first events
        assert b"[DONE]" not in received
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        aborts={("prod", MODEL, "upstream_disconnect"): REPEAT},
    )


def test_upstream_not_http(bench: Bench) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    with bench.raw_upstream(garbage):
        for _ in range(REPEAT):
            response = bench.post()
            assert response.status_code == 502
            assert response.json()["error"]["type"] == "upstream_reset"
    bench.check(upstream_errors={("prod", "reset"): REPEAT})


def test_upstream_body_shorter_than_its_content_length(bench: Bench) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"id": "cut", "usage": {"prompt_'
        )
        await writer.drain()

    with bench.raw_upstream(short):
        for _ in range(REPEAT):
            assert bench.post_aborted(chat_body()).startswith(b'{"id": "cut"')
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        aborts={("prod", MODEL, "upstream_disconnect"): REPEAT},
    )


def test_upstream_stalls_before_headers_beyond_the_timeout(make_bench: BenchFactory) -> None:
    bench = make_bench(timeout=SHORT_TIMEOUT)
    bench.sim.add_fault("delay", path=CHAT, times=3, seconds=5.0)
    for _ in range(3):
        response = bench.post()
        assert response.status_code == 504
        assert response.json()["error"]["message"] == "Upstream did not answer in time"
    bench.check(upstream_errors={("prod", "timeout"): 3})


@pytest.mark.parametrize("stream", [False, True], ids=["mid-body", "mid-stream"])
def test_upstream_stalls_between_chunks_beyond_the_timeout(
    make_bench: BenchFactory, stream: bool
) -> None:
    bench = make_bench(timeout=SHORT_TIMEOUT)
    bench.sim.add_fault("stall", path=CHAT, times=3, seconds=5.0, after_chunks=2)
    for _ in range(3):
        assert bench.post_aborted(chat_body(stream))
    bench.check(
        requests={("prod", MODEL, "200"): 3},
        aborts={("prod", MODEL, "upstream_disconnect"): 3},
    )


def test_upstream_goes_silent_after_its_headers(make_bench: BenchFactory) -> None:
    bench = make_bench(timeout=SHORT_TIMEOUT)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {}\n\n")
        await writer.drain()
        await until_closed(reader, writer)

    with bench.raw_upstream(silent):
        for _ in range(3):
            assert bench.post_aborted(chat_body(True)) == b"data: {}\n\n"
    bench.check(
        requests={("prod", MODEL, "200"): 3},
        aborts={("prod", MODEL, "upstream_disconnect"): 3},
    )


@pytest.mark.parametrize("where", ["delay", "stall-body", "stall-stream"])
def test_upstream_stalls_within_the_timeout(bench: Bench, where: str) -> None:
    kind, _, part = where.partition("-")
    bench.sim.add_fault(kind, path=CHAT, times=3, seconds=0.05, after_chunks=2)
    for _ in range(3):
        response = bench.post(chat_body(stream=part == "stream"))
        assert response.status_code == 200
        if part == "stream":
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.json()["usage"]["completion_tokens"] > 0
    bench.check(requests={("prod", MODEL, "200"): 3})


def test_malformed_json_is_passed_on_and_counted_without_usage(bench: Bench) -> None:
    junk = b'{"id": "x", "choices": [{"message": {"content": "unterminated'
    bench.sim.add_fault("non_json", path=CHAT, times=REPEAT, body=junk)
    for _ in range(REPEAT):
        response = bench.post()
        assert response.status_code == 200
        assert response.content == junk  # byte for byte
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        usage_missing={("prod", MODEL): REPEAT},
    )


MALFORMED_SSE = (
    b": keep-alive\n\n"
    b"data: {not json\n\n"
    b'data: {"usage": {"prompt_tokens": "12", "completion_tokens": -3}}\n\n'
    b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2\r\n'
    b"event: ???\ndata:\n\n"
    b"\xff\xfe\x00garbage\n"
    b'data: {"usage": {"completion_tokens": true, "prompt_tokens": 5}}\n\n'
    b"data: [DONE"
)


def test_malformed_sse_is_passed_on_and_counted_without_usage(bench: Bench) -> None:
    bench.sim.add_fault(
        "body", path=CHAT, times=REPEAT, body=MALFORMED_SSE, content_type="text/event-stream"
    )
    for _ in range(REPEAT):
        response = bench.post(chat_body(stream=True))
        assert response.status_code == 200
        assert response.content == MALFORMED_SSE
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        usage_missing={("prod", MODEL): REPEAT},
    )


def test_a_10_mb_reply(bench: Bench) -> None:
    size = 10 * 1024 * 1024
    bench.sim.add_fault("huge", path=CHAT, size=size)
    response = bench.post()
    assert response.status_code == 200
    assert len(response.content) == size
    assert response.json()["usage"]["completion_tokens"] > 0  # intact
    bench.seen[-1] = ""  # 10 MB of filler: no need to search it for keys
    # The proxy keeps a copy of at most 4 MiB of a reply to find its usage: a 10 MB one is
    # counted as a request without usage, never guessed.
    bench.check(requests={("prod", MODEL, "200"): 1}, usage_missing={("prod", MODEL): 1})

    # Streaming: a 10 MB first event; the usage at the end is still found.
    bench.sim.add_fault("huge", path=CHAT, size=size)
    tokens = bench.running.registry_value(
        "deepseek_tokens_total", account="prod", model=MODEL, token_type="output"
    )
    response = bench.post(chat_body(stream=True))
    assert response.status_code == 200
    assert len(response.content) > size
    assert response.text.rstrip().endswith("data: [DONE]")
    bench.seen[-1] = ""
    assert (
        bench.running.registry_value(
            "deepseek_tokens_total", account="prod", model=MODEL, token_type="output"
        )
        == tokens + bench.sim.completion_tokens
    )
    bench.check(requests={("prod", MODEL, "200"): 1})


def test_html_error_page_is_passed_on(bench: Bench) -> None:
    bench.sim.add_fault("html", path=CHAT, times=REPEAT)
    unknown = {**AUTH, "Authorization": f"Bearer {UNKNOWN_KEY}"}
    for i in range(REPEAT):
        response = bench.post(headers=AUTH if i % 2 else unknown)
        assert response.status_code == 502
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"<h1>502 Bad Gateway</h1>" in response.content
    bench.check(
        requests={
            ("prod", MODEL, "502"): REPEAT // 2,
            ("unknown", MODEL, "502"): REPEAT - REPEAT // 2,
        }
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_200_without_usage(bench: Bench, stream: bool) -> None:
    bench.sim.add_fault("no_usage", path=CHAT, times=REPEAT)
    for _ in range(REPEAT):
        response = bench.post(chat_body(stream))
        assert response.status_code == 200
        assert '"usage"' not in response.text
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        usage_missing={("prod", MODEL): REPEAT},
    )


def test_a_client_that_reads_slowly_leaves_the_upstream_connection_usable(bench: Bench) -> None:
    """A big reply read slowly: the proxy pauses reading the upstream whenever the client falls
    behind and resumes as it catches up; the reply arrives whole, and the upstream connection
    goes back to the pool usable: the next requests on it are answered, not left to time out
    (504). That the pool resumes a connection released while paused is tested directly in
    test_proxy.py: which write of a reply crosses the high-water mark is up to the scheduler."""
    size = 2 * 1024 * 1024
    bench.sim.add_fault("huge", path=CHAT, size=size)
    client = RawClient(bench)
    body = chat_body()
    client.sock.sendall(RawClient.request_head(len(body)) + body)
    client.read_until(b"\r\n\r\n")
    head, _, rest = client.received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    received = len(rest)
    while received < length:
        time.sleep(0.002)  # slower than loopback: the proxy's buffer toward us fills up
        chunk = client.sock.recv(16384)
        assert chunk
        received += len(chunk)
    client.close()
    assert received == length == size
    for _ in range(REPEAT):  # on the pooled connection: answered, not a 504
        response = bench.post()
        assert response.status_code == 200, response.text
    bench.check(requests={("prod", MODEL, "200"): REPEAT + 1})


# -- the client fails -------------------------------------------------------------------------


class RawClient:
    """One raw connection to the proxy, to go away at a chosen moment."""

    def __init__(self, bench: Bench) -> None:
        host, port = bench.proxy_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.received = b""

    @staticmethod
    def request_head(length: int | None, extra: str = "") -> bytes:
        size = f"Content-Length: {length}\r\n" if length is not None else ""
        return (
            f"POST {CHAT} HTTP/1.1\r\nHost: upstream\r\nAuthorization: Bearer {PROD_KEY}\r\n"
            f"Content-Type: application/json\r\n{size}{extra}\r\n"
        ).encode()

    def read_until(self, marker: bytes) -> None:
        while marker not in self.received:
            chunk = self.sock.recv(65536)
            assert chunk, self.received
            self.received += chunk

    def close(self) -> None:
        self.sock.close()


def test_client_disconnects_before_the_response_headers(bench: Bench) -> None:
    bench.sim.add_fault("delay", path=CHAT, times=REPEAT, seconds=1.5)
    for _ in range(REPEAT):
        client = RawClient(bench)
        body = chat_body()
        client.sock.sendall(RawClient.request_head(len(body)) + body)
        wait_until(lambda: bench.in_flight() == 1)  # forwarded, waiting for the upstream
        client.close()
        wait_until(lambda: bench.in_flight() == 0)
    bench.check(aborts={("prod", MODEL, "client_disconnect"): REPEAT})


def test_client_disconnects_mid_body(bench: Bench) -> None:
    bench.sim.add_fault("stall", path=CHAT, times=REPEAT, seconds=1.5)  # half a body, a pause
    for _ in range(REPEAT):
        client = RawClient(bench)
        body = chat_body()
        client.sock.sendall(RawClient.request_head(len(body)) + body)
        client.read_until(b'"id"')
        client.close()
        wait_until(lambda: bench.in_flight() == 0)
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        aborts={("prod", MODEL, "client_disconnect"): REPEAT},
    )


def test_client_disconnects_mid_stream(bench: Bench) -> None:
    bench.sim.stream_chunks, bench.sim.chunk_interval = 50, 0.05
    for _ in range(REPEAT):
        client = RawClient(bench)
        body = chat_body(stream=True)
        client.sock.sendall(RawClient.request_head(len(body)) + body)
        client.read_until(b"data: ")
        client.close()
        wait_until(lambda: bench.in_flight() == 0)
    bench.sim.stream_chunks, bench.sim.chunk_interval = 8, 0.0
    bench.check(
        requests={("prod", MODEL, "200"): REPEAT},
        aborts={("prod", MODEL, "client_disconnect"): REPEAT},
    )
    # Each upstream request ended with its client: the simulator saw them go (499).
    wait_until(lambda: bench.sim.stats()["prod"].completions.get(499) == REPEAT)


@pytest.mark.parametrize("size", [2_000, 200_000], ids=["small", "streamed"])
def test_client_disconnects_while_sending_its_body(bench: Bench, size: int) -> None:
    body = chat_body()[:-2] + b', "pad": "' + b"x" * size + b'"}'
    for _ in range(REPEAT):
        client = RawClient(bench)
        client.sock.sendall(RawClient.request_head(len(body)) + body[: len(body) // 2])
        if size > 64 * 1024:
            # Bodies over 64 KiB stream to the upstream as they arrive: wait until it has the
            # request head (sent along with the first piece of the body).
            wait_until(lambda: any(r.status is None for r in bench.sim.requests()))
        client.close()
        wait_until(lambda: bench.in_flight() == 0)
        wait_until(lambda: all(r.status is not None for r in bench.sim.requests()))
    if size > 64 * 1024:
        bench.check(aborts={("prod", MODEL, "client_disconnect"): REPEAT})
    else:
        # Never forwarded: nothing to meter.
        bench.check()


def test_oversized_requests_get_413(bench: Bench) -> None:
    limit = 1 << 20  # the bench's proxy.max_body_bytes
    before = len(bench.sim.requests())
    # Announced by Content-Length: refused before a byte of the body is read.
    client = RawClient(bench)
    reply = bench.raw(RawClient.request_head(10**12), wait_for=b'"error"')
    client.close()
    assert reply.startswith(b"HTTP/1.1 413")
    big = chat_body()[:-1] + b', "pad": "' + b"x" * limit + b'"}'
    assert bench.post(big).status_code == 413
    assert len(bench.sim.requests()) == before  # neither reached the upstream

    def chunked() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        yield chat_body()[:-1] + b', "pad": "'
        for _ in range(40):
            yield b"x" * 65536

    response = bench.post(chunked())
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "Request body too large"
    bench.check(rejected={("body_too_large",): 3})


MALFORMED_HTTP = {
    "not-http": b"GARBAGE\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",
    "bad-header-line": b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "bad-content-length": (
        b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    ),
    "two-content-lengths": (
        b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "cl-and-chunked": (
        b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "header-too-long": b"GET /models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    "too-many-headers": (
        b"GET /models HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n"
    ),
    "target-too-long": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-key-header": (  # the parser's error message quotes the offending line: a key
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PROD_KEY}\x00\r\n\r\n"
    ).encode(),
    "bad-key-line": f"POST {CHAT} HTTP/1.1\r\nAuthorization Bearer {PROD_KEY}\r\n\r\n".encode(),
}


@pytest.mark.parametrize("name", MALFORMED_HTTP)
def test_malformed_http_is_refused_by_the_server(bench: Bench, name: str) -> None:
    before = len(bench.sim.requests())
    reply = bench.raw(MALFORMED_HTTP[name], keep=False)
    # aiohttp answers 400 with its parser's message, which quotes the bad line back to the
    # client that sent it (its own bytes, so not searched for keys); it must not reach the logs.
    assert reply == b"" or reply.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert len(bench.sim.requests()) == before  # nothing forwarded
    # Logged as one line naming the error, without the bytes (exporter.app redacts it).
    assert any(r.getMessage().startswith("malformed HTTP request") for r in bench.caplog.records)
    # Refused by aiohttp's HTTP parser before the proxy sees a request: nothing to count.
    bench.check()


def test_malformed_chunked_body(bench: Bench) -> None:
    # A valid head, then a broken chunked body: the proxy has started forwarding it.
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PROD_KEY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + b'1a\r\n{"model": "deepseek-flash",\r\nzz\r\nnot a chunk\r\n0\r\n\r\n'
    for _ in range(REPEAT):
        reply = bench.raw(request)
        assert reply.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    # The whole request was in the first read: aiohttp's parser refused it before the proxy
    # could forward anything.
    bench.check()


BAD_JSON = [
    b'{"model": "deepseek-flash", "messages": [',
    b"not json at all",
    b'{"model": "deepseek-flash"}}} trailing',
    b"\xff\xfe\x00\x01",
    b'{"model": 42, "messages": "no"}',
]


def test_bad_json_is_forwarded_byte_for_byte(bench: Bench) -> None:
    answer = json.dumps(
        {"error": {"message": "Failed to parse the request body as JSON", "type": "bad"}}
    ).encode()

    async def reject(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
        )
        await writer.drain()

    with bench.raw_upstream(reject) as upstream:
        for body in BAD_JSON:
            response = bench.post(body)
            assert response.status_code == 400
            assert response.content == answer
            head, received = upstream.received[-1]
            assert received == body
            assert head.startswith(f"POST {CHAT} HTTP/1.1\r\n".encode())
    # Against the simulator, which answers like DeepSeek does.
    response = bench.post(BAD_JSON[0])
    assert response.status_code == 400
    assert "Failed to parse the request body as JSON" in response.json()["error"]["message"]
    bench.check(requests={("prod", MODEL, "400"): 3, ("prod", "other", "400"): 3})


def test_slowloris_does_not_starve_anyone(bench: Bench) -> None:
    def connect(url: str) -> socket.socket:
        host, port = url.removeprefix("http://").split(":")
        return socket.create_connection((host, int(port)), timeout=10)

    idle = [connect(bench.proxy_url) for _ in range(150)]
    idle += [connect(bench.running.web_url) for _ in range(50)]
    dripping = [connect(bench.proxy_url) for _ in range(40)]
    holding = [connect(bench.proxy_url) for _ in range(20)]  # head sent, body trickles
    uploading = [connect(bench.proxy_url) for _ in range(3)]  # > 64 KiB body, streaming
    body = chat_body()[:-1] + b', "pad": "' + b"x" * 100_000 + b'"}'
    try:
        for sock in holding:
            sock.sendall(RawClient.request_head(1000) + b'{"model": "deep')
        for sock in uploading:
            sock.sendall(RawClient.request_head(len(body)) + body[:70_000])
        wait_until(lambda: bench.in_flight() == len(uploading))
        # The upstream has their heads, which go with the first piece of the body: the model
        # has been seen.
        wait_until(lambda: sum(r.status is None for r in bench.sim.requests()) == len(uploading))
        head = RawClient.request_head(100)[:-2]  # never finished
        for i in range(len(head)):
            for sock in dripping:
                sock.sendall(head[i : i + 1])
            if i % 40 == 0:
                bench.alive()  # others are served all along
                metrics = HTTP.get(bench.running.web_url + "/metrics")
                assert "deepseek_requests_total" in metrics.text
        bench.alive()
    finally:
        for sock in idle + dripping + holding + uploading:
            sock.close()
    wait_until(lambda: bench.in_flight() == 0)
    # Only the streamed uploads had reached the upstream: they count as the client's abort.
    bench.check(
        requests={("prod", MODEL, "200"): len(range(0, len(head), 40)) + 1},
        aborts={("prod", MODEL, "client_disconnect"): len(uploading)},
    )


def test_1000_concurrent_streams(bench: Bench) -> None:
    streams = 1000
    # Both ends of each connection, twice (client-proxy, proxy-upstream), in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = fd_count() + 4 * streams + 200
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the descriptor limit ({hard}) is too low for {streams} streams")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    bench.sim.stream_chunks, bench.sim.chunk_interval = 4, 0.05
    tokens_before = bench.running.registry_value(
        "deepseek_tokens_total", account="prod", model=MODEL, token_type="output"
    )

    async def run() -> list[bytes]:
        opened = 0
        all_open = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one() -> bytes:
                nonlocal opened
                async with session.post(
                    bench.proxy_url + CHAT, data=chat_body(stream=True), headers=AUTH
                ) as response:
                    assert response.status == 200
                    first = await response.content.readuntil(b"\n\n")
                    # Every stream is open before any is read to its end.
                    opened += 1
                    if opened == streams:
                        all_open.set()
                    await asyncio.wait_for(all_open.wait(), 120)
                    return first + await response.content.read()

            return await asyncio.gather(*(one() for _ in range(streams)))

    bodies = asyncio.run(run())
    assert all(body.endswith(b"data: [DONE]\n\n") for body in bodies)
    assert all(b'"usage"' in body for body in bodies)
    bench.running.settle()
    tokens = bench.running.registry_value(
        "deepseek_tokens_total", account="prod", model=MODEL, token_type="output"
    )
    assert tokens == tokens_before + streams * bench.sim.completion_tokens
    bench.close_idle_upstream()
    bench.check(requests={("prod", MODEL, "200"): streams})


def test_reload_under_load_drops_no_request(make_bench: BenchFactory, tmp_path: Path) -> None:
    file = tmp_path / "deepseek.yml"
    env = {"K_PROD": PROD_KEY, "K_USD": USD_KEY}
    reloads = 0

    def write(base_url: str, threshold: int) -> None:
        file.write_text(
            f"deepseek: {{base_url: '{base_url}', timeout: 2s}}\n"
            "balance: {poll_interval: 1h, max_staleness: 2h}\n"
            "proxy: {timeout: 5s}\n"
            "accounts:\n"
            f"  - {{name: prod, api_key_env: K_PROD, low_balance_threshold: {threshold}}}\n"
            "  - {name: usd, api_key_env: K_USD}\n"
        )

    class Loader:
        listeners: Any = None

        def __call__(self) -> Any:
            nonlocal reloads
            reloads += 1
            write(base_url, 5 + reloads % 2)  # every reload changes something
            config, prices = load_all(file, env)
            return replace(config, web=self.listeners.web, proxy=self.listeners.proxy), prices

    loader = Loader()
    # The simulator's URL is known once the bench has started it: the loader reads it then.
    bench = make_bench(loader=loader)
    base_url = bench.sim.base_url
    loader.listeners = bench.running.exporter.config
    bench.sim.stream_chunks, bench.sim.chunk_interval = 8, 0.01

    tally: Counter[tuple[str, str, str]] = Counter()
    done = [0] * 4
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        key, account = (PROD_KEY, "prod") if worker % 2 else (USD_KEY, "usd")
        headers = {**AUTH, "Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=bench.proxy_url, headers=headers, timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                stream = n % 2 == 0
                try:
                    response = client.post(CHAT, content=chat_body(stream))
                    complete = (
                        response.text.rstrip().endswith("data: [DONE]")
                        if stream
                        else "usage" in response.json()
                    )
                except (httpx.HTTPError, ValueError) as error:
                    failures.append(repr(error))
                    continue
                with lock:
                    tally[(account, MODEL, str(response.status_code))] += 1
                done[worker] += 1
                if response.status_code != 200 or not complete:
                    failures.append(f"{response.status_code}: {response.text[:200]}")

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(20):
            wait_until(lambda: bench.in_flight() > 0)  # reload with requests in flight
            response = HTTP.post(bench.running.web_url + "/-/reload")
            assert response.status_code == 200, response.text
        # Every worker got through a few requests (streaming and not) in the meantime.
        wait_until(lambda: all(n >= 2 for n in done))
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert reloads >= 20
    assert not failures, failures[:5]
    assert bench.running.registry_value(
        "deepseek_balance_low_threshold", account="prod", currency="CNY"
    ) in (5, 6)
    bench.close_idle_upstream()
    bench.check(requests=dict(tally))


def test_idle_and_slow_connections_are_closed_after_the_keepalive_timeout(
    make_bench: BenchFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 75 s in production (exporter.proxy.KEEPALIVE_TIMEOUT); short here.
    monkeypatch.setattr("exporter.proxy.http1.KEEPALIVE_TIMEOUT", 0.3)
    monkeypatch.setattr("exporter.app.KEEPALIVE_TIMEOUT", 0.3)
    bench = make_bench()

    def connect(url: str) -> socket.socket:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setblocking(False)
        return sock

    idle = [connect(bench.proxy_url), connect(bench.running.web_url)]
    dripping = [connect(bench.proxy_url), connect(bench.running.web_url)]
    head = RawClient.request_head(10)
    sent = 0

    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(65536) == b""
        except BlockingIOError:
            return False
        except ConnectionError:
            return True

    def all_closed() -> bool:
        nonlocal sent
        if sent < len(head) - 2:  # a byte at a time, never the end of the head
            for sock in dripping:
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    sock.send(head[sent : sent + 1])
            sent += 1
        return all(closed(sock) for sock in idle + dripping)

    try:
        wait_until(all_closed)
    finally:
        for sock in idle + dripping:
            sock.close()
    bench.check()


def test_balance_polls_survive_malformed_replies(bench: Bench) -> None:
    faults = [
        ("non_json", {}, "invalid_response"),
        ("body", {"body": b"[" * 100_000}, "invalid_response"),  # deeper than json can go
        (
            "body",
            {"body": {"is_available": True, "balance_infos": [{"\r\n": 1}]}},
            "invalid_response",
        ),
        ("html", {}, "http_error"),
        ("status", {"status": 401}, "unauthorized"),
        ("drop", {}, "connection"),
        ("huge", {"size": 10 * 1024 * 1024}, "invalid_response"),  # a padding field: refused
    ]
    registry = bench.running.exporter.registry
    for kind, params, reason in faults:
        bench.sim.add_fault(kind, path="/user/balance", **params)
        bench.running.poll()  # polls both accounts: one gets the fault
        up = {a: registry.get_sample_value("deepseek_up", {"account": a}) for a in ("prod", "usd")}
        assert sorted(up.values()) == [0, 1]
        failed = next(a for a, v in up.items() if v == 0)
        value = registry.get_sample_value(
            "deepseek_balance_poll_errors_total", {"account": failed, "reason": reason}
        )
        assert value is not None and value >= 1
        bench.running.poll()  # and the next poll is fine again
        assert registry.get_sample_value("deepseek_up", {"account": "prod"}) == 1
        assert registry.get_sample_value("deepseek_up", {"account": "usd"}) == 1
    # The background polling task is still there.
    assert any(t.get_name() == "balance-poller" and not t.done() for t in bench.tasks())
    bench.check()

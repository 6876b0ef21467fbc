"""Streaming capacity: the most concurrent streams at 30 chunks a second a target carries with each
chunk's delivery delay under 50 ms at the 99th percentile.

One step holds ``n`` streams open at once: they are opened spread over ``stagger`` seconds (so
that their chunks do not all fall due at the same instant), run ``settle`` seconds, then every
chunk that arrives during ``window`` seconds is timed. A chunk's delivery delay is its arrival
at the client minus the send time the upstream (``bench/upstream.py``) stamped in its content;
both clocks are ``CLOCK_MONOTONIC``. A step passes when that p99 is under the limit and every
stream of the step arrived intact: every chunk in order, the usage chunk and ``[DONE]``, no
connection refused or cut; and when the chunks arrived at the pace asked for (95 %): the send
stamp hides an upstream that falls behind, the pace does not. The search doubles ``n`` from
``start`` until a step fails, then bisects between the last pass and the first failure.

The client is one asyncio process (the benchmark's, on uvloop) with one protocol object per
stream and llhttp (``httptools``) to undo the chunked framing: a few microseconds per chunk, so
that the client is not what fails first. Whatever the target, the client and the upstream share
the machine with it: the ``direct`` target (client to upstream, nothing between) is the ceiling
of the harness on this machine.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

import benchlib as bl

CHUNKS_PER_SECOND = 30
DELAY_P99_LIMIT_MS = 50.0
MIN_PACE = 0.95  # of the chunks a second asked for must arrive in the window
# The stamp bench/upstream.py writes in each chunk's content; the closing quote makes sure a
# stamp cut by a read boundary is not read short.
_STAMP = re.compile(rb'seq=(\d+),t=(\d+)"')
_TAIL = 96  # bytes kept between reads: longer than any stamp


@dataclass(frozen=True)
class CapacityPlan:
    start: int  # streams in the first step
    limit: int  # never more than this (descriptors: the proxy holds two per stream)
    stagger: float  # seconds over which a step's streams are opened
    settle: float  # seconds between the last stream opened and the window
    window: float  # seconds during which chunk delays are measured
    refine: int  # bisection steps after the first failure


FULL_CAPACITY = CapacityPlan(start=50, limit=6400, stagger=1.0, settle=0.5, window=3.0, refine=3)
QUICK_CAPACITY = CapacityPlan(start=100, limit=6400, stagger=1.0, settle=0.3, window=1.5, refine=1)


@dataclass
class Step:
    streams: int
    delays_ms: list[float] = field(default_factory=list)
    intact: int = 0
    broken: int = 0  # a chunk missing or out of order, no usage, no [DONE], or cut
    refused: int = 0  # could not connect, or not a 200
    cpu_s: float = 0.0  # the target's CPU during the window
    chunks_in_window: int = 0
    window_s: float = 0.0

    @property
    def delivered_per_second(self) -> float:
        return self.chunks_in_window / self.window_s if self.window_s else 0.0

    @property
    def paced(self) -> bool:
        """Chunks arrived at (nearly) the pace asked for: a late chunk is one thing, an
        upstream or client that fell behind (so that fewer chunks were sent) is another."""
        return self.delivered_per_second >= MIN_PACE * self.streams * CHUNKS_PER_SECOND

    @property
    def p99_ms(self) -> float:
        return bl.percentile(self.delays_ms, 99) if self.delays_ms else float("inf")

    @property
    def ok(self) -> bool:
        return (
            self.p99_ms < DELAY_P99_LIMIT_MS and self.paced and not self.broken and not self.refused
        )

    @property
    def cpu_us_per_chunk(self) -> float:
        return self.cpu_s / self.chunks_in_window * 1e6 if self.chunks_in_window else float("nan")


@dataclass
class Capacity:
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        """The largest step that passed."""
        return max((s for s in self.steps if s.ok), key=lambda s: s.streams, default=None)

    @property
    def first_failure(self) -> Step | None:
        best = self.best.streams if self.best else 0
        failed = [s for s in self.steps if not s.ok and s.streams > best]
        return min(failed, key=lambda s: s.streams, default=None)

    @property
    def streams_sent(self) -> int:
        return sum(s.streams for s in self.steps)

    @property
    def streams_intact(self) -> int:
        return sum(s.intact for s in self.steps)


class _Window:
    """The measuring window of a step, shared by its streams."""

    __slots__ = ("chunks", "delays", "end_ns", "start_ns")

    def __init__(self) -> None:
        self.start_ns = self.end_ns = 0
        self.delays: list[float] = []
        self.chunks = 0


class _Stream(asyncio.Protocol):
    """One streamed completion: checks it chunk by chunk and times the chunks in the window."""

    __slots__ = (
        "chunks",
        "done",
        "failed",
        "finished",
        "next_seq",
        "parser",
        "pending",
        "request",
        "status",
        "transport",
        "usage",
        "window",
    )

    def __init__(
        self, request: bytes, chunks: int, window: _Window, finished: asyncio.Future
    ) -> None:
        self.request = request
        self.chunks = chunks
        self.window = window
        self.finished = finished
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.next_seq = 0
        self.status = 0
        self.usage = self.done = self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._end(ok=False)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        now = time.monotonic_ns()
        data = self.pending + body if self.pending else body
        window = self.window
        timed = window.start_ns <= now < window.end_ns
        last = 0
        for match in _STAMP.finditer(data):
            seq = int(match.group(1))
            if seq != self.next_seq:
                self.failed = True
            self.next_seq = seq + 1
            if timed:
                window.delays.append((now - int(match.group(2))) / 1e6)
                window.chunks += 1
            last = match.end()
        if b'"usage":{' in data or b'"usage": {' in data:
            self.usage = True
        if b"[DONE]" in data:
            self.done = True
        self.pending = data[max(last, len(data) - _TAIL) :]

    def on_message_complete(self) -> None:
        ok = self.status == 200 and not self.failed and self.next_seq == self.chunks
        self._end(ok=ok and self.usage and self.done)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(ok=False)

    def _end(self, *, ok: bool) -> None:
        if not self.finished.done():
            self.finished.set_result(ok)
            if self.transport is not None:
                self.transport.close()


async def _step(port: int, path: str, n: int, plan: CapacityPlan, cpu: Callable[[], float]) -> Step:
    loop = asyncio.get_running_loop()
    duration = plan.stagger + plan.settle + plan.window + 0.5
    chunks = int(duration * CHUNKS_PER_SECOND)
    body = bl.stream_body(chunks=chunks, interval_ms=1000 / CHUNKS_PER_SECOND)
    request = bl.build_request(port, path, body)
    window = _Window()
    step = Step(n)
    futures: list[asyncio.Future[bool]] = []

    async def open_one(delay: float) -> None:
        await asyncio.sleep(delay)
        finished: asyncio.Future[bool] = loop.create_future()
        try:
            await loop.create_connection(
                lambda: _Stream(request, chunks, window, finished), bl.HOST, port
            )
        except OSError:
            step.refused += 1
            return
        futures.append(finished)

    # Each stream opens at its own moment, spread evenly (with jitter) over ``stagger``: the
    # upstream paces a stream from its request on, so streams opened together would send their
    # chunks together forever, in bursts no real traffic has.
    await asyncio.gather(*(open_one(plan.stagger * (i + random.random()) / n) for i in range(n)))
    await asyncio.sleep(plan.settle)
    window.start_ns = time.monotonic_ns()
    window.end_ns = window.start_ns + int(plan.window * 1e9)
    cpu0 = cpu()
    await asyncio.sleep(plan.window)
    step.cpu_s = cpu() - cpu0
    done, pending = await asyncio.wait(futures, timeout=duration + 10) if futures else ((), ())
    for future in pending:
        future.cancel()
    for future in done:
        if future.result():
            step.intact += 1
        else:
            step.broken += 1
    step.broken += len(pending)
    step.delays_ms = window.delays
    step.chunks_in_window = window.chunks
    step.window_s = plan.window
    return step


def _report(name: str, step: Step) -> None:
    print(
        f"  {name:8} {step.streams:5} streams: p99 {step.p99_ms:8.2f} ms, "
        f"{step.delivered_per_second:8,.0f} chunks/s, "
        f"intact {step.intact}/{step.streams}, refused {step.refused}, "
        f"{step.cpu_us_per_chunk:6.1f} µs CPU/chunk -> {'pass' if step.ok else 'FAIL'}",
        flush=True,
    )


async def find_capacity(
    name: str, port: int, path: str, plan: CapacityPlan, cpu: Callable[[], float]
) -> Capacity:
    """Double the streams until a step fails, then bisect ``plan.refine`` times."""
    result = Capacity()
    n, good, bad = plan.start, 0, 0
    while n <= plan.limit:
        step = await _step(port, path, n, plan, cpu)
        result.steps.append(step)
        _report(name, step)
        await asyncio.sleep(1.0)  # let the target close the last step's connections
        if not step.ok:
            bad = n
            break
        good, n = n, n * 2
    for _ in range(plan.refine if bad else 0):
        n = (good + bad) // 2
        if n in (good, bad):
            break
        step = await _step(port, path, n, plan, cpu)
        result.steps.append(step)
        _report(name, step)
        await asyncio.sleep(1.0)
        if step.ok:
            good = n
        else:
            bad = n
    return result

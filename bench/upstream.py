"""A stand-in for the DeepSeek API, as cheap as Python gets: a bare asyncio protocol.

One listener serves both benchmark upstreams:

* the **fast upstream**: any request whose body does not ask for ``"stream": true`` gets a fixed
  ``chat.completion`` JSON with usage at once (prebuilt bytes, one ``write``);
* the **slow upstream**: ``"stream": true`` gets SSE over chunked encoding: chunk 0 at once, then
  one chunk every ``interval_ms`` (default 20) until ``chunks`` (default 64) are sent, then a
  usage chunk and ``data: [DONE]``. Each chunk's delta content is ``seq=<n>,t=<ns>``: its number
  and the ``time.monotonic_ns()`` at which it was written (CLOCK_MONOTONIC is system-wide on
  Linux, so a client in another process can compute each chunk's one-way delivery delay). They
  travel in the content, not in fields of their own, because a proxy that re-serialises chunks
  (LiteLLM) keeps the content and drops fields it does not know. ``?interval_ms=1000&chunks=100000``
  holds a stream open for the RSS measurement; the same knobs also work as ``"bench_interval_ms"``
  and ``"bench_chunks"`` in the request body, which a re-serialising proxy forwards (LiteLLM
  drops the query string).

Chunks are scheduled at absolute times (``loop.call_at``), so the upstream's own gaps do not drift.
Run: ``python bench/upstream.py [--host 127.0.0.1] [--port 0]``; prints ``PORT <n>`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from urllib.parse import parse_qs, urlsplit

import uvloop

FAST_BODY = json.dumps(
    {
        "id": "bench-00000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "deepseek-chat",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": 10,
            "total_tokens": 26,
            "prompt_tokens_details": {"cached_tokens": 0},
            "prompt_cache_hit_tokens": 0,
            "prompt_cache_miss_tokens": 16,
        },
        "system_fingerprint": "fp_bench",
    },
    separators=(",", ":"),
).encode()
FAST_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(FAST_BODY)).encode()
    + b"\r\n\r\n"
    + FAST_BODY
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
STREAM_USAGE = (
    b'{"id":"bench-s","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"deepseek-chat","choices":[],"usage":{"prompt_tokens":16,"completion_tokens":64,'
    b'"total_tokens":80,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16}}'
)
DEFAULT_CHUNKS = 64
DEFAULT_INTERVAL_MS = 20.0


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(seq: int) -> bytes:
    data = (
        b'data: {"id":"bench-s","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"deepseek-chat","choices":[{"index":0,"delta":{"content":"seq=%d,t=%d"},'
        b'"finish_reason":null}],"usage":null}\n\n' % (seq, time.monotonic_ns())
    )
    return _chunked(data)


class Stream:
    """One SSE response in progress."""

    __slots__ = ("chunks", "handle", "interval", "loop", "seq", "start", "transport")

    def __init__(self, transport: asyncio.Transport, chunks: int, interval: float) -> None:
        self.transport = transport
        self.chunks = chunks
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.seq = 0
        self.start = self.loop.time()
        transport.write(STREAM_HEAD + _event(0))
        self.seq = 1
        self.handle: asyncio.TimerHandle | None = self.loop.call_at(
            self.start + interval, self.tick
        )

    def tick(self) -> None:
        if self.transport.is_closing():
            self.handle = None
            return
        if self.seq < self.chunks:
            self.transport.write(_event(self.seq))
            self.seq += 1
            self.handle = self.loop.call_at(self.start + self.seq * self.interval, self.tick)
            return
        self.transport.write(
            _chunked(b"data: " + STREAM_USAGE + b"\n\n")
            + _chunked(b"data: [DONE]\n\n")
            + b"0\r\n\r\n"
        )
        self.handle = None

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("buf", "stream", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.stream: Stream | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
                return
            total = end + 4 + length
            if len(buf) < total:
                break
            self.respond(head, buf[end + 4 : total])
            buf = buf[total:]
        self.buf = buf

    def respond(self, head: bytes, body: bytes) -> None:
        if b'"stream":true' not in body and b'"stream": true' not in body:
            self.transport.write(FAST_RESPONSE)
            return
        if self.stream is not None:
            self.stream.cancel()
        target = head[: head.find(b"\r\n")].split(b" ")[1].decode()
        query = parse_qs(urlsplit(target).query)
        chunks = int(query.get("chunks", [DEFAULT_CHUNKS])[0])
        interval_ms = float(query.get("interval_ms", [DEFAULT_INTERVAL_MS])[0])
        if b'"bench_' in body:  # parse JSON only when a knob is there: the plain case stays cheap
            fields = json.loads(body)
            chunks = int(fields.get("bench_chunks", chunks))
            interval_ms = float(fields.get("bench_interval_ms", interval_ms))
        self.stream = Stream(self.transport, chunks, interval_ms / 1000)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        UpstreamProtocol, host, port, backlog=4096, reuse_address=True
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    # uvloop (a dependency of the exporter) keeps the upstream's own cost per chunk low, so
    # that it is the targets, not the stand-in API, that run out of CPU first.
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

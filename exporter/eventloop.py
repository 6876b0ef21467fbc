"""The event loop the exporter's server runs on: uvloop when it is installed (a dependency on
Linux and macOS), else asyncio's own.

uvloop runs the same asyncio code on libuv. On the proxy's hot path the loop's own work
(polling, reading and writing sockets, running callbacks) is most of what a relayed chunk
costs; measured with the same code on both loops (bench/upstream.py behind the proxy, wrk and
32 streams), uvloop took about 11 % less CPU per streamed chunk and 6 % less per request.
Nothing in the exporter depends on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    """The running loop's implementation, for the startup log line."""
    module = type(asyncio.get_running_loop()).__module__
    if module.startswith("uvloop"):
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when installed."""
    with asyncio.Runner(loop_factory=_uvloop_factory()) as runner:
        return runner.run(main)

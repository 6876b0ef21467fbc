"""Shared test plumbing: an event loop in a background thread, and real binaries on demand.

Servers (the simulator, the exporter) run on a background loop so that tests can use ordinary
synchronous clients (httpx, the openai SDK, curl) against them over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from exporter.clock import ManualClock

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


def require_binary(name: str) -> str:
    """The path of a binary the test needs; fails loudly (never skips) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.fail(
            f"{name} is not installed: run ./scripts/test, which installs it", pytrace=False
        )
    return path


class FakeClock(ManualClock):
    """An injectable clock: tests move time instead of sleeping. Starts in November 2026."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        super().__init__(now)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

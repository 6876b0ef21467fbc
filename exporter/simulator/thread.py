"""Running a :class:`~exporter.simulator.server.Simulator` for synchronous code."""

from __future__ import annotations

import asyncio
import threading

from exporter.simulator.server import Simulator


class SimulatorThread:
    """Runs a :class:`Simulator` on its own event loop in a daemon thread, for synchronous code
    (sync tests with the sync ``openai`` client)::

        with SimulatorThread(Simulator(accounts)) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key=...)
    """

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("simulator thread not started")
        return self._base_url

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("simulator thread already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._base_url = loop.run_until_complete(self.simulator.start(self.host, self.port))
            except BaseException as exc:  # handed to the starting thread, re-raised there
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.simulator.stop())
                loop.close()

        self._thread = threading.Thread(target=run, name="deepseek-simulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self.base_url

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = self._base_url = None

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""``--proxy.workers N``: the proxy listener served by N processes sharing one port.

One event loop uses one core; a proxy in front of a whole DeepSeek account needs several. The
main process keeps what must exist once (the metrics listener, the balance poller and its
store, the status page, reloads) and starts N worker processes that run only the proxy
listener, each with its own socket on the same port (``SO_REUSEPORT``: the kernel spreads new
connections over them).

- **Metrics.** Workers count in prometheus_client's multiprocess mode (memory-mapped files in a
  directory made fresh at start and removed at exit); the main process's ``/metrics`` reads
  them through a ``MultiProcessCollector``: one exposition, summed over workers, with the help
  texts of :class:`~exporter.proxy.metrics.ProxyMetrics` (the collector would say
  "Multiprocess metric"). ``deepseek_requests_in_flight`` sums live workers only; counters of a
  worker that died stay counted, so they never go backwards.
- **Reload and shutdown.** SIGHUP and ``POST /-/reload`` reach the main process, which sends
  the new configuration to every worker; SIGTERM there stops every worker gracefully (each
  stops accepting and lets its requests finish, up to ``web.shutdown_timeout``).
- **Crashes.** A worker that exits unasked is logged and restarted (after a pause that grows if
  it keeps dying); a worker whose main process is gone shuts down.
- **Currency.** Workers price requests in the currency the balance poller (main process)
  reports, sent to them when it changes.

Workers are ``multiprocessing`` processes started with ``spawn`` (a fresh interpreter: no
forked event loop or locks); the multiprocess directory is in their environment before they
import prometheus_client, never in the main process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from exporter import eventloop
from exporter.config import Config
from exporter.proxy.pricing import PriceTable

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY_TIMEOUT = 60.0
CURRENCY_INTERVAL = 2.0
RESTART_PAUSE_MAX = 30.0
# A worker that lived shorter than this before dying counts as crash-looping.
STABLE_AFTER = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to start; pickled to the new process."""

    index: int
    config: Config
    prices: PriceTable
    host: str | None
    port: int
    currencies: dict[str, str | None]
    log_level: str
    log_format: str


# --------------------------------------------------------------------------------------------
# the main process's side


def make_metrics_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="deepseek-exporter-metrics-"))


class WorkerMetrics:
    """The workers' proxy metrics, summed, with their real help texts: a custom collector for
    the main process's registry."""

    def __init__(self, path: Path) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from exporter.proxy.metrics import ProxyMetrics

        self.path = path
        self._collector = MultiProcessCollector(None, str(path))
        reference = CollectorRegistry(auto_describe=False)
        ProxyMetrics(reference)
        self._help = {family.name: family.documentation for family in reference.collect()}

    def collect(self) -> Iterator[Any]:
        for family in self._collector.collect():
            family.documentation = self._help.get(family.name, family.documentation)
            yield family


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.conn: Connection | None = None
        self.started = 0.0
        self.failures = 0  # deaths in a row, each soon after start
        self.ready: asyncio.Future[None] | None = None


def _log_settings() -> tuple[str, str]:
    from exporter.logs import JsonFormatter

    root = logging.getLogger()
    level = {logging.WARNING: "warn"}.get(root.level, logging.getLevelName(root.level).lower())
    json = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return level, "json" if json else "logfmt"


class ProxyWorkers:
    """Starts, feeds, watches and stops the worker processes."""

    def __init__(
        self,
        count: int,
        config: Config,
        prices: PriceTable,
        metrics_dir: Path,
        currencies: Callable[[], dict[str, str | None]],
        on_web_config: Callable[[str, bool], None],
    ) -> None:
        self.count = count
        self.config = config
        self.prices = prices
        self.metrics_dir = metrics_dir
        self.currencies = currencies
        self.on_web_config = on_web_config
        self.workers = [_Worker(i) for i in range(count)]
        self.host: str | None = None
        self.port = 0
        self.stopping = False
        self._context = multiprocessing.get_context("spawn")
        self._reservation: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sent_currencies: dict[str, str | None] = {}

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process is not None]

    async def start(self, host: str | None, port: int) -> int:
        """Reserve the port, start every worker and wait until each listens; the port. Raises
        OSError when the address cannot be bound, RuntimeError when a worker fails to start."""
        loop = asyncio.get_running_loop()
        # Bound, never listening: the port is ours (port 0 resolved) and the kernel hands no
        # connection to this socket, only to the workers' listening ones.
        self._reservation = await loop.create_server(
            asyncio.Protocol, host, port, reuse_port=True, start_serving=False
        )
        self.host, self.port = host, self._reservation.sockets[0].getsockname()[1]
        # Inherited by the spawned interpreters, which import prometheus_client after it is set;
        # this process imported it long before, so its own metrics stay in memory.
        os.environ[MULTIPROC_ENV] = str(self.metrics_dir)
        self._sent_currencies = self.currencies()
        for worker in self.workers:
            self._spawn(worker)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                for worker in self.workers:
                    assert worker.ready is not None
                    await worker.ready
        except BaseException:
            await self.stop(0)
            raise
        for worker in self.workers:
            worker.ready = None
        self._tasks = [
            loop.create_task(self._watch(), name="proxy-workers"),
            loop.create_task(self._push_currencies(), name="proxy-worker-currencies"),
        ]
        return self.port

    def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        level, fmt = _log_settings()
        spec = WorkerSpec(
            worker.index,
            self.config,
            self.prices,
            self.host,
            self.port,
            self._sent_currencies,
            level,
            fmt,
        )
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, spec), name=f"proxy-worker-{worker.index}"
        )
        process.start()
        child.close()
        worker.process, worker.conn, worker.started = process, parent, time.monotonic()
        worker.ready = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_message, worker)

    def _on_message(self, worker: _Worker) -> None:
        conn = worker.conn
        assert conn is not None
        try:
            kind, *rest = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_exception(
                    RuntimeError(f"proxy worker {worker.index} exited while starting")
                )
            return
        if kind == "ready":
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)
        elif kind == "error" and worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(OSError(*rest))
        elif kind == "web_config":
            self.on_web_config(*rest)

    def _send(self, message: tuple[Any, ...]) -> None:
        for worker in self.workers:
            if worker.conn is not None and worker.process is not None and worker.process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send(message)

    def reload(self, config: Config, prices: PriceTable) -> None:
        self.config, self.prices = config, prices
        self._send(("reload", config, prices))

    async def _push_currencies(self) -> None:
        while True:
            await asyncio.sleep(CURRENCY_INTERVAL)
            current = self.currencies()
            if current != self._sent_currencies:
                self._sent_currencies = current
                self._send(("currencies", current))

    async def _watch(self) -> None:
        """Restart workers that exit unasked."""
        while True:
            await asyncio.sleep(0.2)
            for worker in self.workers:
                process = worker.process
                if process is None or process.is_alive() or self.stopping:
                    continue
                self._reap(worker)
                lived = time.monotonic() - worker.started
                worker.failures = worker.failures + 1 if lived < STABLE_AFTER else 0
                pause = (
                    min(2.0 ** (worker.failures - 1), RESTART_PAUSE_MAX) if worker.failures else 0
                )
                log.warning(
                    "proxy worker %d (pid %d) exited with code %s after %.0f s; restarting%s",
                    worker.index,
                    process.pid,
                    process.exitcode,
                    lived,
                    f" in {pause:.0f} s" if pause else "",
                )
                if pause:
                    await asyncio.sleep(pause)
                if not self.stopping:
                    self._spawn(worker)

    def _reap(self, worker: _Worker) -> None:
        from prometheus_client import multiprocess

        process, conn = worker.process, worker.conn
        if conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        if process is not None:
            process.join(0)
            # Its in-flight gauge is gone with it (counters stay summed).
            multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))
        worker.process, worker.conn = None, None

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker; each lets its requests finish for up to ``timeout`` s."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + timeout + 5
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            while process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.is_alive():
                log.warning("proxy worker %d did not stop in time: killed", worker.index)
                process.kill()
                await asyncio.to_thread(process.join, 5)
            self._reap(worker)
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if os.environ.get(MULTIPROC_ENV) == str(self.metrics_dir):
            del os.environ[MULTIPROC_ENV]
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# a worker process


class _Currencies:
    """The balance side's currencies, as the main process last sent them."""

    def __init__(self, currencies: dict[str, str | None]) -> None:
        self.currencies = currencies

    def charging_currency(self, account: str) -> str | None:
        return self.currencies.get(account)


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """The entry point of a worker process."""
    from exporter.logs import setup_logging

    setup_logging(spec.log_level, spec.log_format)
    # The main process handles these for the whole group (a terminal's Ctrl-C reaches all).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(_serve_worker(conn, spec))


async def _serve_worker(conn: Connection, spec: WorkerSpec) -> None:
    from prometheus_client import CollectorRegistry

    from exporter.proxy.metrics import ProxyMetrics
    from exporter.proxy.server import Proxy

    loop = asyncio.get_running_loop()
    currencies = _Currencies(spec.currencies)
    metrics = ProxyMetrics(CollectorRegistry(auto_describe=False))
    proxy = Proxy(spec.config, metrics, spec.prices, currencies)
    metrics.init_accounts(spec.config.accounts, spec.prices.labels)

    def web_config_loaded(listener: str, ok: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("web_config", listener, ok))

    live = None
    file = spec.config.proxy.web_config_file
    if file is not None:
        from exporter.web.listener import LiveWebConfig

        live = LiveWebConfig(file, listener="proxy", for_proxy=True, on_load=web_config_loaded)
    listener = proxy.listener(
        live.proxy_gate() if live is not None else None,
        live.wrap_tls if live is not None and live.tls else None,
    )
    try:
        await listener.start(spec.host, spec.port, reuse_port=True)
    except OSError as err:
        conn.send(("error", err.errno, err.strerror))
        return
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_message() -> None:
        try:
            kind, *rest = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            loop.remove_reader(conn.fileno())
            stop.set()
            return
        if kind == "reload":
            config, prices = rest
            if live is not None and config.proxy.web_config_file is not None:
                live.reload(config.proxy.web_config_file)
            proxy.reconfigure(config, prices)
            metrics.init_accounts(config.accounts, prices.labels)
        elif kind == "currencies":
            currencies.currencies = rest[0]
            proxy.prime_costs()

    loop.add_reader(conn.fileno(), on_message)
    gc.collect()
    gc.freeze()
    conn.send(("ready",))
    await stop.wait()
    await listener.shutdown(proxy.config.web.shutdown_timeout)
    await proxy.aclose()
    if live is not None:
        live.close()

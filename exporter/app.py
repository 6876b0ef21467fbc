"""The app factory: one Exporter object owns the registry, the poller, the proxy and the listeners.

No module-level state: tests build as many exporters as they like, each with its own registry,
clock and configuration, and drive them directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Gauge

from exporter import __version__, eventloop
from exporter.balance.collector import BalanceCollector
from exporter.balance.poller import BalancePoller, retention_for
from exporter.balance.store import HistoryStore
from exporter.clock import Clock
from exporter.config import Config, ConfigError, load_config, split_listen_address
from exporter.logs import RedactMalformedRequests
from exporter.proxy.http1 import ProxyListener
from exporter.proxy.metrics import ProxyMetrics
from exporter.proxy.pricing import PriceTable, PricingError
from exporter.proxy.recent import RecentTraffic, read_totals
from exporter.proxy.server import KEEPALIVE_TIMEOUT, Proxy
from exporter.web.pages import make_web_app
from exporter.web.status import (
    AccountStatus,
    ReloadResult,
    TrafficCounts,
    TrafficWindow,
)
from exporter.workers import ProxyWorkers, WorkerMetrics, make_metrics_dir

if TYPE_CHECKING:
    from exporter.web.listener import LiveWebConfig

log = logging.getLogger(__name__)


# Both listeners (and any aiohttp server in the process) log through this logger.
logging.getLogger("aiohttp.server").addFilter(RedactMalformedRequests())


def load_all(
    path: str | Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
) -> tuple[Config, PriceTable]:
    """Load the config and check the files it names (prices, web configs); raise ConfigError."""
    config = load_config(path, environ, overrides)
    try:
        prices = PriceTable.load(config.pricing.file)
    except PricingError as err:
        raise ConfigError(str(err)) from None
    for file in (config.web.config_file, config.proxy.web_config_file):
        if file is not None:
            # Imported here: TLS and bcrypt are not needed by exporters that do not use them.
            from exporter.web.webconfig import WebConfigError, load_web_config

            try:
                load_web_config(file)
            except WebConfigError as err:
                raise ConfigError(str(err)) from None
    return config, prices


# Reads the configuration again for a reload; raises ConfigError.
Loader = Callable[[], tuple[Config, PriceTable]]


# Settings fixed when the listeners start: a reload checks them but cannot apply them.
_RESTART_SETTINGS = (
    ("web", "listen_address"),
    ("web", "shutdown_timeout"),
    ("proxy", "enabled"),
    ("proxy", "listen_address"),
    ("proxy", "workers"),
)


def restart_needed(running: Config, loaded: Config) -> tuple[str, ...]:
    """One note per setting that changed but only takes effect on restart."""
    notes = []
    for section, name in _RESTART_SETTINGS:
        old = getattr(getattr(running, section), name)
        new = getattr(getattr(loaded, section), name)
        if old != new:
            shown = [f"{v:g}s" if isinstance(v, float) else repr(v) for v in (old, new)]
            notes.append(
                f"{section}.{name} changed from {shown[0]} to {shown[1]}: takes effect on restart"
            )
    return tuple(notes)


class ListenError(Exception):
    """A listener that cannot bind, phrased as one line naming the setting and the address."""


def _bind_error(flag: str, key: str, address: str, err: OSError) -> ListenError:
    # asyncio wraps the reason in "error while attempting to bind on address (...)".
    # A name that does not resolve is a socket.gaierror, whose errno is negative.
    reason = os.strerror(err.errno) if err.errno and err.errno > 0 else err.strerror or str(err)
    return ListenError(f"cannot listen on {address} ({flag}, {key}): {reason.lower()}")


def listener_description(scheme: str, host: str | None, port: int) -> tuple[str, str]:
    """(what the log says, a URL to reach it): ``:9402`` listens on every address, so the log
    says so next to a loopback URL; IPv6 literals go in brackets."""
    everywhere = host in (None, "", "0.0.0.0", "::")
    shown = "127.0.0.1" if everywhere else host
    assert shown is not None
    url = f"{scheme}://{f'[{shown}]' if ':' in shown else shown}:{port}"
    return (f"{url} (every address, port {port})" if everywhere else url), url


class Exporter:
    """Everything one exporter process runs. Build with :func:`create_app`, then ``start()``."""

    def __init__(
        self,
        config: Config,
        *,
        loader: Loader | None = None,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.time,
        prices: PriceTable | None = None,
        storage: Path | None = None,
    ) -> None:
        self.config = config
        self.loader = loader
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.prices = prices or PriceTable.load(config.pricing.file)

        Gauge(
            "deepseek_exporter_build_info",
            "Build information; the value is always 1.",
            ["version"],
            registry=self.registry,
        ).labels(__version__).set(1)
        self._reload_ok = Gauge(
            "deepseek_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded.",
            registry=self.registry,
        )
        self._reload_time = Gauge(
            "deepseek_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=self.registry,
        )
        self._reload_ok.set(1)
        self._reload_time.set(clock())
        self._web_config_ok = Gauge(
            "deepseek_exporter_web_config_last_reload_successful",
            "1 if the listener's web config file (and the certificate files it names) last "
            "loaded; 0 while a changed file that does not load is being refused.",
            ["listener"],
            registry=self.registry,
        )
        self._web_config_time = Gauge(
            "deepseek_exporter_web_config_last_reload_success_timestamp_seconds",
            "Unix time the listener's web config and certificate files last loaded.",
            ["listener"],
            registry=self.registry,
        )
        self._external_url = Gauge(
            "deepseek_exporter_external_url_info",
            "The URL people reach this exporter at (--web.external-url; empty: not set). The "
            "alerts' runbook links start with it; the value is always 1.",
            ["url"],
            registry=self.registry,
        )
        self._external_url.labels(config.web.external_url or "").set(1)

        # Only a process that polls owns the history store: a proxy-only replica needs none.
        # HistoryStore.open raises StorageLocked when another process holds the directory.
        self.store: HistoryStore | None = None
        if storage is not None and config.balance.poll_interval:
            self.store = HistoryStore.open(storage, retention_for(config.balance), clock)
        self.poller = BalancePoller(
            config.deepseek, config.balance, config.accounts, clock=clock, store=self.store
        )
        self.registry.register(BalanceCollector(self.poller, clock))
        # With --proxy.workers N > 1, worker processes serve the proxy and count into files
        # this process sums at scrape time (exporter/workers.py); else this process does both.
        self.worker_count = config.proxy.workers if config.proxy.enabled else 1
        self.workers: ProxyWorkers | None = None
        totals: ProxyMetrics | WorkerMetrics
        if self.worker_count > 1:
            self.metrics_dir: Path | None = make_metrics_dir()
            totals = WorkerMetrics(self.metrics_dir)
            self.registry.register(totals)
            self.metrics = ProxyMetrics(CollectorRegistry(auto_describe=False))  # not served
        else:
            self.metrics_dir = None
            self.metrics = totals = ProxyMetrics(self.registry)
        self.proxy = Proxy(config, self.metrics, self.prices, self.poller, clock=clock)
        self.metrics.init_accounts(config.accounts, self.prices.labels)
        self.recent = RecentTraffic(functools.partial(read_totals, totals), clock)

        self._runners: list[web.BaseRunner] = []
        self._proxy_listener: ProxyListener | None = None
        self._web_configs: dict[str, LiveWebConfig] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._recent_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self.web_url: str | None = None
        self.proxy_url: str | None = None
        self.listening: dict[str, str] = {}  # URL -> what the log says (every address, ...)
        # Account -> key, shown on the status page: only the demo's fixed, fake keys, never real.
        self.demo_keys: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        return self.poller.ready

    def now(self) -> float:
        return self.clock()

    def account_status(self) -> list[AccountStatus]:
        """The landing page's rows: one per account and currency, from the last poll."""
        now = self.clock()
        window = self.config.balance.forecast_window
        rows: list[AccountStatus] = []
        for name, state in self.poller.states.items():
            if not self.poller.enabled:
                poll_state = "off"
            else:
                poll_state = "up" if state.up else ("down" if state.polled else "pending")
            common = {
                "name": name,
                "poll_state": poll_state,
                "last_error": state.last_error,
                "last_success": state.last_success,
                "forecast_window": window,
            }
            fresh = state.is_fresh(now, self.config.balance.max_staleness)
            reply = state.last_reply if fresh else None
            if reply is None or not reply.balances:
                rows.append(AccountStatus(**common))
                continue
            for balance in reply.balances:
                tracker = state.trackers[balance.currency]
                history = state.history.get(balance.currency)
                rows.append(
                    AccountStatus(
                        **common,
                        currency=balance.currency,
                        balance=balance.total,
                        available=reply.is_available,
                        burn_per_second=tracker.burn_rate(window, now),
                        exhaustion_seconds=tracker.exhaustion_seconds(window, now),
                        threshold=state.account.low_balance_threshold,
                        empty_since=history.empty_since if history else None,
                    )
                )
        return rows

    def balance_history(
        self, account: str, currency: str, since: float
    ) -> list[tuple[float, Decimal]]:
        state = self.poller.states.get(account)
        history = state.history.get(currency) if state is not None else None
        return history.since(since) if history is not None else []

    def traffic(self, since: float) -> TrafficWindow:
        window = self.recent.since(since)
        return TrafficWindow(
            start=window.start,
            by_account={
                account: TrafficCounts(**dataclasses.asdict(totals))
                for account, totals in window.by_account.items()
            },
        )

    def proxy_url_for(self, host: str | None) -> str | None:
        """On every address, the proxy is where the page was reached, at the proxy's port."""
        if self.proxy_url is None:
            return None
        listen_host, _ = split_listen_address(self.config.proxy.listen_address)
        if host is None or listen_host not in (None, "0.0.0.0", "::"):
            return self.proxy_url
        scheme, rest = self.proxy_url.split("://", 1)
        port = rest.rsplit(":", 1)[1]
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}"

    async def reload(self) -> ReloadResult:
        """Reload the config file; on error keep the running config and say why. What a reload
        cannot apply (listeners, the shutdown timeout) is named in the result's notes."""
        async with self._reload_lock:
            if self.loader is None:
                note = "Nothing to reload: the demo runs without a configuration file."
                log.info("config reload: %s", note)
                return ReloadResult(notes=(note,), reloaded=False)
            try:
                config, prices = self.loader()
            except ConfigError as err:
                self._reload_ok.set(0)
                log.error("config reload failed, keeping the running config: %s", err)
                return ReloadResult(error=str(err))
            notes = restart_needed(self.config, config)
            if config.web.external_url != self.config.web.external_url:
                self._external_url.clear()
                self._external_url.labels(config.web.external_url or "").set(1)
            self.config, self.prices = config, prices
            self._reload_web_configs(config)
            self.poller.reconfigure(config.deepseek, config.balance, config.accounts)
            self.proxy.reconfigure(config, prices)
            self.metrics.init_accounts(config.accounts, prices.labels)
            if self.workers is not None:
                self.workers.reload(config, prices)
            self._reload_ok.set(1)
            self._reload_time.set(self.clock())
            log.info("config reloaded: %d account(s)", len(config.accounts))
            for note in notes:
                log.warning("config reload: %s", note)
            # Newly added accounts are polled right away instead of one interval later.
            if self.poller.enabled:
                await self.poller.poll_once()
                if self._poll_task is not None and self._poll_task.done():
                    self._poll_task = asyncio.create_task(
                        self.poller.run(self.proxy.prime_costs), name="balance-poller"
                    )
            return ReloadResult(notes=notes)

    def _web_config_loaded(self, listener: str, ok: bool) -> None:
        self._web_config_ok.labels(listener).set(1 if ok else 0)
        if ok:
            self._web_config_time.labels(listener).set(self.clock())

    def _reload_web_configs(self, config: Config) -> None:
        """Each listener's web config again (certificates rotate without a restart)."""
        paths = {"web": config.web.config_file, "proxy": config.proxy.web_config_file}
        running = {"web": self.web_url, "proxy": self.proxy_url}
        for listener, path in paths.items():
            live = self._web_configs.get(listener)
            if live is not None and path is not None:
                live.reload(path)
            elif running[listener] is not None and (live is None) != (path is None):
                change = "added" if live is None else "removed"
                log.warning("%s listener: web config %s: takes effect on restart", listener, change)

    async def _serve(
        self,
        build: Callable[[list[Middleware]], web.Application],
        address: str,
        web_config: Path | None,
        listener: str,
    ) -> str:
        live = None
        middlewares: list[Middleware] = []
        if web_config is not None:
            live = self._live_web_config(web_config, listener)
            middlewares.append(live.middleware())
        runner = web.AppRunner(
            build(middlewares),
            access_log=None,
            shutdown_timeout=self.config.web.shutdown_timeout,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        self._runners.append(runner)
        host, port = split_listen_address(address)
        if live is not None:
            site = live.site(runner, host, port, reuse_address=True)
        else:
            site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        scheme = "https" if live is not None and live.tls else "http"
        where, url = listener_description(scheme, host, runner.addresses[0][1])
        self.listening[url] = where
        return url

    def _live_web_config(self, web_config: Path, listener: str) -> LiveWebConfig:
        # Imported here: TLS and bcrypt are not needed by exporters that do not use them.
        from exporter.web.listener import LiveWebConfig
        from exporter.web.webconfig import WebConfigError

        try:
            live = LiveWebConfig(
                web_config,
                listener=listener,
                for_proxy=listener == "proxy",
                on_load=self._web_config_loaded,
            )
        except WebConfigError as err:
            raise ConfigError(str(err)) from None
        self._web_configs[listener] = live
        return live

    async def _serve_proxy(self, address: str, *, reuse_port: bool = False) -> str:
        """The proxy listener, on its own HTTP server (exporter.proxy.http1)."""
        web_config = self.config.proxy.web_config_file
        live = self._live_web_config(web_config, "proxy") if web_config is not None else None
        listener = self.proxy.listener(
            live.proxy_gate() if live is not None else None,
            live.wrap_tls if live is not None and live.tls else None,
        )
        host, port = split_listen_address(address)
        port = await listener.start(host, port, reuse_port=reuse_port)
        self._proxy_listener = listener
        scheme = "https" if live is not None and live.tls else "http"
        where, url = listener_description(scheme, host, port)
        self.listening[url] = where
        return url

    async def _start_workers(self, address: str) -> str:
        assert self.metrics_dir is not None
        if self.config.proxy.web_config_file is not None:
            # Checked here too, so that a bad file refuses to start before any worker runs.
            self._live_web_config(self.config.proxy.web_config_file, "proxy")
        self.workers = ProxyWorkers(
            self.worker_count,
            self.config,
            self.prices,
            self.metrics_dir,
            lambda: {a.name: self.proxy.account_currency(a.name) for a in self.config.accounts},
            self._web_config_loaded,
        )
        host, port = split_listen_address(address)
        port = await self.workers.start(host, port)
        live = self._web_configs.get("proxy")
        scheme = "https" if live is not None and live.tls else "http"
        where, url = listener_description(scheme, host, port)
        self.listening[url] = where
        return url

    async def start(self) -> None:
        """Bind the listeners and start polling; a listener that cannot bind raises ListenError,
        a web config that does not load raises ConfigError."""
        address = self.config.web.listen_address
        try:
            self.web_url = await self._serve(
                lambda middlewares: make_web_app(self, middlewares),
                address,
                self.config.web.config_file,
                "web",
            )
        except OSError as err:
            raise _bind_error("--web.listen-address", "web.listen_address", address, err) from None
        log.info("metrics listener on %s", self.listening[self.web_url])
        if self.config.proxy.enabled:
            await self.proxy.open()
            address = self.config.proxy.listen_address
            try:
                if self.worker_count > 1:
                    self.proxy_url = await self._start_workers(address)
                else:
                    self.proxy_url = await self._serve_proxy(address)
            except OSError as err:
                flag, key = "--proxy.listen-address", "proxy.listen_address"
                raise _bind_error(flag, key, address, err) from None
            log.info(
                "proxy listener on %s, forwarding to %s%s, event loop %s",
                self.listening[self.proxy_url],
                self.config.deepseek.base_url,
                f", {self.worker_count} worker processes" if self.workers is not None else "",
                eventloop.loop_name(),
            )
        self._poll_task = asyncio.create_task(
            self.poller.run(self.proxy.prime_costs), name="balance-poller"
        )
        self._recent_task = asyncio.create_task(self.recent.run(), name="traffic-snapshots")
        # Start-up leaves ~55,000 long-lived objects (imports, price table) that every full
        # collection would walk again: 25-35 ms pauses that set the proxy's p99 under load
        # (docs/benchmarks.md). Freezing them takes them out of later collections.
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the shutdown timeout), close."""
        for task in (self._poll_task, self._recent_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        timeout = self.config.web.shutdown_timeout
        listener, self._proxy_listener = self._proxy_listener, None
        workers, self.workers = self.workers, None
        await asyncio.gather(
            *(runner.cleanup() for runner in self._runners),
            *([listener.shutdown(timeout)] if listener is not None else []),
            *([workers.stop(timeout)] if workers is not None else []),
        )
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self._runners.clear()
        for live in self._web_configs.values():
            live.close()
        await self.proxy.aclose()
        await self.poller.aclose()
        if self.store is not None:
            self.store.close()
            self.store = None


def create_app(config: Config, **options: Any) -> Exporter:
    """Build an exporter; options are those of :class:`Exporter` (registry, clock, prices...)."""
    return Exporter(config, **options)


async def serve(exporter: Exporter) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration."""
    # Before the listeners open: a SIGTERM sent as soon as /-/healthy answers must stop the
    # exporter gracefully, not kill it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await exporter.start()
    except ListenError as err:
        log.error("%s", err)
        await exporter.stop()
        return 1
    except ConfigError as err:  # a web config that does not load (also under --demo)
        log.error("config error: %s", err)
        await exporter.stop()
        return 1
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(exporter.reload()))
    await stop.wait()
    log.info("shutting down, letting in-flight requests finish")
    await exporter.stop()
    return 0

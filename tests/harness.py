"""Builders shared by the end-to-end tests: a simulator, an exporter against it, a scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter, create_app
from exporter.config import (
    AccountConfig,
    BalanceConfig,
    Config,
    DeepSeekConfig,
    ProxyConfig,
    Secret,
    WebConfig,
)
from exporter.simulator import SimAccount, Simulator, SimulatorThread
from tests.conftest import BackgroundLoop, FakeClock

PROD_KEY = "sk-test-prod-0123456789"
USD_KEY = "sk-test-usd-9876543210"


def default_sim_accounts() -> list[SimAccount]:
    return [
        SimAccount("prod", PROD_KEY, {"CNY": (Decimal("10.00"), Decimal("100.00"))}),
        SimAccount("usd", USD_KEY, {"USD": (Decimal("0.00"), Decimal("20.00"))}),
    ]


@contextmanager
def running_simulator(**options: Any) -> Iterator[Simulator]:
    simulator = Simulator(default_sim_accounts(), **options)
    with SimulatorThread(simulator):
        yield simulator


def exporter_config(base_url: str, **sections: Any) -> Config:
    """A config for tests: loopback listeners on free ports, one poll at start (then by hand)."""
    config = Config(
        deepseek=DeepSeekConfig(base_url=base_url, timeout=2.0),
        # A long interval: after the first poll, tests poll by hand with an injected clock.
        balance=BalanceConfig(
            poll_interval=3600.0, max_staleness=300.0, forecast_window=6 * 3600.0
        ),
        accounts=(
            AccountConfig("prod", Secret(PROD_KEY), low_balance_threshold=Decimal("5")),
            AccountConfig("usd", Secret(USD_KEY)),
        ),
        web=WebConfig(listen_address="127.0.0.1:0", shutdown_timeout=2.0),
        proxy=ProxyConfig(listen_address="127.0.0.1:0"),
    )
    return replace(config, **sections)


@dataclass
class RunningExporter:
    exporter: Exporter
    loop: BackgroundLoop
    clock: FakeClock

    @property
    def web_url(self) -> str:
        assert self.exporter.web_url is not None
        return self.exporter.web_url

    @property
    def proxy_url(self) -> str:
        assert self.exporter.proxy_url is not None
        return self.exporter.proxy_url

    def poll(self) -> None:
        self.loop.run(self.exporter.poller.poll_once())

    def scrape_text(self, accept: str = "text/plain") -> str:
        self.settle()
        response = httpx.get(f"{self.web_url}/metrics", headers={"Accept": accept})
        response.raise_for_status()
        return response.text

    def settle(self) -> None:
        """Wait until no request is in flight: a client may see the last byte of a response a
        moment before the proxy has metered it."""
        registry = self.exporter.registry
        accounts = [a.name for a in self.exporter.config.accounts] + ["unknown"]
        wait_until(
            lambda: (
                not any(
                    registry.get_sample_value("deepseek_requests_in_flight", {"account": a})
                    for a in accounts
                )
            )
        )

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_samples(self.scrape_text())

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def registry_value(self, name: str, **labels: str) -> float | None:
        self.settle()
        return self.exporter.registry.get_sample_value(name, labels)


def parse_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@contextmanager
def running_exporter(
    config: Config, loop: BackgroundLoop, clock: FakeClock | None = None, **options: Any
) -> Iterator[RunningExporter]:
    clock = clock or FakeClock()
    exporter = create_app(
        config, registry=CollectorRegistry(auto_describe=False), clock=clock, **options
    )
    loop.run(exporter.start())
    running = RunningExporter(exporter, loop, clock)
    try:
        # The poller starts with one poll of every account; wait for it so tests start settled.
        if config.balance.poll_interval and config.accounts:
            wait_until(lambda: exporter.ready)
        yield running
    finally:
        loop.run(exporter.stop())


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)

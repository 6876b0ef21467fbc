"""``--demo``: the whole product with no key and no network.

A simulated DeepSeek API runs in the same process on loopback; a synthetic workload sends chat
completions through the metering proxy, so every metric moves: one account spends slowly, the
other runs dry within a few minutes, answers 402 until it is topped up automatically a few minutes
later, and runs dry again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal

import aiohttp

from exporter.app import create_app, serve, split_listen_address
from exporter.config import (
    FLAG_OVERRIDES,
    AccountConfig,
    BalanceConfig,
    Config,
    DeepSeekConfig,
    Secret,
)
from exporter.simulator import SimAccount, Simulator

log = logging.getLogger(__name__)

STEADY, DRAINING = "demo-steady", "demo-draining"
DRAINING_START = {"USD": (Decimal("0.50"), Decimal("1.00"))}
TOP_UP_AFTER = 300.0  # seconds the draining account stays dry before the demo tops it up
TOP_UP_AMOUNT = Decimal("1.50")


def demo_accounts() -> list[SimAccount]:
    # Keys are made up per run: nothing here is a real credential.
    suffix = f"{random.getrandbits(32):08x}"
    return [
        SimAccount(
            STEADY, f"sk-demo-steady-{suffix}", {"CNY": (Decimal("10.00"), Decimal("100.00"))}
        ),
        SimAccount(DRAINING, f"sk-demo-draining-{suffix}", dict(DRAINING_START)),
    ]


def demo_config(
    base_url: str, accounts: list[SimAccount], overrides: Mapping[str, str | None]
) -> Config:
    config = Config(
        deepseek=DeepSeekConfig(base_url=base_url, timeout=5.0),
        balance=BalanceConfig(poll_interval=10.0, max_staleness=60.0, forecast_window=6 * 3600.0),
        accounts=(
            AccountConfig(STEADY, Secret(accounts[0].api_key), low_balance_threshold=Decimal("20")),
            AccountConfig(
                DRAINING, Secret(accounts[1].api_key), low_balance_threshold=Decimal("0.50")
            ),
        ),
    )
    for dest, value in overrides.items():
        if value is not None and dest != "deepseek_base_url":
            config = FLAG_OVERRIDES[dest](config, value)
    return replace(config, deepseek=replace(config.deepseek, base_url=base_url))


async def _client_loop(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    model: str,
    prompt_chars: int,
    pause: float,
    cacheable: bool,
) -> None:
    """One synthetic bot; a fixed system prompt gives cache hits, a numbered one misses."""
    system = "You are a helpful assistant for a demo. " * (prompt_chars // 40)
    n = 0
    while True:
        n += 1
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": system if cacheable else f"Session {n}. {system}"},
                {
                    "role": "user",
                    "content": f"Question number {n}: {'why ' * random.randint(5, 50)}",
                },
            ],
            "stream": n % 3 == 0,
        }
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
        try:
            async with session.post(
                url, json=body, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                await r.read()
        except aiohttp.ClientError as err:
            log.debug("demo request failed: %s", type(err).__name__)
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))


async def _top_up_when_dry(simulator: Simulator) -> None:
    dry_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(5)
        if simulator.account(DRAINING).is_available:
            dry_since = None
            continue
        dry_since = dry_since or loop.time()
        if loop.time() - dry_since >= TOP_UP_AFTER:
            simulator.top_up(DRAINING, "USD", TOP_UP_AMOUNT)
            log.info("demo: topped up %s by %s USD", DRAINING, TOP_UP_AMOUNT)
            dry_since = None


async def run_demo(simulator_address: str, overrides: Mapping[str, str | None]) -> int:
    accounts = demo_accounts()
    simulator = Simulator(accounts, completion_tokens=200, chunk_interval=0.02)
    host, port = split_listen_address(simulator_address)
    base_url = await simulator.start(host or "127.0.0.1", port)
    log.info("demo: simulated DeepSeek API on %s (test-only control under /_simulator/)", base_url)
    exporter = create_app(demo_config(base_url, accounts, overrides))

    async def workload() -> None:
        while exporter.proxy_url is None:
            await asyncio.sleep(0.05)
        url = f"{exporter.proxy_url}/chat/completions"
        log.info("demo: metrics on %s/metrics, proxy on %s", exporter.web_url, exporter.proxy_url)
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(
                _client_loop(session, url, accounts[0].api_key, "deepseek-flash", 2_000, 1.0, True),
                _client_loop(
                    session, url, accounts[1].api_key, "deepseek-v4-pro", 40_000, 0.5, False
                ),
                _top_up_when_dry(simulator),
            )

    background = asyncio.create_task(workload())
    try:
        return await serve(exporter)
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
        await simulator.stop()

"""``--demo``: the whole product with no key and no network.

A simulated DeepSeek API runs in the same process on loopback; a synthetic workload
(:mod:`exporter.simulator.workload`) sends chat completions through the metering proxy, so every
metric moves: one account spends slowly, the other runs dry within a few minutes, answers 402
until it is topped up automatically a few minutes later, and runs dry again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from exporter.app import create_app, serve
from exporter.config import (
    FLAG_OVERRIDES,
    AccountConfig,
    BalanceConfig,
    Config,
    DeepSeekConfig,
    Secret,
    split_listen_address,
)
from exporter.simulator import SimAccount, Simulator
from exporter.simulator.workload import (
    DEMO_KEYS,
    DRAINING,
    STEADY,
    run_workload,
    workload_accounts,
)
from exporter.web import snippets

log = logging.getLogger(__name__)


def demo_config(
    base_url: str, accounts: list[SimAccount], overrides: Mapping[str, str | None]
) -> Config:
    config = Config(
        deepseek=DeepSeekConfig(base_url=base_url, timeout=5.0),
        balance=BalanceConfig(poll_interval=10.0, max_staleness=60.0, forecast_window=6 * 3600.0),
        accounts=(
            # A currency each, so that a request is costed even before the first poll.
            AccountConfig(
                STEADY,
                Secret(accounts[0].api_key),
                low_balance_threshold=Decimal("20"),
                currency="CNY",
            ),
            AccountConfig(
                DRAINING,
                Secret(accounts[1].api_key),
                low_balance_threshold=Decimal("0.50"),
                currency="USD",
            ),
        ),
    )
    for dest, value in overrides.items():
        if value is not None and dest != "deepseek_base_url":
            config = FLAG_OVERRIDES[dest](config, value)
    return replace(config, deepseek=replace(config.deepseek, base_url=base_url))


async def run_demo(
    simulator_address: str, overrides: Mapping[str, str | None], storage: Path | None = None
) -> int:
    accounts = workload_accounts()
    simulator = Simulator(accounts, completion_tokens=200, chunk_interval=0.02)
    host, port = split_listen_address(simulator_address)
    base_url = await simulator.start(host or "127.0.0.1", port)
    log.info("demo: simulated DeepSeek API on %s (test-only control under /_simulator/)", base_url)
    try:
        exporter = create_app(demo_config(base_url, accounts, overrides), storage=storage)
    except BaseException:
        await simulator.stop()
        raise
    exporter.demo_keys = dict(DEMO_KEYS)

    async def workload() -> None:
        while exporter.proxy_url is None or exporter.web_url is None:
            await asyncio.sleep(0.05)
        print(banner(exporter.web_url, exporter.proxy_url), flush=True)
        await run_workload(simulator, f"{exporter.proxy_url}/chat/completions", accounts)

    background = asyncio.create_task(workload())
    try:
        return await serve(exporter)
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
        await simulator.stop()


def banner(web_url: str, proxy_url: str) -> str:
    """What the demo prints once it listens: where to look, the keys, snippets to paste."""
    steady, draining = DEMO_KEYS[STEADY], DEMO_KEYS[DRAINING]
    indent = "    "
    return "\n".join(
        [
            "",
            "deepseek-exporter demo: a simulated DeepSeek API with two demo accounts, no real key,",
            "no network, nothing charged. Synthetic bots already call it through the proxy.",
            "",
            f"  status page  {web_url}/",
            f"  metrics      {web_url}/metrics",
            f"  proxy        {proxy_url}   (your app's base_url; nothing else changes)",
            f"  demo keys    {steady}    account {STEADY}: spends slowly",
            f"               {draining}  account {DRAINING}: runs dry within minutes, then 402",
            f"  models       {', '.join(snippets.CURRENT_MODELS)} (deepseek-chat is retired: 400)",
            "",
            "Call it yourself (curl):",
            "",
            *(indent + line for line in snippets.curl(proxy_url, steady).splitlines()),
            "",
            "or with the openai Python SDK (pip install openai):",
            "",
            *(indent + line for line in snippets.python(proxy_url, steady).splitlines()),
            "",
            f"Your request shows up on the status page and in /metrics as account={STEADY},",
            f"model={snippets.EXAMPLE_MODEL}, with its tokens and estimated cost.",
            "",
        ]
    )

"""The synthetic workload of ``--demo``: two accounts, their bots, and top-ups when one runs dry.

One account spends slowly; the other runs dry within a few minutes, answers 402 until it is
topped up automatically a few minutes later, and runs dry again. The wiring (the exporter in
front of the simulator) is :mod:`exporter.demo`'s job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from decimal import Decimal

import aiohttp

from exporter.simulator.records import SimAccount
from exporter.simulator.server import Simulator

log = logging.getLogger(__name__)

STEADY, DRAINING = "demo-steady", "demo-draining"
DRAINING_START = {"USD": (Decimal("0.50"), Decimal("1.00"))}
TOP_UP_AFTER = 300.0  # seconds the draining account stays dry before the demo tops it up
TOP_UP_AMOUNT = Decimal("1.50")


# Fixed and plainly fake, so that a person can paste them into their own code: the demo prints
# them and shows them on its status page. They open nothing but the demo's own simulator.
DEMO_KEYS = {STEADY: "sk-demo-steady", DRAINING: "sk-demo-draining"}


def workload_accounts() -> list[SimAccount]:
    """The accounts of the demo workload, ``STEADY`` then ``DRAINING``."""
    return [
        SimAccount(STEADY, DEMO_KEYS[STEADY], {"CNY": (Decimal("10.00"), Decimal("100.00"))}),
        SimAccount(DRAINING, DEMO_KEYS[DRAINING], dict(DRAINING_START)),
    ]


async def run_workload(simulator: Simulator, url: str, accounts: list[SimAccount]) -> None:
    """Run the bots of :func:`workload_accounts` against ``url`` (a chat completions URL) and
    top up the draining account when it has been dry for a while; until cancelled."""
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            _client_loop(session, url, accounts[0].api_key, "deepseek-flash", 2_000, 1.0, True),
            _client_loop(session, url, accounts[1].api_key, "deepseek-v4-pro", 40_000, 0.5, False),
            _top_up_when_dry(simulator),
        )


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

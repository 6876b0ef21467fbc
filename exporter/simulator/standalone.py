"""Running a simulator on its own: ``deepseek-exporter simulate``, with demo accounts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from exporter.simulator.records import SimAccount
from exporter.simulator.server import Simulator


def demo_accounts() -> list[SimAccount]:
    """Accounts for demos: a CNY account shaped like the sheet's example, a USD one, one with
    both currencies, and an empty one that answers 402. Keys are ``"sk-sim-" + name``: fake,
    short, and plainly not real keys."""
    specs: dict[str, dict[str, tuple[str, str]]] = {
        "demo-cny": {"CNY": ("10.00", "100.00")},
        "demo-usd": {"USD": ("0.00", "20.00")},
        "demo-both": {"USD": ("2.00", "3.00"), "CNY": ("0.00", "50.00")},
        "demo-empty": {"CNY": ("0.00", "0.00")},
    }
    return [
        SimAccount(
            name, f"sk-sim-{name}", {cur: (Decimal(g), Decimal(t)) for cur, (g, t) in bal.items()}
        )
        for name, bal in specs.items()
    ]


def run_standalone(
    host: str = "127.0.0.1",
    port: int = 0,
    accounts: Iterable[SimAccount] | None = None,
    **options: Any,
) -> None:
    """Serve a simulator until SIGINT/SIGTERM (``deepseek-exporter simulate``). ``options`` go to
    :class:`Simulator`. Prints the base URL and the account names, never keys."""
    account_list = list(accounts) if accounts is not None else demo_accounts()

    async def serve() -> None:
        simulator = Simulator(account_list, **options)
        url = await simulator.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not on Windows, nor outside the main thread: Ctrl-C still ends asyncio.run there.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        print(f"DeepSeek API simulator listening on {url}", flush=True)
        names = ", ".join(a.name for a in account_list) or "(none)"
        print(f"accounts: {names}", flush=True)
        if accounts is None:
            print('demo api keys are "sk-sim-" followed by the account name', flush=True)
        print(f"test-only control endpoints under {url}/_simulator/", flush=True)
        try:
            await stop.wait()
        finally:
            await simulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def main(listen_address: str = "127.0.0.1:8080") -> int:
    """``deepseek-exporter simulate --listen-address HOST:PORT``: serve the demo accounts.
    ``:PORT`` listens on all interfaces, as Prometheus-style addresses do."""
    host, sep, port_text = listen_address.rpartition(":")
    host = host.strip("[]")  # [::1]:8080
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        print(f"invalid listen address {listen_address!r}: expected HOST:PORT", file=sys.stderr)
        return 2
    try:
        run_standalone(host or "0.0.0.0", int(port_text))
    except OSError as exc:
        print(f"cannot listen on {listen_address}: {exc}", file=sys.stderr)
        return 1
    return 0

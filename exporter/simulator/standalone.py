"""Running a simulator on its own: ``deepseek-exporter simulate``, with demo accounts."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from exporter.config import parse_listen_address
from exporter.simulator.records import SimAccount
from exporter.simulator.server import Simulator

log = logging.getLogger(__name__)


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
    host: str | None = "127.0.0.1",
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


def main(listen_address: str = "127.0.0.1:8080", flag: str = "--listen-address") -> int:
    """``deepseek-exporter simulate --listen-address HOST:PORT``: serve the demo accounts.

    The address is checked like the exporter's own (``HOST:PORT``, ``[IPv6]:PORT``; ``:PORT``
    means every address, as with Prometheus-style flags); each problem is one line naming
    ``flag``. Exit 0 after SIGINT/SIGTERM, 1 when it cannot listen, 2 for a bad address."""
    try:
        host, port = parse_listen_address(listen_address)
    except ValueError as err:
        print(f"deepseek-exporter: {flag}: {err}", file=sys.stderr)
        return 2
    if host is None or not _is_loopback(host):
        log.warning(
            "simulator listening on %s: its /_simulator/ control endpoints are unauthenticated "
            "and reachable from the network",
            listen_address,
        )
    try:
        run_standalone(host, port)
    except OSError as err:
        known = err.errno is not None and err.errno > 0  # not a name that does not resolve
        reason = (os.strerror(err.errno) if known else err.strerror or str(err)).lower()
        print(
            f"deepseek-exporter: cannot listen on {listen_address} ({flag}): {reason}",
            file=sys.stderr,
        )
        return 1
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""``deepseek-exporter balance``: poll once, print a table, exit 0 / 1 / 2 (for cron and humans)."""

from __future__ import annotations

import sys
from typing import TextIO

from exporter.balance.poller import BalancePoller
from exporter.config import Config

EXIT_OK, EXIT_LOW, EXIT_ERROR = 0, 1, 2
COLUMNS = ("ACCOUNT", "CURRENCY", "TOTAL", "GRANTED", "TOPPED_UP", "AVAILABLE", "STATUS")


async def check_balances(config: Config, out: TextIO = sys.stdout) -> int:
    """0 when every account is available and above its threshold, 1 when any is low or
    unavailable, 2 when any poll failed (the worst wins)."""
    if not config.accounts:
        print("no accounts configured (set DEEPSEEK_API_KEY or use --config.file)", file=out)
        return EXIT_ERROR
    poller = BalancePoller(config.deepseek, config.balance, config.accounts, log_failures=False)
    try:
        await poller.poll_once()
    finally:
        await poller.aclose()
    rows: list[tuple[str, ...]] = []
    worst = EXIT_OK
    for name, state in poller.states.items():
        reply = state.last_reply
        if reply is None:
            rows.append((name, "-", "-", "-", "-", "-", f"error: {state.last_error}"))
            worst = EXIT_ERROR
            continue
        threshold = state.account.low_balance_threshold
        if not reply.balances:
            rows.append(
                (name, "-", "-", "-", "-", _yes_no(reply.is_available), "no balance listed")
            )
        for balance in reply.balances:
            low = threshold is not None and balance.total < threshold
            status = "LOW" if low else ("UNAVAILABLE" if not reply.is_available else "ok")
            rows.append(
                (
                    name,
                    balance.currency,
                    str(balance.total),
                    str(balance.granted),
                    str(balance.topped_up),
                    _yes_no(reply.is_available),
                    status,
                )
            )
            if low:
                worst = max(worst, EXIT_LOW)
        if not reply.is_available:
            worst = max(worst, EXIT_LOW)
    widths = [max(len(r[i]) for r in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    for row in (COLUMNS, *rows):
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    return worst


def _yes_no(value: bool) -> str:
    return "yes" if value else "NO"

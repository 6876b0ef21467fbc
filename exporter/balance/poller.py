"""Background balance polling: one task per account, results kept for scrape time.

Scrapes never wait on DeepSeek: Prometheus reads the last result, the poller refreshes it every
``poll_interval`` with a little jitter so that many replicas do not poll in lock-step.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from exporter.balance.client import POLL_ERROR_REASONS, BalanceReply, PollError, fetch_balance
from exporter.balance.forecast import MIN_RETENTION, SpendTracker
from exporter.balance.history import WEEK, BalanceHistory
from exporter.balance.store import HistoryStore
from exporter.clock import Clock
from exporter.config import AccountConfig, BalanceConfig, DeepSeekConfig

log = logging.getLogger(__name__)

JITTER = 0.1  # +-10 % of the interval

# Fetches one account's balance: the HTTP client by default, a recorded history in the backtest.
Fetch = Callable[[AccountConfig], Awaitable[BalanceReply]]


def retention_for(balance: BalanceConfig) -> float:
    """How much history trackers and the store keep: five weeks, or the forecast window."""
    return max(MIN_RETENTION, balance.forecast_window)


@dataclass
class AccountState:
    """Everything known about one account, as of its last poll."""

    account: AccountConfig
    retention: float
    polled: bool = False
    up: bool = False
    last_reply: BalanceReply | None = None
    last_success: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLL_ERROR_REASONS, 0))
    trackers: dict[str, SpendTracker] = field(default_factory=dict)
    history: dict[str, BalanceHistory] = field(default_factory=dict)  # for the status page
    store: HistoryStore | None = None

    def restore(self) -> None:
        """Continue the history the store kept for this account (after a restart): the
        trackers, and the status page's week of balances."""
        if self.store is None:
            return
        for currency in self.store.currencies(self.account.name):
            stored = self.store.load(self.account.name, currency)
            if stored is None:
                continue
            self.trackers[currency] = SpendTracker.restore(
                self.retention, stored.points, stored.latest
            )
            week = BalanceHistory()
            since = stored.latest.at - WEEK
            for at, balance in self.store.balance_series(self.account.name, currency, since):
                week.observe(at, balance)
            self.history[currency] = week

    def record_success(self, reply: BalanceReply, at: float, duration: float) -> None:
        self.polled, self.up = True, True
        self.last_reply, self.last_success, self.last_duration = reply, at, duration
        self.last_error = None
        for balance in reply.balances:
            tracker = self.trackers.setdefault(balance.currency, SpendTracker(self.retention))
            self.history.setdefault(balance.currency, BalanceHistory()).observe(at, balance.total)
            if tracker.observe(at, balance.total) and self.store is not None:
                latest = tracker.latest
                assert latest is not None
                self.store.record(self.account.name, balance.currency, latest)

    def record_failure(self, error: PollError, duration: float) -> None:
        self.polled, self.up = True, False
        self.last_duration = duration
        self.last_error = f"{error.reason}: {error}"
        self.errors[error.reason] += 1

    def is_fresh(self, now: float, max_staleness: float) -> bool:
        return self.last_success is not None and now - self.last_success <= max_staleness


class BalancePoller:
    """Polls every account's balance in parallel and keeps an AccountState per account."""

    def __init__(
        self,
        deepseek: DeepSeekConfig,
        balance: BalanceConfig,
        accounts: tuple[AccountConfig, ...],
        *,
        clock: Clock = time.time,
        client: httpx.AsyncClient | None = None,
        store: HistoryStore | None = None,
        fetch: Fetch | None = None,
        log_failures: bool = True,
    ) -> None:
        self.clock = clock
        self.store = store
        # The one-shot check prints failures in its table: a log line too would say it twice.
        self.log_failures = log_failures
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._fetch = fetch or self._fetch_over_http
        self.states: dict[str, AccountState] = {}
        self.reconfigure(deepseek, balance, accounts)

    def reconfigure(
        self, deepseek: DeepSeekConfig, balance: BalanceConfig, accounts: tuple[AccountConfig, ...]
    ) -> None:
        """Apply a reloaded config, keeping history of accounts that stay (same name and key)."""
        old = self.states
        self.deepseek, self.balance = deepseek, balance
        retention = retention_for(balance)
        if self.store is not None:
            self.store.retention = retention
        self.states = {}
        for account in accounts:
            state = old.get(account.name)
            if state is not None and state.account.api_key == account.api_key:
                state.account, state.retention = account, retention
                for tracker in state.trackers.values():  # a longer forecast_window keeps more
                    tracker.retention = retention
                self.states[account.name] = state
            else:
                state = AccountState(account=account, retention=retention, store=self.store)
                state.restore()
                self.states[account.name] = state

    @property
    def enabled(self) -> bool:
        """False on proxy-only replicas (``poll_interval: 0``)."""
        return bool(self.balance.poll_interval)

    def charging_currency(self, account: str) -> str | None:
        """The currency a request is charged in: the first with money left, as last polled."""
        state = self.states.get(account)
        reply = state.last_reply if state is not None else None
        if reply is None or not reply.balances:
            return None
        return next((b.currency for b in reply.balances if b.total > 0), reply.balances[0].currency)

    @property
    def ready(self) -> bool:
        return not self.enabled or all(s.polled for s in self.states.values())

    async def _fetch_over_http(self, account: AccountConfig) -> BalanceReply:
        return await fetch_balance(
            self._client, self.deepseek.base_url, account.api_key, self.deepseek.timeout
        )

    async def poll_account(self, state: AccountState) -> None:
        started = time.perf_counter()
        try:
            reply = await self._fetch(state.account)
        except PollError as error:
            state.record_failure(error, time.perf_counter() - started)
            if not self.log_failures:
                return
            log.warning(
                "balance poll failed account=%s reason=%s error=%s",
                state.account.name,
                error.reason,
                error,
            )
            return
        state.record_success(reply, self.clock(), time.perf_counter() - started)
        log.debug("balance poll succeeded account=%s", state.account.name)

    async def poll_once(self) -> None:
        """Poll every account once, concurrently."""
        await asyncio.gather(*(self.poll_account(s) for s in list(self.states.values())))

    async def run(self, after_round: Callable[[], None] | None = None) -> None:
        """Poll forever; each round starts a jittered interval after the previous one started.
        ``after_round`` runs after every round (the app primes series that need the results)."""
        while self.enabled:
            started = time.monotonic()
            await self.poll_once()
            if after_round is not None:
                after_round()
            interval = self.balance.poll_interval * random.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def aclose(self) -> None:
        await self._client.aclose()

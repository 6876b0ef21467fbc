"""The simulator's books: accounts and balances, the request log, per-account stats, completions
in flight, the prompt cache, and charging completions with the price table."""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from exporter.proxy.usage import Usage
from exporter.simulator.errors import Reject, error_response
from exporter.simulator.records import (
    COMPLETION_ENDPOINTS,
    ENDPOINTS,
    PER_REQUEST_ENDPOINTS,
    AccountStats,
    RequestRecord,
    SimAccount,
    canonical_path,
    to_decimal,
)
from exporter.simulator.settings import SimSettings

# Bounds memory in long benchmark runs; the log is for inspection, AccountStats stay exact.
LOG_LIMIT = 10_000
_CACHE_LIMIT = 100_000


class Ledger:
    """The simulator's mutable state, apart from the fault queue."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        # Tests call control methods from another thread than the server's event loop: every
        # access to the state below holds this lock (never across an await).
        self._lock = threading.Lock()
        self._accounts: dict[str, SimAccount] = {}
        self._log: deque[RequestRecord] = deque(maxlen=LOG_LIMIT)
        self._stats: dict[str, AccountStats] = {}
        self._seq = 0
        self._inflight: dict[str, int] = {}
        self._cache: dict[str, set[bytes]] = {}

    # ---- accounts ----------------------------------------------------------------------------

    def add_account(self, account: SimAccount) -> None:
        """Add or replace (by name) an account."""
        with self._lock:
            for other in self._accounts.values():
                if other.api_key == account.api_key and other.name != account.name:
                    raise ValueError(f"account {other.name!r} already uses this api key")
            self._accounts[account.name] = account.copy()

    def remove_account(self, name: str) -> None:
        with self._lock:
            del self._accounts[name]
            self._cache.pop(name, None)

    def account(self, name: str) -> SimAccount:
        """A snapshot (copy) of one account."""
        with self._lock:
            return self._accounts[name].copy()

    @property
    def accounts(self) -> list[SimAccount]:
        with self._lock:
            return [a.copy() for a in self._accounts.values()]

    def top_up(self, account_name: str, currency: str, amount: Decimal | int | str) -> None:
        """Add ``amount`` to the topped-up balance (a new currency is appended)."""
        amount = to_decimal(amount)
        with self._lock:
            balances = self._accounts[account_name].balances
            granted, topped_up = balances.get(currency.upper(), (Decimal(0), Decimal(0)))
            balances[currency.upper()] = (granted, topped_up + amount)

    def set_balance(
        self,
        account_name: str,
        currency: str,
        granted: Decimal | int | str,
        topped_up: Decimal | int | str,
    ) -> None:
        with self._lock:
            self._accounts[account_name].balances[currency.upper()] = (
                to_decimal(granted),
                to_decimal(topped_up),
            )

    def account_for(self, key: str) -> str | None:
        """The name of the account whose api key is ``key``, if any."""
        with self._lock:
            return next((a.name for a in self._accounts.values() if key and a.api_key == key), None)

    # ---- the request log and stats -----------------------------------------------------------

    def requests(self) -> list[RequestRecord]:
        """The request log (last 10 000 requests), oldest first; copies."""
        with self._lock:
            return [replace(r) for r in self._log]

    def stats(self) -> dict[str, AccountStats]:
        """Per-account counters since start (or :meth:`clear`); copies."""
        with self._lock:
            return {
                name: replace(
                    s,
                    completions=dict(s.completions),
                    other_requests=dict(s.other_requests),
                    per_request=dict(s.per_request),
                    tool_calls=dict(s.tool_calls),
                )
                for name, s in self._stats.items()
            }

    def clear(self) -> None:
        """Forget the request log, the counters and the prompt cache."""
        with self._lock:
            self._log.clear()
            self._stats.clear()
            self._cache.clear()

    def open_record(self, method: str, path: str) -> RequestRecord:
        """A new record, in flight, in the log."""
        with self._lock:
            self._seq += 1
            record = RequestRecord(
                seq=self._seq,
                time=self.settings.clock(),
                method=method,
                path=path,
                endpoint=ENDPOINTS[canonical_path(path)],
            )
            self._log.append(record)
        return record

    def finish(self, record: RequestRecord, status: int, override: bool = False) -> None:
        """Set the status and count it; only once, unless ``override`` corrects it (usage and
        cost are counted the first time only)."""
        with self._lock:
            previous = record.status
            if previous is not None and (not override or previous == status):
                return
            record.status = status
            if record.account is None:
                return
            stats = self._stats.setdefault(record.account, AccountStats())
            if record.endpoint in COMPLETION_ENDPOINTS:
                counter = stats.completions
            elif record.endpoint in PER_REQUEST_ENDPOINTS:
                counter = stats.per_request
            else:
                counter = stats.other_requests
            counter[status] = counter.get(status, 0) + 1
            if previous is not None:
                counter[previous] -= 1
                if counter[previous] == 0:
                    del counter[previous]
                return
            if record.usage is not None:
                u, s = record.usage, stats.usage
                stats.usage = Usage(
                    s.input_cache_hit + u.input_cache_hit,
                    s.input_cache_miss + u.input_cache_miss,
                    s.output + u.output,
                    s.reasoning + u.reasoning,
                )
            if record.cost is not None:
                stats.cost += record.cost
            for tool, calls in record.tool_calls.items():
                stats.tool_calls[tool] = stats.tool_calls.get(tool, 0) + calls

    # ---- completions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, name: str) -> Iterator[None]:
        """Check the account can pay (402) and is under its concurrency limit (429); count it
        in flight for the duration."""
        with self._lock:
            account = self._accounts.get(name)
            currency = account.currency if account else None
            if account is None or currency is None or account.total(currency) <= 0:
                raise Reject(error_response(402))
            inflight = self._inflight.get(name, 0)
            max_concurrency = self.settings.max_concurrency
            if max_concurrency is not None and inflight >= max_concurrency:
                raise Reject(error_response(429))
            self._inflight[name] = inflight + 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight[name] -= 1

    def charge(
        self,
        record: RequestRecord,
        canonical: str,
        units: list[tuple[str, int]],
        output_tokens: int,
        reasoning_tokens: int,
        now: float,
        tool_calls: tuple[str, ...] = (),
    ) -> Usage:
        """Count the prompt's tokens, charge the account for the completion (and the server-side
        tool calls it made) at ``now`` and record a 200; the usage charged."""
        name = record.account
        assert name is not None
        at = datetime.fromtimestamp(now, tz=UTC)
        prices = self.settings.prices
        with self._lock:
            hit, miss = self._split_prompt(name, canonical, units)
            usage = Usage(hit, miss, output_tokens, reasoning_tokens)
            record.usage = usage
            for tool in tool_calls:
                record.tool_calls[tool] = record.tool_calls.get(tool, 0) + 1
            account = self._accounts.get(name)
            if account is not None and account.currency is not None:
                record.currency = account.currency
                record.cost = prices.cost(canonical, account.currency, usage, at)
                for tool in tool_calls:
                    item = prices.item_for_tool(tool)
                    price = None
                    if item is not None:
                        price = prices.request_price(item, account.currency, at, tool_call=True)
                    if price is not None and record.cost is not None:
                        record.cost += price
                self._deduct(account, record.cost)
        # Counted now, not when the reply ends: a client that has read the whole reply must find
        # it in stats() at once. A client that goes away mid-reply turns it into a 499.
        self.finish(record, 200)
        return usage

    def charge_request(self, record: RequestRecord, item: str, now: float) -> None:
        """Charge one direct call of a per-request ``item`` (web Search, Fetch); record a 200."""
        name = record.account
        assert name is not None
        with self._lock:
            account = self._accounts.get(name)
            if account is not None and account.currency is not None:
                record.currency = account.currency
                record.cost = self.settings.prices.request_price(
                    item, account.currency, datetime.fromtimestamp(now, tz=UTC)
                )
                self._deduct(account, record.cost)
        self.finish(record, 200)

    @staticmethod
    def _deduct(account: SimAccount, cost: Decimal | None) -> None:
        """Take ``cost`` from the granted balance first, then the topped-up one (the sheet);
        never below zero. Call with the lock held."""
        if cost is None or cost <= 0 or account.currency is None:
            return
        granted, topped_up = account.balances[account.currency]
        from_granted = min(max(granted, Decimal(0)), cost)
        from_topped = min(max(topped_up, Decimal(0)), cost - from_granted)
        account.balances[account.currency] = (granted - from_granted, topped_up - from_topped)

    def _split_prompt(
        self, name: str, canonical: str, units: list[tuple[str, int]]
    ) -> tuple[int, int]:
        """(cache hit, cache miss) prompt tokens. ``units`` are (identity, characters) of the
        prompt's parts in order; the longest prefix this account already sent to this model is
        a hit. Deterministic for a given sequence of requests. Call with the lock held."""
        total_chars = sum(chars for _, chars in units)
        total = max(1, math.ceil(total_chars / 4))
        if not self.settings.prompt_cache:
            return 0, total
        seen = self._cache.setdefault(name, set())
        if len(seen) > _CACHE_LIMIT:
            seen.clear()
        digest = hashlib.sha256(canonical.encode())
        hit = chars = 0
        keys = []
        for identity, unit_chars in units:
            digest.update(b"\0" + identity.encode())
            chars += unit_chars
            key = digest.digest()
            keys.append(key)
            if key in seen:
                hit = min(total, math.ceil(chars / 4))
        seen.update(keys)
        return hit, total - hit

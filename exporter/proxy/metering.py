"""What a proxied request costs: its bounded ``model`` label, and the tokens, tool calls and
estimated cost of a successful reply, counted into the proxy's metrics.

Kept apart from the relay so that how bytes move (the hot path) and what a request is billed
(the price table's business) can change independently. Billed, per the price table:

- tokens of a completion (chat, FIM, Anthropic, Responses), at the model's price of the moment;
- a direct call of a per-request item (web Search or Fetch, recognised by its path), once;
- each server-side tool call a reply reports (``web_search_call`` items, Anthropic's
  ``usage.server_tool_use``), at the item's tool-call price; its cost is counted under the
  item's name as ``model``, so the cost of web search is one series whoever called it.

A cost that the table cannot give (a model or item without a price in that currency, at that
time) is not counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from exporter.clock import Clock
from exporter.proxy.metrics import OTHER_MODEL, ProxyMetrics
from exporter.proxy.pricing import PriceTable
from exporter.proxy.usage import Usage

# Paths whose successful replies should carry usage; one that does not is counted as missing.
USAGE_PATHS = ("/completions", "/messages", "/responses")
_LABEL_CACHE_SIZE = 1024


class Meter:
    """Counts what successful replies cost, for one price table (a reload builds a new one)."""

    def __init__(
        self,
        metrics: ProxyMetrics,
        prices: PriceTable,
        currency_of: Callable[[str], str | None],
        clock: Clock,
    ) -> None:
        self.metrics = metrics
        self.prices = prices
        self.currency_of = currency_of
        self.clock = clock
        self._model_labels: dict[bytes, str] = {}
        # (account, label) -> the token counters' children: labels() takes a lock and builds
        # a key every call; a request's worth of them cost more than the rest of metering.
        self._token_series: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        self._cost_series: dict[tuple[str, str, str], Any] = {}
        self._primed: set[tuple[str, str]] = set()

    def prime(self, accounts: Iterable[str]) -> None:
        """Create every cost series of these accounts at 0 once their currency is known: the
        unmetered-spend rules compare increase() of it, which misses a first increment that
        lands on a series Prometheus has never seen (prometheus/prometheus#1673)."""
        for account in accounts:
            currency = self.currency_of(account)
            if currency is None or (account, currency) in self._primed:
                continue
            self._primed.add((account, currency))
            for label in self.prices.labels:
                self.metrics.cost.labels(account, label, currency)

    def label(self, path: str, model: bytes | None) -> str:
        """The bounded ``model`` label of a request: the per-request item its path is billed
        as, else the canonical name of the priced model it asks for, else ``other``."""
        item = self.prices.item_for_path(path)
        if item is not None:
            return item
        if model is None:
            return OTHER_MODEL
        label = self._model_labels.get(model)
        if label is None:
            canonical = self.prices.canonical_model(model.decode("utf-8", "replace"))
            label = canonical if canonical is not None else OTHER_MODEL
            if len(self._model_labels) < _LABEL_CACHE_SIZE:  # a cache, not client input kept
                self._model_labels[model] = label
        return label

    def meter(self, account: str, label: str, path: str, usage: Usage | None) -> None:
        """Count a successful (2xx) reply of ``label`` to ``path`` with the usage it carried."""
        if label in self.prices.request_items:
            self._add_cost(account, label, self.prices.request_price)
            return
        metrics = self.metrics
        if usage is None:
            if path.endswith(USAGE_PATHS):
                metrics.usage_missing.labels(account, label).inc()
            return
        series = self._token_series.get((account, label))
        if series is None:
            tokens = metrics.tokens
            series = self._token_series[(account, label)] = (
                tokens.labels(account, label, "input_cache_hit"),
                tokens.labels(account, label, "input_cache_miss"),
                tokens.labels(account, label, "output"),
                metrics.reasoning_tokens.labels(account, label),
            )
        for child, count in zip(
            series,
            (usage.input_cache_hit, usage.input_cache_miss, usage.output, usage.reasoning),
            strict=True,
        ):
            if count:
                child.inc(count)
        if label != OTHER_MODEL:
            self._add_cost(account, label, self._token_price(usage))
        for tool, calls in usage.tool_calls:
            item = self.prices.item_for_tool(tool)
            metrics.tool_calls.labels(account, label, item or OTHER_MODEL).inc(calls)
            if item is not None:
                self._add_cost(account, item, self._tool_call_price, calls)

    def _token_price(self, usage: Usage) -> Callable[[str, str, datetime], Decimal | None]:
        return lambda model, currency, at: self.prices.cost(model, currency, usage, at)

    def _tool_call_price(self, item: str, currency: str, at: datetime) -> Decimal | None:
        return self.prices.request_price(item, currency, at, tool_call=True)

    def _add_cost(
        self,
        account: str,
        label: str,
        price: Callable[[str, str, datetime], Decimal | None],
        times: int = 1,
    ) -> None:
        """Add ``times`` the price of ``label`` now, in the account's currency, if known."""
        currency = self.currency_of(account)
        if currency is None:
            return
        cost = price(label, currency, datetime.fromtimestamp(self.clock(), UTC))
        if cost is not None:
            key = (account, label, currency)
            child = self._cost_series.get(key)
            if child is None:
                child = self._cost_series[key] = self.metrics.cost.labels(*key)
            child.inc(float(cost * times))

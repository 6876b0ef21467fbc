"""The simulator's settings, shared by its parts; the :class:`~exporter.simulator.Simulator`
forwards its public attributes of the same names here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, overload

from exporter.proxy.pricing import CURRENCIES, PriceTable

STREAM_USAGE_STYLES = ("deepseek", "requested", "openai")
# Settings that PATCH /_simulator/config may change, with their types.
CONFIG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "completion_tokens": int,
    "reasoning_tokens": int,
    "stream_chunks": int,
    "chunk_interval": (int, float),
    "keepalive_delay": (int, float),
    "keepalive_interval": (int, float),
    "prompt_cache": bool,
    "stream_usage": str,
    "numeric_balances": bool,
    "max_concurrency": (int, type(None)),
    "report_tool_calls": bool,
}


@dataclass(kw_only=True)
class SimSettings:
    """Mutable at any time, from any thread (plain attribute writes). What each one means is
    documented on :class:`~exporter.simulator.Simulator`, which holds the defaults."""

    prices: PriceTable
    clock: Callable[[], float]
    # None: whatever the price table prices at the clock's time (retired models drop out).
    models: frozenset[str] | None
    thinking_models: frozenset[str]
    completion_tokens: int
    reasoning_tokens: int
    stream_chunks: int
    chunk_interval: float
    keepalive_delay: float
    keepalive_interval: float
    prompt_cache: bool
    stream_usage: str
    numeric_balances: bool
    max_concurrency: int | None
    # False: server-side tool calls are charged but left out of the reply, as an API that does
    # not report them would (what a metering proxy cannot see).
    report_tool_calls: bool = True

    def served_models(self) -> list[str]:
        """The models ``GET /models`` lists and completions accept."""
        if self.models is not None:
            return sorted(self.models)
        return sorted(m for m in self.prices.models if self.serves(m, m))

    def serves(self, model: str, canonical: str) -> bool:
        if self.models is not None:
            return model in self.models or canonical in self.models
        at = datetime.fromtimestamp(self.clock(), tz=UTC)
        return any(self.prices.price(canonical, cur, at) is not None for cur in CURRENCIES)

    def config(self) -> dict[str, Any]:
        """The settings PATCH /_simulator/config may change, by name."""
        return {key: getattr(self, key) for key in CONFIG_FIELDS}


class _Configured(Protocol):
    settings: SimSettings


T = TypeVar("T")


class Setting(Generic[T]):
    """A class attribute that reads and writes the same-named field of the instance's
    ``settings``: ``sim.stream_chunks = 20`` changes what every part of the simulator sees."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, instance: _Configured, owner: type) -> T: ...
    def __get__(self, instance: _Configured | None, owner: type) -> T | Setting[T]:
        if instance is None:
            return self
        value: T = getattr(instance.settings, self.name)
        return value

    def __set__(self, instance: _Configured, value: T) -> None:
        setattr(instance.settings, self.name, value)

"""What the web layer needs from the exporter: a small interface, not the exporter itself.

The landing page and the endpoints depend on :class:`ExporterView` only, so the web layer knows
nothing of pollers, trackers or the proxy; the app factory implements it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from prometheus_client import CollectorRegistry

# What a person must know about an account, worst first.
DOWN, EMPTY, UNAVAILABLE, LOW, PENDING, OK, NOT_POLLED = (
    "DOWN",
    "EMPTY",
    "UNAVAILABLE",
    "LOW",
    "PENDING",
    "OK",
    "NOT POLLED",
)
SEVERITY = (DOWN, EMPTY, UNAVAILABLE, LOW, PENDING, NOT_POLLED, OK)


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """One row of the landing page: an account in one currency (or with no fresh balance)."""

    name: str
    poll_state: str  # "up", "pending", "down", or "off" (proxy-only: polling disabled)
    last_error: str | None = None
    last_success: float | None = None  # Unix time of the last good poll
    currency: str | None = None  # None: no fresh balance to show
    balance: Decimal | None = None
    available: bool | None = None
    burn_per_second: float | None = None  # over the forecast window
    exhaustion_seconds: float | None = None  # +Inf when nothing is spent
    threshold: Decimal | None = None  # low_balance_threshold, in this currency
    empty_since: float | None = None  # Unix time the balance was first seen at zero, this time
    forecast_window: float | None = None  # seconds of history the burn rate is taken over

    @property
    def state(self) -> str:
        """The badge: DOWN (the last poll failed), EMPTY (nothing left: calls get 402),
        UNAVAILABLE (DeepSeek says it cannot pay), LOW (under its threshold), OK; PENDING
        before the first poll, NOT POLLED on a proxy-only replica."""
        if self.poll_state == "down":
            return DOWN
        if self.poll_state == "off":
            return NOT_POLLED
        if self.balance is None:
            return PENDING
        if self.balance <= 0:
            return EMPTY
        if self.available is False:
            return UNAVAILABLE
        if self.threshold is not None and self.balance < self.threshold:
            return LOW
        return OK


@dataclass(frozen=True, slots=True)
class TrafficCounts:
    """Proxied requests of one account over a window."""

    requests: float = 0.0
    payment_required: float = 0.0  # answered 402 Insufficient Balance
    errors: float = 0.0  # other 4xx and 5xx, and no upstream answer at all
    tokens: float = 0.0
    cost: Mapping[str, float] = field(default_factory=dict)  # currency -> estimated cost


@dataclass(frozen=True, slots=True)
class TrafficWindow:
    """Traffic per account from ``start`` to now; ``start`` is later than asked for while the
    exporter has not run that long."""

    start: float
    by_account: Mapping[str, TrafficCounts]

    def of(self, account: str) -> TrafficCounts:
        return self.by_account.get(account, TrafficCounts())


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: ``error`` when the new configuration was refused (the running one
    stays); otherwise applied, with ``notes`` on what takes effect only on restart."""

    error: str | None = None
    notes: tuple[str, ...] = ()
    reloaded: bool = True  # False: there was nothing to reload (the notes say why)


class ExporterView(Protocol):
    """The exporter as the web layer sees it."""

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def ready(self) -> bool: ...

    def now(self) -> float: ...

    def account_status(self) -> list[AccountStatus]: ...

    def balance_history(
        self, account: str, currency: str, since: float
    ) -> list[tuple[float, Decimal]]:
        """(time, total balance) observations since ``since``, oldest first."""
        ...

    def traffic(self, since: float) -> TrafficWindow:
        """Proxied traffic per account since ``since`` (to within a minute)."""
        ...

    def proxy_url_for(self, host: str | None) -> str | None:
        """The proxy's URL as seen by a client that reached this page at ``host``; None when
        the proxy is off."""
        ...

    @property
    def demo_keys(self) -> Mapping[str, str]:
        """Account -> key, shown on the page: only the demo's fixed, fake keys."""
        ...

    async def reload(self) -> ReloadResult:
        """Reload the configuration: applied (with notes), or refused with the error."""
        ...

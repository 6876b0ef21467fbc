"""What the web layer needs from the exporter: a small interface, not the exporter itself.

The landing page and the endpoints depend on :class:`ExporterView` only, so the web layer knows
nothing of pollers, trackers or the proxy; the app factory implements it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from prometheus_client import CollectorRegistry


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """One row of the landing page: an account in one currency (or with no fresh balance)."""

    name: str
    poll_state: str  # "up", "pending" or "down"
    last_error: str | None = None
    last_success: float | None = None  # Unix time of the last good poll
    currency: str | None = None  # None: no fresh balance to show
    balance: Decimal | None = None
    available: bool | None = None
    burn_per_second: float | None = None  # over the forecast window
    exhaustion_seconds: float | None = None  # +Inf when nothing is spent


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

    async def reload(self) -> ReloadResult:
        """Reload the configuration: applied (with notes), or refused with the error."""
        ...

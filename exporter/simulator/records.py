"""The simulator's data types: accounts, faults, the request log and the per-account stats."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from aiohttp import web

from exporter.proxy.usage import Usage

# Which endpoint each API path is, for the request log (paths after canonical_path).
ENDPOINTS = {
    "/user/balance": "balance",
    "/models": "models",
    "/chat/completions": "chat",
    "/beta/completions": "fim",
    "/anthropic/v1/messages": "anthropic",
    "/responses": "responses",
    "/search": "search",
    "/fetch": "fetch",
}
# One SSE event: (event name, payload); a str payload is sent as is (``[DONE]``).
Event = tuple[str | None, dict[str, Any] | str]
# Completions are the requests that are charged and counted per account in AccountStats.
COMPLETION_ENDPOINTS = frozenset({"chat", "fim", "anthropic", "responses"})
# Billed per request (web Search and Fetch called directly), counted apart from completions.
PER_REQUEST_ENDPOINTS = frozenset({"search", "fetch"})


def canonical_path(path: str) -> str:
    return path[3:] if path.startswith("/v1/") else path


def to_decimal(value: Any) -> Decimal:
    """Decimal from a Decimal, int or string; floats go through str() so 0.1 stays 0.1."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError("amount must be a number, not a boolean")
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"invalid amount {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"invalid amount {value!r}")
    return result


@dataclass
class SimAccount:
    """A simulated account. ``balances`` maps currency to ``(granted, topped_up)``; its first
    currency is the one completions are charged in."""

    name: str
    api_key: str
    balances: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.balances = {
            cur.upper(): (to_decimal(granted), to_decimal(topped_up))
            for cur, (granted, topped_up) in self.balances.items()
        }

    @property
    def currency(self) -> str | None:
        """The charging currency (the first one listed), None if the account has none."""
        return next(iter(self.balances), None)

    def total(self, currency: str) -> Decimal:
        granted, topped_up = self.balances.get(currency.upper(), (Decimal(0), Decimal(0)))
        return granted + topped_up

    @property
    def is_available(self) -> bool:
        return any(g + t > 0 for g, t in self.balances.values())

    def copy(self) -> SimAccount:
        return SimAccount(self.name, self.api_key, dict(self.balances))


class FaultKind(StrEnum):
    STATUS = "status"  # `status` with a DeepSeek error body (`message`, `error_type` optional)
    DELAY = "delay"  # wait `seconds` before sending headers, then answer normally
    HTML = "html"  # an nginx-style HTML error page, 502 unless `status` says otherwise
    NON_JSON = "non_json"  # 200, Content-Type application/json, body that is not JSON
    BODY = "body"  # exactly `body` (bytes, str or a JSON value), `status` (200), `content_type`
    DROP = "drop"  # close the connection before sending any byte
    RESET = "reset"  # abort the connection mid-body (half sent) or after `after_chunks` events
    STALL = "stall"  # pause `seconds` mid-body or after `after_chunks` events, then go on
    NO_USAGE = "no_usage"  # a 200 reply (or stream) without any usage
    HUGE = "huge"  # a valid reply padded to `size` bytes (first event when streaming)


@dataclass
class Fault:
    """A fault for the next ``times`` requests (None: until cleared) to ``path`` (None: any API
    path; ``/v1/chat/completions`` also matches ``/chat/completions``)."""

    kind: FaultKind
    path: str | None = None
    times: int | None = 1
    status: int | None = None
    message: str | None = None
    error_type: str | None = None
    seconds: float = 0.0
    after_chunks: int = 1
    size: int = 0
    body: Any = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or None")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Build from the JSON of ``POST /_simulator/faults``; a raw body is given as
        ``body_text`` (str), ``body_base64`` (bytes) or ``body`` (any JSON value)."""
        data = dict(data)
        if "body_text" in data:
            data["body"] = str(data.pop("body_text")).encode()
        elif "body_base64" in data:
            data["body"] = base64.b64decode(data.pop("body_base64"))
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        if isinstance(self.body, bytes):
            data["body"] = None
            data["body_base64"] = base64.b64encode(self.body).decode()
        return data

    def matches(self, path: str) -> bool:
        return self.path is None or self.path in (path, canonical_path(path))


@dataclass
class RequestRecord:
    """One request to an API path, as the simulator saw it."""

    seq: int
    time: float  # simulator clock, unix seconds
    method: str
    path: str
    endpoint: str  # chat | fim | anthropic | responses | search | fetch | balance | models
    account: str | None = None  # None: not authenticated
    model: str | None = None
    stream: bool = False
    # None while in flight; 0 if a fault dropped the connection before any response; 499 if
    # the client went away before the reply was complete (a charged stream included). A RESET
    # fault keeps the 200 it sent: see `fault`.
    status: int | None = None
    fault: str | None = None
    usage: Usage | None = None  # charged usage (whether or not the reply showed it)
    cost: Decimal | None = None  # priced cost; the deduction may be less (clamped at zero)
    currency: str | None = None
    # Server-side tool calls the model made (charged whether or not the reply reported them).
    tool_calls: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = asdict(self.usage) if self.usage else None
        data["cost"] = str(self.cost) if self.cost is not None else None
        return data


@dataclass
class AccountStats:
    """What one account did, for comparison with what a proxy counted."""

    completions: dict[int, int] = field(default_factory=dict)  # status code -> count
    other_requests: dict[int, int] = field(default_factory=dict)  # balance, models
    per_request: dict[int, int] = field(default_factory=dict)  # direct Search / Fetch calls
    tool_calls: dict[str, int] = field(default_factory=dict)  # server-side tool calls, by tool
    usage: Usage = field(default_factory=Usage)  # sum of charged usage
    cost: Decimal = Decimal(0)  # sum of priced cost (tokens, per-request and tool calls)

    @property
    def completions_ok(self) -> int:
        return self.completions.get(200, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "completions": {str(k): v for k, v in sorted(self.completions.items())},
            "other_requests": {str(k): v for k, v in sorted(self.other_requests.items())},
            "per_request": {str(k): v for k, v in sorted(self.per_request.items())},
            "tool_calls": dict(sorted(self.tool_calls.items())),
            "usage": asdict(self.usage),
            "cost": str(self.cost),
        }


# Where the middleware leaves a request's log record and the fault it consumed, for the
# handlers and the writer.
RECORD = web.RequestKey("sim_record", RequestRecord)
FAULT = web.RequestKey("sim_fault", Fault | None)

"""Fetching and strictly parsing ``GET /user/balance``.

A reply that is not exactly what the API documents is a failed poll with a reason, never a value:
an exporter that turns an HTML error page into ``balance 0`` pages someone for nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from exporter.config import Secret

POLL_ERROR_REASONS = ("timeout", "connection", "unauthorized", "http_error", "invalid_response")

# Anything above this is not a real prepaid balance but a parsing accident or a broken upstream.
MAX_PLAUSIBLE_AMOUNT = Decimal("1e12")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_AMOUNT_RE = re.compile(r"^-?\d+(\.\d+)?$")
_BALANCE_FIELDS = {"currency", "total_balance", "granted_balance", "topped_up_balance"}


class PollError(Exception):
    """A failed poll; ``reason`` is one of POLL_ERROR_REASONS (a bounded label value)."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in POLL_ERROR_REASONS
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CurrencyBalance:
    currency: str
    total: Decimal
    granted: Decimal
    topped_up: Decimal


@dataclass(frozen=True, slots=True)
class BalanceReply:
    is_available: bool
    balances: tuple[CurrencyBalance, ...]


def _invalid(message: str) -> PollError:
    return PollError("invalid_response", message)


def _amount(where: str, value: Any) -> Decimal:
    # Numbers are accepted (an older doc typed them so), but bools and floats like NaN are not.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _invalid(f"{where}: expected a decimal string, got {type(value).__name__}")
    text = value if isinstance(value, str) else repr(value)
    if not _AMOUNT_RE.match(text):
        raise _invalid(f"{where}: not a decimal amount: {text[:40]!r}")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _invalid(f"{where}: not a decimal amount: {text[:40]!r}") from None
    if amount < 0:
        raise _invalid(f"{where}: negative amount {text}")
    if amount > MAX_PLAUSIBLE_AMOUNT:
        raise _invalid(f"{where}: implausibly large amount")
    return amount


def parse_balance_reply(body: bytes) -> BalanceReply:
    """Parse a ``/user/balance`` body or raise PollError('invalid_response', why)."""
    try:
        data = json.loads(body, parse_float=str, parse_int=str, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
        snippet = body[:40].decode("utf-8", "replace").strip()
        raise _invalid(f"body is not JSON (starts with {snippet!r})") from None
    if not isinstance(data, dict):
        raise _invalid("body is not a JSON object")
    if set(data) != {"is_available", "balance_infos"}:
        extra = sorted(set(data) ^ {"is_available", "balance_infos"})
        # Names as the upstream sent them, unless they could break or flood a log line.
        names = [n if n.isprintable() and len(n) <= 40 else repr(n[:40]) for n in extra[:5]]
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise _invalid(f"unexpected or missing fields: {', '.join(names)}{more}")
    available = data["is_available"]
    if not isinstance(available, bool):
        raise _invalid("is_available: expected true or false")
    infos = data["balance_infos"]
    if not isinstance(infos, list):
        raise _invalid("balance_infos: expected a list")
    balances: list[CurrencyBalance] = []
    for i, info in enumerate(infos):
        where = f"balance_infos[{i}]"
        if not isinstance(info, dict) or set(info) != _BALANCE_FIELDS:
            raise _invalid(f"{where}: expected exactly {', '.join(sorted(_BALANCE_FIELDS))}")
        currency = info["currency"]
        if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
            raise _invalid(f"{where}.currency: not a currency code")
        if any(b.currency == currency for b in balances):
            raise _invalid(f"{where}.currency: {currency} listed twice")
        balance = CurrencyBalance(
            currency=currency,
            total=_amount(f"{where}.total_balance", info["total_balance"]),
            granted=_amount(f"{where}.granted_balance", info["granted_balance"]),
            topped_up=_amount(f"{where}.topped_up_balance", info["topped_up_balance"]),
        )
        # total = granted + topped_up per the docs; allow a cent of rounding between the parts.
        if abs(balance.total - balance.granted - balance.topped_up) > Decimal("0.01"):
            raise _invalid(f"{where}: total_balance is not granted_balance + topped_up_balance")
        balances.append(balance)
    return BalanceReply(is_available=available, balances=tuple(balances))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON and never an amount


async def fetch_balance(
    client: httpx.AsyncClient, base_url: str, api_key: Secret, timeout: float
) -> BalanceReply:
    """One poll. Errors are classified into the bounded reasons; messages never hold the key."""
    try:
        response = await client.get(
            f"{base_url}/user/balance",
            headers={"Authorization": f"Bearer {api_key.reveal()}", "Accept": "application/json"},
            timeout=timeout,
        )
    except httpx.TimeoutException:
        raise PollError("timeout", f"no reply within {timeout:g}s") from None
    except httpx.HTTPError as err:
        raise PollError("connection", f"{type(err).__name__}: cannot reach {base_url}") from None
    if response.status_code == 401:
        raise PollError("unauthorized", "HTTP 401: the API key was rejected")
    if response.status_code != 200:
        raise PollError("http_error", f"HTTP {response.status_code}: {_error_message(response)}")
    return parse_balance_reply(response.content)


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase or "error"
    # The upstream's message may echo part of the key (****18b); keep it short and single-line.
    return str(message).splitlines()[0][:120] if message else "error"

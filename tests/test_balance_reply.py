"""``/user/balance``: every documented variant parses exactly, everything else is refused."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from exporter.balance.client import PollError, parse_balance_reply


def reply(*infos: dict[str, object], available: object = True) -> bytes:
    return json.dumps({"is_available": available, "balance_infos": list(infos)}).encode()


def info(
    currency: str = "CNY",
    total: object = "110.00",
    granted: object = "10.00",
    topped_up: object = "100.00",
) -> dict[str, object]:
    return {
        "currency": currency,
        "total_balance": total,
        "granted_balance": granted,
        "topped_up_balance": topped_up,
    }


def test_documented_reply() -> None:
    parsed = parse_balance_reply(reply(info()))
    assert parsed.is_available
    (cny,) = parsed.balances
    assert (cny.currency, cny.total, cny.granted, cny.topped_up) == (
        "CNY",
        Decimal("110.00"),
        Decimal("10.00"),
        Decimal("100.00"),
    )


def test_amounts_as_numbers_and_both_currencies() -> None:
    parsed = parse_balance_reply(
        reply(info("CNY", 110.5, 10, 100.5), info("USD", "2.00", "0", "2.00"), available=False)
    )
    assert not parsed.is_available
    assert [b.currency for b in parsed.balances] == ["CNY", "USD"]
    assert parsed.balances[0].total == Decimal("110.5")


def test_exact_decimal_parsing() -> None:
    parsed = parse_balance_reply(reply(info(total="0.30", granted="0.10", topped_up="0.20")))
    assert parsed.balances[0].total == Decimal("0.30")


def test_empty_balance_list_is_valid() -> None:
    assert parse_balance_reply(reply()).balances == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "body is not JSON"),
        (b"", "body is not JSON"),
        (b"\xff\xfe", "body is not JSON"),
        (b"[]", "body is not a JSON object"),
        (b'{"balance_infos": []}', "unexpected or missing fields: is_available"),
        (b'{"is_available": true, "balance_infos": [], "x": 1}', "unexpected or missing fields: x"),
        (b'{"is_available": "yes", "balance_infos": []}', "is_available: expected true or false"),
        (b'{"is_available": true, "balance_infos": {}}', "balance_infos: expected a list"),
        (reply({"currency": "CNY"}), "balance_infos[0]: expected exactly"),
        (reply({**info(), "extra": 1}), "balance_infos[0]: expected exactly"),
        (reply(info(currency="cny")), "balance_infos[0].currency: not a currency code"),
        (reply(info(currency="<script>")), "balance_infos[0].currency: not a currency code"),
        (reply(info(), info()), "balance_infos[1].currency: CNY listed twice"),
        (reply(info(total="-1.00", granted="0", topped_up="-1.00")), "negative amount"),
        (reply(info(total="NaN")), "not a decimal amount"),
        (
            b'{"is_available": true, "balance_infos": [{"currency": "CNY", "total_balance": NaN,'
            b' "granted_balance": 0, "topped_up_balance": 0}]}',
            "body is not JSON",
        ),
        (reply(info(total="Infinity")), "not a decimal amount"),
        (reply(info(total="1e400")), "not a decimal amount"),
        (reply(info(total=True)), "expected a decimal string, got bool"),
        (reply(info(total=None)), "expected a decimal string, got NoneType"),
        (reply(info(total="9" * 20, granted="0", topped_up="9" * 20)), "implausibly large amount"),
        (reply(info(total="50.00")), "total_balance is not granted_balance + topped_up_balance"),
    ],
)
def test_malformed_replies_are_failed_polls_never_values(body: bytes, message: str) -> None:
    with pytest.raises(PollError) as caught:
        parse_balance_reply(body)
    assert caught.value.reason == "invalid_response"
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)

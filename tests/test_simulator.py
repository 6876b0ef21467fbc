"""The DeepSeek API simulator, over real loopback HTTP with the official SDKs as clients.

Everything else in the suite trusts this fake to follow /work/shared/deepseek-api.md, so these
tests pin the sheet's shapes exactly: balance, usage, stream order, error bodies, charging.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from exporter.proxy.pricing import PriceTable
from exporter.proxy.usage import Usage
from exporter.simulator import (
    Fault,
    FaultKind,
    SimAccount,
    Simulator,
    SimulatorThread,
    demo_accounts,
    main,
)

PRICES = PriceTable.load()
# Saturday: off-peak all day. Monday 02:00 UTC: peak (the sheet's 01:00-04:00 window).
OFF_PEAK = datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp()
PEAK = datetime(2026, 11, 23, 2, tzinfo=UTC).timestamp()
KEY = "sk-sim-alice-7f3a"
BOB_KEY = "sk-sim-bob-91c2"
PROMPT = "hello world, how are you"  # 24 characters: 6 prompt tokens
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]


class Clock:
    """Fixed time, moved by the test: pricing depends on it, never on the real clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim_clock() -> Clock:
    return Clock(OFF_PEAK)


@pytest.fixture
def sim(sim_clock: Clock) -> Simulator:
    accounts = [
        SimAccount("alice", KEY, {"CNY": (Decimal("10"), Decimal("100"))}),
        SimAccount("bob", BOB_KEY, {"USD": (Decimal("1"), Decimal("2")), "CNY": (0, 5)}),
    ]
    return Simulator(accounts, prices=PRICES, clock=sim_clock, keepalive_interval=0.02)


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorThread]:
    with SimulatorThread(sim) as running:
        yield running


@pytest.fixture
def oai(server: SimulatorThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=5) as c:
        yield c


@pytest.fixture
def raw(server: SimulatorThread) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=5) as c:
        yield c


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "deepseek-flash", "messages": MESSAGES, **extra}


def sse_payloads(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except ``[DONE]``."""
    out: list[Any] = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def cost(model: str, currency: str, usage: Usage, at: float) -> Decimal:
    result = PRICES.cost(model, currency, usage, datetime.fromtimestamp(at, tz=UTC))
    assert result is not None and result > 0
    return result


# ---- balance --------------------------------------------------------------------------------


def test_balance_has_the_sheet_shape(raw: httpx.Client) -> None:
    reply = raw.get("/user/balance")
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == {
        "is_available": True,
        "balance_infos": [
            {
                "currency": "CNY",
                "total_balance": "110.00",
                "granted_balance": "10.00",
                "topped_up_balance": "100.00",
            }
        ],
    }


def test_balance_lists_every_currency_and_rounds_consistently(
    sim: Simulator, server: SimulatorThread
) -> None:
    sim.set_balance("bob", "CNY", "0.005", "1.234")
    reply = httpx.get(
        f"{server.base_url}/user/balance", headers={"Authorization": f"Bearer {BOB_KEY}"}
    )
    infos = reply.json()["balance_infos"]
    assert [i["currency"] for i in infos] == ["USD", "CNY"]
    # Each part is rounded, and the total shown is their sum: total = granted + topped_up holds.
    assert infos[1] == {
        "currency": "CNY",
        "total_balance": "1.24",
        "granted_balance": "0.01",
        "topped_up_balance": "1.23",
    }


def test_numeric_balances_variant(sim: Simulator, raw: httpx.Client) -> None:
    sim.numeric_balances = True
    info = raw.get("/user/balance").json()["balance_infos"][0]
    assert info["total_balance"] == 110.0 and info["granted_balance"] == 10.0


# ---- authentication and request errors ------------------------------------------------------


def error_of(reply: httpx.Response) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("path", ["/user/balance", "/models"])
def test_401_shows_only_the_last_four_characters(server: SimulatorThread, path: str) -> None:
    key = "sk-live-0123456789abcdef"
    reply = httpx.get(server.base_url + path, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 401
    assert error_of(reply) == {
        "message": "Authentication Fails, Your api key: ****cdef is invalid",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_request_error",
    }
    assert key not in reply.text and "0123456789" not in reply.text


def test_401_for_missing_and_short_keys(server: SimulatorThread) -> None:
    missing = httpx.get(f"{server.base_url}/user/balance")
    short = httpx.get(f"{server.base_url}/user/balance", headers={"Authorization": "Bearer abc"})
    for reply in (missing, short):
        assert reply.status_code == 401
        assert error_of(reply)["message"] == "Authentication Fails, Your api key: **** is invalid"


def test_openai_sdk_sees_authentication_error(server: SimulatorThread) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-nope-5678abcd", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert "****abcd" in str(caught.value) and "sk-nope" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{not json", 400, "Failed to parse the request body as JSON"),
        (json.dumps({"model": "deepseek-flash"}).encode(), 422, "missing field `messages`"),
        (json.dumps({"model": "deepseek-flash", "messages": "hi"}).encode(), 422, "messages:"),
        (json.dumps({"messages": MESSAGES}).encode(), 422, "missing field `model`"),
        (json.dumps(chat_body(stream="yes")).encode(), 422, "stream:"),
        (json.dumps(chat_body(model="gpt-4o")).encode(), 400, "Model Not Exist"),
        # Retired on 2026-07-24: the price table has no price for it any more.
        (json.dumps(chat_body(model="deepseek-chat")).encode(), 400, "Model Not Exist"),
    ],
)
def test_request_errors(
    sim: Simulator, raw: httpx.Client, content: bytes, status: int, message: str
) -> None:
    reply = raw.post("/chat/completions", content=content)
    assert reply.status_code == status
    error = error_of(reply)
    assert error["message"].startswith(message) or message in error["message"]
    assert error["code"] == "invalid_request_error"
    assert sim.stats()["alice"].completions == {status: 1}
    assert sim.stats()["alice"].usage == Usage()


# ---- chat completions -----------------------------------------------------------------------


def test_chat_completion_usage_has_the_sheet_shape(oai: openai.OpenAI, raw: httpx.Client) -> None:
    reply = oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert len((reply.choices[0].message.content or "").split()) == 20
    assert reply.usage is not None and reply.usage.total_tokens == 26
    sim_body = chat_body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "abcdefghi"}]}]
    )
    assert raw.post("/chat/completions", json=sim_body).json()["usage"] == {
        "prompt_tokens": 3,  # ceil(9 / 4)
        "completion_tokens": 20,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 3,
    }


def test_thinking_request_reports_reasoning_tokens(raw: httpx.Client) -> None:
    body = chat_body(model="deepseek-v4-pro", thinking={"type": "enabled"})
    reply = raw.post("/v1/chat/completions", json=body).json()
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"]
    assert reply["usage"]["completion_tokens"] == 20 + 32
    assert reply["usage"]["completion_tokens_details"] == {"reasoning_tokens": 32}
    plain = raw.post("/chat/completions", json=chat_body()).json()
    assert "completion_tokens_details" not in plain["usage"]


def test_max_tokens_caps_the_reply(raw: httpx.Client) -> None:
    reply = raw.post("/chat/completions", json=chat_body(max_tokens=3)).json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 3


def test_repeated_prompt_prefix_is_a_cache_hit(raw: httpx.Client, sim: Simulator) -> None:
    first = raw.post("/chat/completions", json=chat_body()).json()["usage"]
    again = raw.post("/chat/completions", json=chat_body()).json()["usage"]
    longer = chat_body(
        messages=[
            *MESSAGES,
            {"role": "assistant", "content": "x" * 40},
            {"role": "user", "content": "y" * 40},
        ]
    )
    extended = raw.post("/chat/completions", json=longer).json()["usage"]
    assert (first["prompt_cache_hit_tokens"], first["prompt_cache_miss_tokens"]) == (0, 6)
    assert (again["prompt_cache_hit_tokens"], again["prompt_cache_miss_tokens"]) == (6, 0)
    assert again["prompt_tokens_details"] == {"cached_tokens": 6}
    assert (extended["prompt_cache_hit_tokens"], extended["prompt_tokens"]) == (6, 26)
    # Per account: bob's identical prompt is a miss.
    bob = raw.post(
        "/chat/completions", json=chat_body(), headers={"Authorization": f"Bearer {BOB_KEY}"}
    ).json()["usage"]
    assert bob["prompt_cache_hit_tokens"] == 0
    sim.prompt_cache = False
    assert (
        raw.post("/chat/completions", json=chat_body()).json()["usage"]["prompt_cache_hit_tokens"]
        == 0
    )


def test_models_list(oai: openai.OpenAI, sim: Simulator) -> None:
    assert [m.id for m in oai.models.list()] == ["deepseek-flash", "deepseek-v4-pro"]
    assert [m.owned_by for m in oai.models.list()] == ["deepseek", "deepseek"]
    sim.models = frozenset({"deepseek-flash"})
    assert [m.id for m in oai.models.list()] == ["deepseek-flash"]


def test_legacy_alias_is_accepted_and_billed_as_canonical(
    raw: httpx.Client, sim: Simulator
) -> None:
    reply = raw.post("/chat/completions", json=chat_body(model="deepseek-v4-flash"))
    assert reply.status_code == 200 and reply.json()["model"] == "deepseek-v4-flash"
    record = sim.requests()[-1]
    assert record.cost == cost("deepseek-flash", "CNY", record.usage, OFF_PEAK)


# ---- streaming ------------------------------------------------------------------------------


def test_stream_reasoning_then_content_usage_on_last_chunk(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="deepseek-v4-pro",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking": {"type": "enabled"}},
    )
    chunks = list(stream)
    kinds = []
    for chunk in chunks[1:-1]:
        delta = chunk.choices[0].delta
        kinds.append("reasoning" if getattr(delta, "reasoning_content", None) else "content")
    assert kinds == ["reasoning"] * 4 + ["content"] * 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.usage.completion_tokens == 52
    assert last.usage.completion_tokens_details.reasoning_tokens == 32
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(text.split()) == 20


def test_raw_stream_without_include_usage(raw: httpx.Client) -> None:
    reply = raw.post("/chat/completions", json=chat_body(stream=True))
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.text.endswith("data: [DONE]\n\n")
    payloads = sse_payloads(reply.text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len(chunks) == 1 + 8 + 1  # role, 8 text chunks, finishing chunk
    # Without include_usage, earlier chunks carry no "usage" key at all; the last one has it.
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["usage"]["prompt_cache_miss_tokens"] == 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_usage_styles(sim: Simulator, raw: httpx.Client) -> None:
    sim.stream_usage = "requested"
    chunks = sse_payloads(raw.post("/chat/completions", json=chat_body(stream=True)).text)[:-1]
    assert not any(c.get("usage") for c in chunks)
    sim.stream_usage = "openai"
    body = chat_body(stream=True, stream_options={"include_usage": True})
    chunks = sse_payloads(raw.post("/chat/completions", json=body).text)[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["usage"] is None


def test_stream_pacing(sim: Simulator, raw: httpx.Client) -> None:
    sim.completion_tokens, sim.stream_chunks = 64, 64
    chunks = sse_payloads(raw.post("/chat/completions", json=chat_body(stream=True)).text)[:-1]
    assert len(chunks) == 66 and all(c["choices"][0]["delta"]["content"] for c in chunks[1:-1])
    sim.stream_chunks, sim.chunk_interval = 4, 0.02
    started = time.monotonic()
    raw.post("/chat/completions", json=chat_body(stream=True))
    assert time.monotonic() - started >= 6 * 0.02  # 7 events, 6 gaps (the [DONE] included)


def test_streaming_keepalives(sim: Simulator, raw: httpx.Client, oai: openai.OpenAI) -> None:
    sim.keepalive_delay = 0.1
    text = raw.post("/chat/completions", json=chat_body(stream=True)).text
    assert text.startswith(": keep-alive\n\n")
    assert text.endswith("data: [DONE]\n\n")
    # The SDK skips SSE comments.
    stream = oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES, stream=True)
    assert list(stream)[-1].usage.completion_tokens == 20


def test_non_streaming_keepalives(sim: Simulator, raw: httpx.Client, oai: openai.OpenAI) -> None:
    sim.keepalive_delay = 0.1
    reply = raw.post("/chat/completions", json=chat_body())
    assert reply.status_code == 200
    assert reply.text.startswith("\n")
    assert json.loads(reply.text)["usage"]["total_tokens"] == 26
    assert (
        oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES).usage.total_tokens
        == 26
    )


def test_async_client_in_process() -> None:
    async def scenario() -> None:
        sim = Simulator(
            [SimAccount("alice", KEY, {"USD": (Decimal(1), Decimal(0))})],
            prices=PRICES,
            clock=lambda: OFF_PEAK,
        )
        url = await sim.start()
        try:
            async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0) as c:
                reply = await c.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
                stream = await c.chat.completions.create(
                    model="deepseek-flash", messages=MESSAGES, stream=True
                )
                chunks = [chunk async for chunk in stream]
        finally:
            await sim.stop()
        assert reply.usage.prompt_tokens == 6
        assert chunks[-1].usage.prompt_cache_hit_tokens == 6
        assert sim.stats()["alice"].completions == {200: 2}

    asyncio.run(scenario())


# ---- FIM and Anthropic ----------------------------------------------------------------------


def test_fim_completion(server: SimulatorThread) -> None:
    with openai.OpenAI(base_url=f"{server.base_url}/beta", api_key=KEY, max_retries=0) as c:
        reply = c.completions.create(
            model="deepseek-flash", prompt="def add(a, b):", suffix="    return c", max_tokens=5
        )
        chunks = list(
            c.completions.create(model="deepseek-flash", prompt="def add(a, b):", stream=True)
        )
    assert reply.object == "text_completion"
    assert len(reply.choices[0].text.split()) == 5 and reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (7, 5)
    assert chunks[-1].usage.completion_tokens == 20
    assert "".join(ch.choices[0].text for ch in chunks).count(" ") == 19


def test_anthropic_messages(server: SimulatorThread, sim: Simulator) -> None:
    with anthropic.Anthropic(
        base_url=f"{server.base_url}/anthropic", api_key=KEY, max_retries=0
    ) as c:
        first = c.messages.create(model="deepseek-flash", max_tokens=100, messages=MESSAGES)
        again = c.messages.create(model="deepseek-flash", max_tokens=100, messages=MESSAGES)
    assert first.type == "message" and first.stop_reason == "end_turn"
    assert [b.type for b in first.content] == ["text"]
    assert (first.usage.input_tokens, first.usage.cache_read_input_tokens) == (6, 0)
    # Anthropic semantics: input_tokens leaves out what was read from the cache.
    assert (again.usage.input_tokens, again.usage.cache_read_input_tokens) == (0, 6)
    assert again.usage.output_tokens == 20
    assert sim.stats()["alice"].completions == {200: 2}


def test_anthropic_stream_events(server: SimulatorThread) -> None:
    with anthropic.Anthropic(
        base_url=f"{server.base_url}/anthropic", api_key=KEY, max_retries=0
    ) as c:
        events = list(
            c.messages.create(
                model="deepseek-v4-pro",
                max_tokens=2048,
                messages=MESSAGES,
                thinking={"type": "enabled", "budget_tokens": 1024},
                stream=True,
            )
        )
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens == 6
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas == ["thinking_delta"] * 4 + ["signature_delta"] + ["text_delta"] * 4
    assert events[-2].usage.output_tokens == 52
    assert events[-2].delta.stop_reason == "end_turn"


def test_anthropic_auth_uses_x_api_key(server: SimulatorThread) -> None:
    with (
        anthropic.Anthropic(
            base_url=f"{server.base_url}/anthropic", api_key="sk-ant-wrong-9999", max_retries=0
        ) as c,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        c.messages.create(model="deepseek-flash", max_tokens=10, messages=MESSAGES)
    assert "****9999" in str(caught.value) and "sk-ant-wrong" not in str(caught.value)


# ---- charging -------------------------------------------------------------------------------


def test_charging_takes_granted_first(sim: Simulator, raw: httpx.Client) -> None:
    raw.post("/chat/completions", json=chat_body())
    charged = cost("deepseek-flash", "CNY", Usage(0, 6, 20, 0), OFF_PEAK)
    assert sim.account("alice").balances["CNY"] == (Decimal(10) - charged, Decimal(100))
    record = sim.requests()[-1]
    assert (record.cost, record.currency, record.status) == (charged, "CNY", 200)

    # Granted smaller than the cost: the rest comes from the topped-up balance.
    sim.set_balance("alice", "CNY", "0.00001", "1")
    raw.post("/chat/completions", json=chat_body())
    charged = cost("deepseek-flash", "CNY", Usage(6, 0, 20, 0), OFF_PEAK)
    granted, topped_up = sim.account("alice").balances["CNY"]
    assert granted == 0 and topped_up == Decimal(1) - (charged - Decimal("0.00001"))


def test_charged_in_the_first_currency_at_the_clock_time(
    sim: Simulator, sim_clock: Clock, server: SimulatorThread
) -> None:
    headers = {"Authorization": f"Bearer {BOB_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers) as bob:
        bob.post("/chat/completions", json=chat_body(messages=[{"role": "user", "content": "a"}]))
        sim_clock.now = PEAK
        bob.post("/chat/completions", json=chat_body(messages=[{"role": "user", "content": "b"}]))
    off_peak, peak = sim.requests()[-2:]
    assert off_peak.currency == peak.currency == "USD"
    assert peak.cost == 2 * off_peak.cost  # the sheet's off-peak is half price
    assert sim.account("bob").balances["CNY"] == (0, 5)
    assert peak.time == PEAK


def test_402_after_draining_and_top_up(
    sim: Simulator, raw: httpx.Client, oai: openai.OpenAI
) -> None:
    sim.set_balance("alice", "CNY", "0", "0.00005")  # less than one request costs
    assert raw.post("/chat/completions", json=chat_body()).status_code == 200
    # Clamped at zero, never negative.
    assert sim.account("alice").balances["CNY"] == (0, 0)
    reply = raw.post("/chat/completions", json=chat_body())
    assert reply.status_code == 402
    assert error_of(reply)["message"] == "Insufficient Balance"
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert caught.value.status_code == 402
    balance = raw.get("/user/balance").json()
    assert balance["is_available"] is False
    assert balance["balance_infos"][0]["total_balance"] == "0.00"

    sim.top_up("alice", "CNY", "2")
    assert raw.post("/chat/completions", json=chat_body()).status_code == 200
    assert sim.stats()["alice"].completions == {200: 2, 402: 2}


def test_concurrency_limit_gives_429(sim: Simulator, server: SimulatorThread) -> None:
    sim.max_concurrency, sim.keepalive_delay = 1, 0.3
    url, headers = f"{server.base_url}/chat/completions", {"Authorization": f"Bearer {KEY}"}
    first: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: first.append(httpx.post(url, json=chat_body(), headers=headers))
    )
    worker.start()
    deadline = time.monotonic() + 2
    while not any(r.status is None for r in sim.requests()) and time.monotonic() < deadline:
        time.sleep(0.005)
    second = httpx.post(url, json=chat_body(), headers=headers)
    worker.join()
    assert second.status_code == 429 and first[0].status_code == 200


# ---- faults ---------------------------------------------------------------------------------


def test_status_fault_for_the_next_n_requests(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("status", status=503, times=2, path="/chat/completions")
    # /v1/chat/completions matches a fault on /chat/completions; other paths are untouched.
    assert raw.get("/user/balance").status_code == 200
    first = raw.post("/v1/chat/completions", json=chat_body())
    assert first.status_code == 503
    assert error_of(first) == {
        "message": "Server Overloaded",
        "type": "server_error",
        "param": None,
        "code": "invalid_request_error",
    }
    assert raw.post("/chat/completions", json=chat_body()).status_code == 503
    assert raw.post("/chat/completions", json=chat_body()).status_code == 200
    assert sim.faults == []
    # Replacing faults come before authentication: even an unknown key sees them.
    sim.add_fault(Fault(FaultKind.STATUS, status=402, error_type="insufficient_balance"))
    reply = raw.get("/user/balance", headers={"Authorization": "Bearer sk-unknown-1234"})
    assert reply.status_code == 402 and error_of(reply)["type"] == "insufficient_balance"


def test_delay_fault_holds_headers(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("delay", seconds=0.5)
    with pytest.raises(httpx.ReadTimeout):
        raw.get("/user/balance", timeout=0.1)
    assert raw.get("/user/balance", timeout=0.1).status_code == 200


def test_html_502_fault(sim: Simulator, oai: openai.OpenAI) -> None:
    sim.add_fault("html")
    with pytest.raises(openai.APIStatusError) as caught:
        oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["Content-Type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in caught.value.response.text


def test_non_json_and_chosen_body_faults(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("non_json", path="/user/balance")
    reply = raw.get("/user/balance")
    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.content)
    malformed = {
        "is_available": "yes",
        "balance_infos": [{"currency": "CNY", "total_balance": None}],
    }
    sim.add_fault("body", path="/user/balance", body=malformed)
    assert raw.get("/user/balance").json() == malformed
    sim.add_fault("body", path="/user/balance", body=b"\xff\xfe\x00", status=200)
    assert raw.get("/user/balance").content == b"\xff\xfe\x00"
    assert raw.get("/user/balance").json()["is_available"] is True


def test_drop_fault(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        raw.get("/user/balance")
    assert sim.requests()[-1].status == 0
    assert raw.get("/user/balance").status_code == 200


def test_reset_mid_body(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("reset", path="/chat/completions")
    with pytest.raises(httpx.RemoteProtocolError):
        raw.post("/chat/completions", json=chat_body())
    # Inference happened: the upstream charged it, even though the client saw no usage.
    assert sim.stats()["alice"].completions == {200: 1}
    assert sim.stats()["alice"].usage == Usage(0, 6, 20, 0)


def test_reset_mid_stream(sim: Simulator, oai: openai.OpenAI) -> None:
    sim.add_fault("reset", after_chunks=3)
    received = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in oai.chat.completions.create(
            model="deepseek-flash", messages=MESSAGES, stream=True
        ):
            received.append(chunk)
    assert len(received) == 3
    assert sim.requests()[-1].fault == "reset"


def test_stall_between_chunks(sim: Simulator, raw: httpx.Client) -> None:
    sim.add_fault("stall", seconds=1.0, after_chunks=2)
    events = []
    body = chat_body(stream=True)
    with (
        pytest.raises(httpx.ReadTimeout),
        raw.stream("POST", "/chat/completions", json=body, timeout=0.2) as reply,
    ):
        events.extend(line for line in reply.iter_lines() if line.startswith("data: "))
    assert len(events) == 2
    # The client gave up mid-stream: logged as 499, yet charged (inference had happened).
    deadline = time.monotonic() + 2
    while sim.requests()[-1].status != 499 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sim.requests()[-1].status == 499
    assert sim.stats()["alice"].completions == {499: 1}
    assert sim.stats()["alice"].usage == Usage(0, 6, 20, 0)
    sim.add_fault("stall", seconds=0.1)
    started = time.monotonic()
    reply = raw.post("/chat/completions", json=chat_body())  # stalls half-way through the body
    assert time.monotonic() - started >= 0.1 and reply.json()["usage"]["total_tokens"] == 26


def test_no_usage_fault(sim: Simulator, oai: openai.OpenAI) -> None:
    sim.add_fault("no_usage", times=2)
    assert oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES).usage is None
    stream = oai.chat.completions.create(
        model="deepseek-flash",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert all(chunk.usage is None for chunk in stream)
    # Still charged upstream: a proxy that saw no usage must not be trusted over this.
    assert sim.stats()["alice"].usage.output == 40


def test_huge_fault(sim: Simulator, raw: httpx.Client, oai: openai.OpenAI) -> None:
    sim.add_fault("huge", size=200_000, path="/user/balance")
    reply = raw.get("/user/balance")
    assert len(reply.content) == 200_000 and reply.json()["is_available"] is True
    sim.add_fault("huge", size=100_000)
    assert (
        oai.chat.completions.create(model="deepseek-flash", messages=MESSAGES).usage.total_tokens
        == 26
    )
    sim.add_fault("huge", size=50_000)
    text = raw.post("/chat/completions", json=chat_body(stream=True)).text
    assert len(text.split("\n\n")[0]) == len("data: ") + 50_000


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("no_such_fault")
    with pytest.raises(ValueError):
        Fault(FaultKind.STATUS, times=0)
    with pytest.raises(ValueError):
        Fault.from_json({"kind": "status", "colour": "red"})


# ---- request log and stats ------------------------------------------------------------------


def test_request_log_and_stats(sim: Simulator, raw: httpx.Client) -> None:
    raw.post("/chat/completions", json=chat_body())
    raw.post("/chat/completions", json=chat_body(stream=True))
    raw.post("/chat/completions", json=chat_body(model="nope"))
    raw.get("/user/balance")
    raw.get("/user/balance", headers={"Authorization": "Bearer sk-unknown-1234"})
    log = sim.requests()
    assert [(r.endpoint, r.status, r.account) for r in log] == [
        ("chat", 200, "alice"),
        ("chat", 200, "alice"),
        ("chat", 400, "alice"),
        ("balance", 200, "alice"),
        ("balance", 401, None),
    ]
    stats = sim.stats()["alice"]
    assert stats.completions == {200: 2, 400: 1} and stats.completions_ok == 2
    assert stats.other_requests == {200: 1}
    assert stats.usage == Usage(6, 6, 40, 0)
    assert stats.cost == sum(r.cost for r in log if r.cost is not None)
    sim.clear_requests()
    assert sim.requests() == [] and sim.stats() == {}


# ---- control over HTTP ----------------------------------------------------------------------


def test_control_endpoints(server: SimulatorThread, sim: Simulator) -> None:
    ctl = httpx.Client(base_url=f"{server.base_url}/_simulator")
    carol = {"Authorization": "Bearer sk-sim-carol"}
    api = httpx.Client(base_url=server.base_url, headers=carol)
    with ctl, api:
        account = {
            "name": "carol",
            "api_key": "sk-sim-carol",
            "balances": {"USD": {"granted": "1", "topped_up": "2"}},
        }
        assert ctl.post("/accounts", json=account).status_code == 201
        assert api.get("/user/balance").json()["balance_infos"][0]["total_balance"] == "3.00"
        assert (
            ctl.post("/accounts/carol/top_up", json={"currency": "USD", "amount": "5"}).status_code
            == 200
        )
        assert api.get("/user/balance").json()["balance_infos"][0]["total_balance"] == "8.00"
        ctl.put(
            "/accounts/carol/balance", json={"currency": "USD", "granted": "0", "topped_up": "0"}
        )
        assert api.post("/chat/completions", json=chat_body()).status_code == 402
        ctl.put(
            "/accounts/carol/balance", json={"currency": "USD", "granted": "1", "topped_up": "0"}
        )

        fault = {"kind": "status", "status": 429, "path": "/chat/completions"}
        assert ctl.post("/faults", json=fault).status_code == 201
        assert ctl.get("/faults").json()[0]["status"] == 429
        assert api.post("/chat/completions", json=chat_body()).status_code == 429
        assert ctl.get("/faults").json() == []
        raw_body = {
            "kind": "body",
            "path": "/user/balance",
            "body_base64": base64.b64encode(b"<oops>").decode(),
        }
        ctl.post("/faults", json=raw_body)
        assert api.get("/user/balance").content == b"<oops>"
        ctl.post("/faults", json={"kind": "status", "status": 500, "times": None})
        ctl.delete("/faults")
        assert ctl.get("/faults").json() == []

        config = ctl.patch("/config", json={"completion_tokens": 3, "time": PEAK}).json()
        assert config["completion_tokens"] == 3
        assert (
            api.post("/chat/completions", json=chat_body()).json()["usage"]["completion_tokens"]
            == 3
        )
        assert sim.requests()[-1].time == PEAK
        assert ctl.patch("/config", json={"colour": "red"}).status_code == 400
        assert ctl.patch("/config", json={"stream_chunks": "many"}).status_code == 400

        stats = ctl.get("/stats").json()["carol"]
        assert stats["completions"] == {"200": 1, "402": 1, "429": 1}
        assert stats["usage"]["output"] == 3
        log = ctl.get("/requests").json()
        assert log[-1]["account"] == "carol" and log[-1]["usage"]["output"] == 3
        state = ctl.get("/state").json()
        assert {a["name"] for a in state["accounts"]} == {"alice", "bob", "carol"}
        assert "sk-sim-carol" not in json.dumps(state)

        assert ctl.delete("/accounts/carol").status_code == 200
        assert api.get("/user/balance").status_code == 401
        assert ctl.delete("/accounts/carol").status_code == 404
        assert (
            ctl.post("/accounts/carol/top_up", json={"currency": "USD", "amount": "1"}).status_code
            == 404
        )
        assert ctl.post("/faults", content=b"{").status_code == 400
        assert ctl.delete("/requests").status_code == 200
        assert ctl.get("/requests").json() == []


def test_control_endpoints_can_be_disabled() -> None:
    sim = Simulator([], prices=PRICES, control=False)
    with SimulatorThread(sim) as running:
        assert httpx.get(f"{running.base_url}/_simulator/state").status_code == 404


def test_duplicate_api_key_is_refused(sim: Simulator) -> None:
    with pytest.raises(ValueError):
        sim.add_account(SimAccount("mallory", KEY, {}))


# ---- running it -----------------------------------------------------------------------------


def test_simulator_thread_lifecycle(sim: Simulator) -> None:
    running = SimulatorThread(sim)
    with pytest.raises(RuntimeError):
        _ = running.base_url
    url = running.start()
    with pytest.raises(RuntimeError):
        running.start()
    assert (
        httpx.get(f"{url}/user/balance", headers={"Authorization": f"Bearer {KEY}"}).status_code
        == 200
    )
    running.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/user/balance")
    running.stop()  # idempotent


def test_demo_accounts() -> None:
    accounts = demo_accounts()
    assert all(a.api_key == f"sk-sim-{a.name}" for a in accounts)
    assert any(not a.is_available for a in accounts)
    assert {a.currency for a in accounts} == {"CNY", "USD"}


def test_standalone_prints_url_and_names_but_no_keys() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from exporter.simulator import main; sys.exit(main('127.0.0.1:0'))"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=root
    ) as proc:
        assert proc.stdout is not None
        try:
            first = proc.stdout.readline()
            url = first.rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:")
            headers = {"Authorization": "Bearer sk-sim-demo-cny"}
            reply = httpx.get(f"{url}/user/balance", headers=headers)
            assert reply.json()["balance_infos"][0]["total_balance"] == "110.00"
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean stop, as from a service manager
        proc.wait(timeout=5)
        out = proc.stdout.read()
    assert proc.returncode == 0
    assert "demo-cny" in out and "sk-sim-demo" not in first + out


def test_main_rejects_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert main("nonsense") == 2
    assert capsys.readouterr().err.startswith(
        'deepseek-exporter: --listen-address: "nonsense" is not host:port'
    )

"""The simulator's newer billing surface, over real loopback HTTP with the official SDKs:
the Responses API (both usage nestings), web Search / Fetch billed per request, and server-side
tool calls charged per call, reported or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from exporter.proxy.pricing import PriceTable
from exporter.proxy.usage import Usage
from exporter.simulator import SimAccount, Simulator, SimulatorThread

PRICES = PriceTable.load()
# Tuesday 2026-11-03, 10:00 in Beijing: peak, and after per-request billing began (2026-11-01).
PEAK = datetime(2026, 11, 3, 2, tzinfo=UTC).timestamp()
KEY = "sk-sim-carol-5e1d"
PROMPT = "hello world, how are you"  # 24 characters: 6 prompt tokens
SEARCH = Decimal("0.005")  # CNY per request or tool call


@pytest.fixture
def sim() -> Simulator:
    accounts = [SimAccount("carol", KEY, {"CNY": (Decimal("1"), Decimal("50"))})]
    return Simulator(accounts, prices=PRICES, clock=lambda: PEAK)


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


def priced(model: str, usage: Usage) -> Decimal:
    cost = PRICES.cost(model, "CNY", usage, datetime.fromtimestamp(PEAK, tz=UTC))
    assert cost is not None
    return cost


def balance(sim: Simulator) -> Decimal:
    return sim.account("carol").total("CNY")


# --- Responses API ---------------------------------------------------------------------------


def test_responses_usage_counts_cached_tokens_inside_input(
    oai: openai.OpenAI, sim: Simulator
) -> None:
    first = oai.responses.create(model="deepseek-flash", input=PROMPT)
    again = oai.responses.create(model="deepseek-flash", input=PROMPT, reasoning={"effort": "high"})
    assert first.output_text.startswith("The simulated model")
    assert first.usage is not None and again.usage is not None
    assert (first.usage.input_tokens, first.usage.input_tokens_details.cached_tokens) == (6, 0)
    # The same prompt again: all of it cached, still counted in input_tokens (OpenAI's shape).
    assert (again.usage.input_tokens, again.usage.input_tokens_details.cached_tokens) == (6, 6)
    assert again.usage.output_tokens == 20 + 32  # reasoning is a part of the output
    assert again.usage.output_tokens_details.reasoning_tokens == 32
    assert [item.type for item in again.output] == ["reasoning", "message"]
    stats = sim.stats()["carol"]
    assert stats.completions == {200: 2}
    assert stats.usage == Usage(6, 6, 72, 32)
    assert stats.cost == priced("deepseek-flash", Usage(0, 6, 20)) + priced(
        "deepseek-flash", Usage(6, 0, 52, 32)
    )


def test_responses_stream_has_usage_only_in_response_completed(raw: httpx.Client) -> None:
    body = {"model": "deepseek-flash", "input": [{"role": "user", "content": PROMPT}]}
    reply = raw.post("/v1/responses", json={**body, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in reply.text.split("\n")
        if line.startswith("data: ")
    ]
    names = [line[len("event: ") :] for line in reply.text.split("\n") if line.startswith("event:")]
    assert names == [e["type"] for e in events]  # every event also named in an event: line
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert all("[DONE]" not in line for line in reply.text.split("\n"))
    assert [e["response"]["usage"] for e in events if "response" in e][:-1] == [None, None]
    usage = events[-1]["response"]["usage"]
    assert usage == {
        "input_tokens": 6,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 26,
    }
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == events[-1]["response"]["output"][-1]["content"][0]["text"]


def test_responses_stream_through_the_sdk(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="deepseek-v4-pro", input=PROMPT) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.total_tokens == 26


def test_responses_validation(raw: httpx.Client) -> None:
    for body, status in [
        ({"model": "deepseek-flash"}, 422),  # no input
        ({"model": "deepseek-flash", "input": 3}, 422),
        ({"model": "deepseek-chat", "input": "hi"}, 400),  # retired
        ({"model": "deepseek-flash", "input": "hi", "max_output_tokens": 0}, 422),
    ]:
        reply = raw.post("/responses", json=body)
        assert reply.status_code == status, body
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_responses_max_output_tokens_makes_an_incomplete_reply(raw: httpx.Client) -> None:
    reply = raw.post(
        "/responses", json={"model": "deepseek-flash", "input": "hi", "max_output_tokens": 5}
    ).json()
    assert reply["status"] == "incomplete"
    assert reply["usage"]["output_tokens"] == 5


# --- per-request charges ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "field"), [("/search", "query"), ("/v1/fetch", "url")])
def test_direct_search_and_fetch_are_charged_per_request(
    raw: httpx.Client, sim: Simulator, path: str, field: str
) -> None:
    before = balance(sim)
    for _ in range(3):
        assert raw.post(path, json={field: "deepseek"}).status_code == 200
    assert raw.post(path, json={}).status_code == 422  # invalid: not charged
    stats = sim.stats()["carol"]
    assert stats.per_request == {200: 3, 422: 1}
    assert stats.completions == {}
    assert stats.cost == 3 * SEARCH
    assert before - balance(sim) == 3 * SEARCH


def test_per_request_call_on_an_empty_account_is_402(raw: httpx.Client, sim: Simulator) -> None:
    sim.set_balance("carol", "CNY", 0, 0)
    reply = raw.post("/search", json={"query": "x"})
    assert reply.status_code == 402
    assert sim.stats()["carol"].cost == 0


def test_web_search_tool_calls_are_charged_and_reported(oai: openai.OpenAI, sim: Simulator) -> None:
    reply = oai.responses.create(
        model="deepseek-flash",
        input=PROMPT,
        tools=[{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {}}],
    )
    assert [item.type for item in reply.output] == ["web_search_call", "message"]
    stats = sim.stats()["carol"]
    assert stats.tool_calls == {"web_search": 1}
    assert stats.cost == priced("deepseek-flash", Usage(0, 6, 20)) + SEARCH


def test_anthropic_server_tool_use_is_reported(server: SimulatorThread, sim: Simulator) -> None:
    client = anthropic.Anthropic(base_url=f"{server.base_url}/anthropic", api_key=KEY)
    tools: Any = [{"type": "web_fetch_20250910", "name": "web_fetch"}]
    message = client.messages.create(
        model="deepseek-flash",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        tools=tools,
    )
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_fetch_requests == 1
    with client.messages.stream(
        model="deepseek-flash",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
        tools=tools,
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_fetch_requests == 1
    assert sim.stats()["carol"].tool_calls == {"web_fetch": 2}


def test_unreported_tool_calls_are_still_charged(oai: openai.OpenAI, sim: Simulator) -> None:
    """What a proxy cannot see: the bill has the call, the reply does not."""
    sim.report_tool_calls = False
    before = balance(sim)
    reply = oai.responses.create(
        model="deepseek-flash", input=PROMPT, tools=[{"type": "web_search"}]
    )
    assert [item.type for item in reply.output] == ["message"]
    stats = sim.stats()["carol"]
    assert stats.tool_calls == {"web_search": 1}
    assert before - balance(sim) == stats.cost == priced("deepseek-flash", Usage(0, 6, 20)) + SEARCH


def test_no_tool_charge_before_tool_billing_began(server: SimulatorThread, sim: Simulator) -> None:
    """Tool calls are billed from 2026-11-01 00:00 Beijing time."""
    sim.set_clock(lambda: datetime(2026, 10, 31, 15, 59, tzinfo=UTC).timestamp())
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        client.responses.create(
            model="deepseek-flash", input=PROMPT, tools=[{"type": "web_search"}]
        )
    stats = sim.stats()["carol"]
    assert stats.tool_calls == {"web_search": 1}
    at = datetime(2026, 10, 31, 15, 59, tzinfo=UTC)
    assert stats.cost == PRICES.cost("deepseek-flash", "CNY", Usage(0, 6, 20), at)

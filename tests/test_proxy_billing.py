"""The whole bill through the proxy: a mixed workload of chat completions, Responses API calls
(streamed and not, with cached and reasoning tokens), web Search and Fetch calls and reported
tool calls is metered to what the simulator charged, per account and currency, at peak, off-peak
and on a Chinese statutory holiday. Real loopback HTTP, the official SDKs as clients."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import openai
import pytest

from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop, FakeClock
from tests.harness import (
    PROD_KEY,
    USD_KEY,
    RunningExporter,
    exporter_config,
    running_exporter,
    running_simulator,
)

MOMENTS = {
    "peak": datetime(2026, 11, 24, 2, tzinfo=UTC),  # Tuesday 10:00 in Beijing
    "off-peak": datetime(2026, 11, 24, 5, tzinfo=UTC),  # Tuesday 13:00, lunch
    "holiday": datetime(2026, 10, 1, 2, tzinfo=UTC),  # National Day, 10:00, a Thursday
}
PROMPT = "Summarise what the balance endpoint returns, in two sentences. " * 6


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


@pytest.fixture
def proxy(sim: Simulator, background_loop: BackgroundLoop) -> Iterator[RunningExporter]:
    clock = FakeClock(MOMENTS["peak"].timestamp())
    sim.set_clock(clock)
    with running_exporter(exporter_config(sim.base_url), background_loop, clock=clock) as running:
        yield running


def mixed_workload(proxy_url: str, key: str) -> None:
    """Every billed shape once or twice, through the proxy."""
    client = openai.OpenAI(base_url=proxy_url, api_key=key, max_retries=0, timeout=10)
    messages = [{"role": "user", "content": PROMPT}]
    client.chat.completions.create(model="deepseek-flash", messages=messages)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="deepseek-v4-pro",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.responses.create(model="deepseek-flash", input=PROMPT)
    client.responses.create(model="deepseek-flash", input=PROMPT, reasoning={"effort": "high"})
    with client.responses.stream(model="deepseek-v4-pro", input=PROMPT) as events:
        assert events.get_final_response().output_text
    client.responses.create(model="deepseek-flash", input=PROMPT, tools=[{"type": "web_search"}])
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=proxy_url, headers=headers, timeout=10) as raw:
        assert raw.post("/search", json={"query": "deepseek pricing"}).status_code == 200
        assert raw.post("/v1/fetch", json={"url": "https://example.com"}).status_code == 200
        assert raw.post("/search", json={}).status_code == 422  # refused: never billed


def metered(proxy: RunningExporter, account: str, currency: str) -> float:
    proxy.settle()
    total = 0.0
    for (name, labels), value in proxy.samples().items():
        found = dict(labels)
        if name == "deepseek_estimated_cost_total" and found["account"] == account:
            assert found["currency"] == currency
            total += value
    return total


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_mixed_workload_is_metered_to_the_simulator_charge(
    proxy: RunningExporter, sim: Simulator, moment: str
) -> None:
    proxy.clock.now = MOMENTS[moment].timestamp()
    for key in (PROD_KEY, USD_KEY):
        mixed_workload(proxy.proxy_url, key)
    stats = sim.stats()
    # prod pays in CNY: search and fetch are priced; usd pays in USD, where the page gives no
    # per-request price, so neither the simulator nor the proxy counts one.
    assert stats["prod"].tool_calls == stats["usd"].tool_calls == {"web_search": 1}
    assert abs(metered(proxy, "prod", "CNY") - float(stats["prod"].cost)) < 0.01
    assert abs(metered(proxy, "usd", "USD") - float(stats["usd"].cost)) < 0.01
    # Not merely within a cent: the same figures, as the same table priced both.
    assert metered(proxy, "prod", "CNY") == pytest.approx(float(stats["prod"].cost), rel=1e-9)
    assert metered(proxy, "usd", "USD") == pytest.approx(float(stats["usd"].cost), rel=1e-9)


def test_holiday_costs_half_of_the_workday_peak(proxy: RunningExporter, sim: Simulator) -> None:
    bills = {}
    for moment in ("holiday", "peak"):  # prompts of one length, neither a cache hit
        prompt = f"{moment[0]} {PROMPT}"
        proxy.clock.now = MOMENTS[moment].timestamp()
        before = metered(proxy, "prod", "CNY")
        client = openai.OpenAI(base_url=proxy.proxy_url, api_key=PROD_KEY, max_retries=0)
        client.responses.create(model="deepseek-v4-pro", input=prompt)
        bills[moment] = metered(proxy, "prod", "CNY") - before
    assert bills["holiday"] == pytest.approx(bills["peak"] / 2)


def test_per_request_items_are_labelled_and_counted(proxy: RunningExporter) -> None:
    mixed_workload(proxy.proxy_url, PROD_KEY)
    value = proxy.registry_value
    search = {"account": "prod", "model": "web-search"}
    assert value("deepseek_requests_total", **search, code="200") == 1
    assert value("deepseek_requests_total", **search, code="422") == 1
    assert value("deepseek_requests_total", account="prod", model="web-fetch", code="200") == 1
    # Direct search, one tool call: both priced under web-search.
    assert value("deepseek_estimated_cost_total", **search, currency="CNY") == pytest.approx(0.01)
    assert value(
        "deepseek_estimated_cost_total", account="prod", model="web-fetch", currency="CNY"
    ) == pytest.approx(0.005)
    tool = {"account": "prod", "model": "deepseek-flash", "tool": "web-search"}
    assert value("deepseek_tool_calls_total", **tool) == 1
    # Per-request calls carry no tokens and are not "usage missing".
    assert value("deepseek_tokens_total", **search, token_type="output") is None
    assert value("deepseek_usage_missing_total", **search) is None


def test_responses_tokens_are_split_as_billed(proxy: RunningExporter, sim: Simulator) -> None:
    client = openai.OpenAI(base_url=proxy.proxy_url, api_key=PROD_KEY, max_retries=0)
    client.responses.create(model="deepseek-flash", input=PROMPT)
    again = client.responses.create(
        model="deepseek-flash", input=PROMPT, reasoning={"effort": "high"}, stream=False
    )
    assert again.usage is not None
    cached = again.usage.input_tokens_details.cached_tokens
    assert cached == again.usage.input_tokens > 0
    value = proxy.registry_value
    labels = {"account": "prod", "model": "deepseek-flash"}
    charged = sim.stats()["prod"].usage
    assert value("deepseek_tokens_total", **labels, token_type="input_cache_hit") == cached
    assert value("deepseek_tokens_total", **labels, token_type="input_cache_hit") == (
        charged.input_cache_hit
    )
    assert value("deepseek_tokens_total", **labels, token_type="input_cache_miss") == (
        charged.input_cache_miss
    )
    assert value("deepseek_reasoning_tokens_total", **labels) == charged.reasoning == 32
    assert Decimal(str(value("deepseek_estimated_cost_total", **labels, currency="CNY"))) == (
        pytest.approx(sim.stats()["prod"].cost)
    )


def test_unreported_tool_calls_are_what_the_proxy_cannot_see(
    proxy: RunningExporter, sim: Simulator
) -> None:
    """A tool call the reply does not report is billed but not metered: the gap that the
    unmetered-spend comparison shows."""
    sim.report_tool_calls = False
    client = openai.OpenAI(base_url=proxy.proxy_url, api_key=PROD_KEY, max_retries=0)
    client.responses.create(model="deepseek-flash", input=PROMPT, tools=[{"type": "web_search"}])
    gap = float(sim.stats()["prod"].cost) - metered(proxy, "prod", "CNY")
    assert gap == pytest.approx(0.005)

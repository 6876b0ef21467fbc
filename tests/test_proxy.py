"""The metering proxy with real clients (openai SDK, curl, raw sockets) against the simulator."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvloop

from exporter.config import AccountConfig, ProxyClientConfig, Secret
from exporter.proxy.metrics import PREINITIALISED_CODES
from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop, FakeClock, require_binary
from tests.harness import (
    PROD_KEY,
    USD_KEY,
    RunningExporter,
    exporter_config,
    running_exporter,
    running_simulator,
    wait_until,
)

# A Tuesday: 02:00 UTC is peak, 05:00 UTC off-peak (../shared/deepseek-api.md).
PEAK = datetime(2026, 11, 24, 2, 0, tzinfo=UTC).timestamp()
OFF_PEAK = datetime(2026, 11, 24, 5, 0, tzinfo=UTC).timestamp()
# The sheet's table, per 1M tokens: (cache hit, cache miss, output).
SHEET_PRICES = {
    ("deepseek-flash", "USD", "peak"): ("0.006", "0.30", "1.20"),
    ("deepseek-flash", "USD", "off"): ("0.003", "0.15", "0.60"),
    ("deepseek-v4-pro", "CNY", "peak"): ("0.30", "9", "27"),
    ("deepseek-v4-pro", "CNY", "off"): ("0.15", "4.5", "13.5"),
}
MESSAGES = [{"role": "user", "content": "How much is left on my account? " * 8}]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


@pytest.fixture
def proxy(sim: Simulator, background_loop: BackgroundLoop) -> Iterator[RunningExporter]:
    clock = FakeClock(PEAK)
    sim.set_clock(clock)
    config = exporter_config(sim.base_url)
    config = replace(config, proxy=replace(config.proxy, timeout=1.0))
    with running_exporter(config, background_loop, clock=clock) as running:
        yield running


def client(proxy: RunningExporter, key: str = PROD_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.proxy_url, api_key=key, max_retries=0, timeout=10)


def expected_cost(model: str, currency: str, period: str, hit: int, miss: int, out: int) -> float:
    p_hit, p_miss, p_out = (Decimal(p) for p in SHEET_PRICES[(model, currency, period)])
    return float((hit * p_hit + miss * p_miss + out * p_out) / 1_000_000)


def test_sync_completion_is_counted_with_tokens_and_cost(
    proxy: RunningExporter, sim: Simulator
) -> None:
    # The usd account pays in USD: flash at the peak price.
    reply = client(proxy, USD_KEY).chat.completions.create(
        model="deepseek-flash", messages=MESSAGES
    )
    usage = reply.usage
    assert usage is not None and reply.choices[0].message.content
    v = proxy.registry_value
    labels = {"account": "usd", "model": "deepseek-flash"}
    assert v("deepseek_requests_total", **labels, code="200") == 1
    hit, miss = usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens
    assert v("deepseek_tokens_total", **labels, token_type="input_cache_hit") == hit
    assert v("deepseek_tokens_total", **labels, token_type="input_cache_miss") == miss
    assert v("deepseek_tokens_total", **labels, token_type="output") == usage.completion_tokens
    cost = v("deepseek_estimated_cost_total", **labels, currency="USD")
    assert cost == pytest.approx(
        expected_cost("deepseek-flash", "USD", "peak", hit, miss, usage.completion_tokens)
    )
    # What the proxy estimated is what the (simulated) upstream charged.
    assert cost == pytest.approx(float(sim.stats()["usd"].cost))
    assert v("deepseek_request_duration_seconds_count", **labels) == 1
    assert v("deepseek_requests_in_flight", account="usd") == 0


def test_cost_at_off_peak_time(proxy: RunningExporter, sim: Simulator) -> None:
    proxy.clock.now = OFF_PEAK
    reply = client(proxy).chat.completions.create(model="deepseek-v4-pro", messages=MESSAGES)
    usage = reply.usage
    assert usage is not None
    cost = proxy.registry_value(
        "deepseek_estimated_cost_total", account="prod", model="deepseek-v4-pro", currency="CNY"
    )
    assert cost == pytest.approx(
        expected_cost(
            "deepseek-v4-pro",
            "CNY",
            "off",
            usage.prompt_cache_hit_tokens,
            usage.prompt_cache_miss_tokens,
            usage.completion_tokens,
        )
    )


def test_streaming_with_reasoning_tokens(proxy: RunningExporter, sim: Simulator) -> None:
    stream = client(proxy).chat.completions.create(
        model="deepseek-v4-pro",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking": {"type": "enabled"}},
    )
    chunks = list(stream)
    usage = next(c.usage for c in chunks if c.usage)
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0
    v = proxy.registry_value
    labels = {"account": "prod", "model": "deepseek-v4-pro"}
    assert v("deepseek_reasoning_tokens_total", **labels) == reasoning
    assert v("deepseek_tokens_total", **labels, token_type="output") == usage.completion_tokens
    assert v("deepseek_time_to_first_token_seconds_count", **labels) == 1
    assert v("deepseek_usage_missing_total", **labels) is None


def test_async_client(proxy: RunningExporter) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=proxy.proxy_url, api_key=PROD_KEY, max_retries=0
        ) as c:
            replies = await asyncio.gather(
                *(
                    c.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
                    for _ in range(10)
                )
            )
            return [r.choices[0].message.content or "" for r in replies]

    assert all(asyncio.run(run()))
    assert (
        proxy.registry_value(
            "deepseek_requests_total", account="prod", model="deepseek-flash", code="200"
        )
        == 10
    )


def test_stream_arrives_chunk_by_chunk(proxy: RunningExporter, sim: Simulator) -> None:
    # The upstream stalls 0.8 s after its first event: the client must already hold it.
    sim.add_fault("stall", path="/chat/completions", seconds=0.8, after_chunks=1)
    started = time.monotonic()
    stream = client(proxy).chat.completions.create(
        model="deepseek-flash", messages=MESSAGES, stream=True
    )
    first = next(iter(stream))
    first_at = time.monotonic() - started
    rest = list(stream)
    total = time.monotonic() - started
    assert first.choices and rest
    assert first_at < 0.5 and total >= 0.8


def test_keep_alives_reach_the_client_and_usage_is_still_metered(
    proxy: RunningExporter, sim: Simulator
) -> None:
    sim.keepalive_delay, sim.keepalive_interval = 0.5, 0.1
    body = {"model": "deepseek-flash", "messages": MESSAGES}
    headers = {"Authorization": f"Bearer {PROD_KEY}"}
    with httpx.stream(
        "POST", proxy.proxy_url + "/chat/completions", json=body, headers=headers
    ) as r:
        first = next(r.iter_raw())
    assert first.startswith(b"\n")  # a blank keep-alive line, before any JSON
    with httpx.stream(
        "POST",
        proxy.proxy_url + "/chat/completions",
        json={**body, "stream": True},
        headers=headers,
    ) as r:
        first = next(r.iter_raw())
    assert first.startswith(b": keep-alive")
    reply = client(proxy).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert reply.usage is not None
    assert (
        proxy.registry_value(
            "deepseek_requests_total", account="prod", model="deepseek-flash", code="200"
        )
        == 3
    )
    assert (
        proxy.registry_value("deepseek_usage_missing_total", account="prod", model="deepseek-flash")
        is None
    )


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (402, openai.APIStatusError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_every_status_code_is_counted_and_passed_on(
    proxy: RunningExporter, sim: Simulator, status: int, error: type[Exception]
) -> None:
    sim.add_fault("status", path="/chat/completions", status=status)
    with pytest.raises(error) as caught:
        client(proxy).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert (
        proxy.registry_value(
            "deepseek_requests_total", account="prod", model="deepseek-flash", code=str(status)
        )
        == 1
    )


def test_counters_exist_at_zero_from_start(proxy: RunningExporter) -> None:
    for account in ("prod", "usd"):
        for model in ("deepseek-flash", "deepseek-v4-pro", "other"):
            for code in PREINITIALISED_CODES:
                assert (
                    proxy.registry_value(
                        "deepseek_requests_total", account=account, model=model, code=code
                    )
                    == 0
                )


def test_first_402_after_the_balance_hits_zero(proxy: RunningExporter, sim: Simulator) -> None:
    sim.set_balance("usd", "USD", "0.00", "0.0003")  # a few requests' worth
    c = client(proxy, USD_KEY)
    labels = {"account": "usd", "model": "deepseek-flash"}
    for _ in range(50):
        assert proxy.registry_value("deepseek_requests_total", **labels, code="402") == 0
        try:
            c.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
        except openai.APIStatusError as error:
            caught = error
            break
    else:
        pytest.fail("the balance never ran out")
    assert sim.account("usd").total("USD") == 0
    assert caught.status_code == 402
    assert "Insufficient Balance" in str(caught)
    assert proxy.registry_value("deepseek_requests_total", **labels, code="402") == 1


def test_client_disconnect_cancels_the_upstream_request(
    proxy: RunningExporter, sim: Simulator
) -> None:
    sim.stream_chunks, sim.chunk_interval = 100, 0.05
    sim.max_concurrency = 1  # a second request is refused with 429 while the first still runs
    body = {"model": "deepseek-flash", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST",
        proxy.proxy_url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {PROD_KEY}"},
    ) as r:
        next(r.iter_raw())
    labels = {"account": "prod", "model": "deepseek-flash"}
    wait_until(
        lambda: (
            proxy.registry_value(
                "deepseek_stream_aborts_total", **labels, reason="client_disconnect"
            )
            == 1
        )
    )
    # The upstream request ended with the client, long before 100 chunks x 50 ms: a new one
    # is accepted instead of refused with 429.
    sim.chunk_interval = 0.0
    started = time.monotonic()
    while True:
        try:
            client(proxy).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
            break
        except openai.RateLimitError:
            assert time.monotonic() - started < 2, "the upstream request outlived its client"
            time.sleep(0.05)
    assert proxy.registry_value("deepseek_requests_in_flight", account="prod") == 0


def test_upstream_dies_mid_stream(proxy: RunningExporter, sim: Simulator) -> None:
    sim.add_fault("reset", path="/chat/completions", after_chunks=2)
    stream = client(proxy).chat.completions.create(
        model="deepseek-flash", messages=MESSAGES, stream=True
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        list(stream)
    assert (
        proxy.registry_value(
            "deepseek_stream_aborts_total",
            account="prod",
            model="deepseek-flash",
            reason="upstream_disconnect",
        )
        == 1
    )
    # The proxy is fine afterwards.
    assert client(proxy).models.list().data


def test_unknown_and_arbitrary_models_keep_labels_bounded(proxy: RunningExporter) -> None:
    for i in range(30):
        with pytest.raises(openai.BadRequestError):
            client(proxy).chat.completions.create(model=f"gpt-{i}", messages=MESSAGES)
    assert (
        proxy.registry_value("deepseek_requests_total", account="prod", model="other", code="400")
        == 30
    )
    models = {
        line.split('model="')[1].split('"')[0]
        for line in proxy.scrape_text().splitlines()
        if 'model="' in line
    }
    assert models == proxy.exporter.prices.labels | {"other"}


def test_legacy_model_name_maps_to_its_canonical_label(proxy: RunningExporter) -> None:
    client(proxy).chat.completions.create(model="deepseek-v4-flash", messages=MESSAGES)
    assert (
        proxy.registry_value(
            "deepseek_requests_total", account="prod", model="deepseek-flash", code="200"
        )
        == 1
    )


def test_unknown_key_is_counted_as_unknown(proxy: RunningExporter) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(proxy, "sk-not-a-configured-key").chat.completions.create(
            model="deepseek-flash", messages=MESSAGES
        )
    assert (
        proxy.registry_value(
            "deepseek_requests_total", account="unknown", model="deepseek-flash", code="401"
        )
        == 1
    )


def test_other_endpoints_pass_through(proxy: RunningExporter) -> None:
    c = client(proxy)
    assert [m.id for m in c.models.list().data]
    fim = openai.OpenAI(base_url=proxy.proxy_url + "/beta", api_key=PROD_KEY, max_retries=0)
    reply = fim.completions.create(
        model="deepseek-flash", prompt="def add(a, b):", suffix="return c"
    )
    assert reply.choices[0].text
    balance = httpx.get(
        proxy.proxy_url + "/user/balance", headers={"Authorization": f"Bearer {PROD_KEY}"}
    )
    assert balance.json()["balance_infos"][0]["currency"] == "CNY"
    assert (
        proxy.registry_value(
            "deepseek_tokens_total", account="prod", model="deepseek-flash", token_type="output"
        )
        > 0
    )


def test_anthropic_endpoint_is_metered(proxy: RunningExporter) -> None:
    body = {"model": "deepseek-flash", "max_tokens": 64, "messages": MESSAGES}
    reply = httpx.post(
        proxy.proxy_url + "/anthropic/v1/messages",
        json=body,
        headers={"x-api-key": PROD_KEY, "anthropic-version": "2023-06-01"},
    )
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    labels = {"account": "prod", "model": "deepseek-flash"}
    assert (
        proxy.registry_value("deepseek_tokens_total", **labels, token_type="output")
        == (usage["output_tokens"])
    )
    with httpx.stream(
        "POST",
        proxy.proxy_url + "/anthropic/v1/messages",
        json={**body, "stream": True},
        headers={"x-api-key": PROD_KEY, "anthropic-version": "2023-06-01"},
    ) as r:
        assert b"message_stop" in r.read()
    assert proxy.registry_value("deepseek_tokens_total", **labels, token_type="output") == (
        2 * usage["output_tokens"]
    )


def test_curl_streams_through_the_proxy(proxy: RunningExporter) -> None:
    curl = require_binary("curl")
    result = subprocess.run(
        [
            curl,
            "-sSN",
            "--fail-with-body",
            proxy.proxy_url + "/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {PROD_KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"model": "deepseek-flash", "stream": true,'
            ' "messages": [{"role": "user", "content": "hi"}]}',
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("data: [DONE]")


def test_oversized_bodies_get_413(sim: Simulator, background_loop: BackgroundLoop) -> None:
    config = exporter_config(sim.base_url)
    config = replace(config, proxy=replace(config.proxy, max_body_bytes=100_000))
    with running_exporter(config, background_loop) as running:
        headers = {"Authorization": f"Bearer {PROD_KEY}", "Content-Type": "application/json"}
        big = (
            b'{"model": "deepseek-flash", "messages": [{"role": "user", "content": "'
            + b"x" * 200_000
            + b'"}]}'
        )
        response = httpx.post(running.proxy_url + "/chat/completions", content=big, headers=headers)
        assert response.status_code == 413
        assert response.json()["error"]["message"] == "Request body too large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            for _ in range(20):
                yield b"x" * 10_000

        response = httpx.post(
            running.proxy_url + "/chat/completions", content=chunked(), headers=headers
        )
        assert response.status_code == 413
        assert (
            running.registry_value(
                "deepseek_proxy_rejected_requests_total", reason="body_too_large"
            )
            == 2
        )
        # Nothing was completed or charged upstream.
        assert not [r for r in sim.requests() if r.endpoint == "chat" and r.status == 200]


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b'"error"' in data:
                break
        return data


def test_absolute_urls_and_connect_are_refused(proxy: RunningExporter, sim: Simulator) -> None:
    before = len(sim.requests())
    absolute = raw_request(
        proxy.proxy_url,
        b"GET http://169.254.169.254/latest HTTP/1.1\r\n"
        b"Host: 169.254.169.254\r\nConnection: close\r\n\r\n",
    )
    assert absolute.startswith(b"HTTP/1.1 400")
    connect = raw_request(
        proxy.proxy_url,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    assert connect.split(b" ")[1] in (b"400", b"405")
    # A Host header naming another server changes nothing: the request goes to the upstream.
    reply = httpx.get(
        proxy.proxy_url + "/models",
        headers={"Host": "evil.example", "Authorization": f"Bearer {PROD_KEY}"},
    )
    assert reply.status_code == 200
    assert len(sim.requests()) == before + 1


def test_upstream_unreachable_is_502_and_timeout_is_504(
    sim: Simulator, background_loop: BackgroundLoop
) -> None:
    with running_exporter(exporter_config("http://127.0.0.1:9"), background_loop) as running:
        with pytest.raises(openai.APIStatusError) as caught:
            client(running).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
        assert caught.value.status_code == 502
        assert caught.value.body["message"] == "Cannot reach the upstream API"  # type: ignore[index]
        assert (
            running.registry_value(
                "deepseek_upstream_errors_total", account="prod", reason="connect"
            )
            == 1
        )
    config = exporter_config(sim.base_url)
    config = replace(config, proxy=replace(config.proxy, timeout=0.3))
    with running_exporter(config, background_loop) as running:
        sim.add_fault("delay", path="/chat/completions", seconds=1.0)
        with pytest.raises(openai.APIStatusError) as caught:
            client(running).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
        assert caught.value.status_code == 504
        assert (
            running.registry_value(
                "deepseek_upstream_errors_total", account="prod", reason="timeout"
            )
            == 1
        )


def test_usage_missing_is_counted(proxy: RunningExporter, sim: Simulator) -> None:
    sim.add_fault("no_usage", path="/chat/completions")
    client(proxy).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert (
        proxy.registry_value("deepseek_usage_missing_total", account="prod", model="deepseek-flash")
        == 1
    )


def test_key_custody(sim: Simulator, background_loop: BackgroundLoop) -> None:
    config = exporter_config(sim.base_url)
    config = replace(
        config,
        proxy=replace(
            config.proxy, clients=(ProxyClientConfig("bot", Secret("tok-bot-123"), "usd"),)
        ),
    )
    with running_exporter(config, background_loop) as running:
        reply = client(running, "tok-bot-123").chat.completions.create(
            model="deepseek-flash", messages=MESSAGES
        )
        assert reply.choices  # the upstream accepted the real key the proxy put in
        assert (
            running.registry_value(
                "deepseek_requests_total", account="usd", model="deepseek-flash", code="200"
            )
            == 1
        )
        for refused in ("sk-something-else", USD_KEY):  # real keys too: apps hold tokens only
            with pytest.raises(openai.AuthenticationError):
                client(running, refused).chat.completions.create(
                    model="deepseek-flash", messages=MESSAGES
                )
        assert (
            running.registry_value("deepseek_proxy_rejected_requests_total", reason="unauthorized")
            == 2
        )
        body = {"model": "deepseek-flash", "max_tokens": 8, "messages": MESSAGES}
        reply = httpx.post(
            running.proxy_url + "/anthropic/v1/messages",
            json=body,
            headers={"x-api-key": "tok-bot-123", "anthropic-version": "2023-06-01"},
        )
        assert reply.status_code == 200


def test_no_key_in_any_output(
    proxy: RunningExporter, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client(proxy).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError) as caught:
        client(proxy, "sk-leaky-unknown-key-42").models.list()
    outputs = [
        proxy.scrape_text(),
        httpx.get(proxy.web_url + "/").text,
        caplog.text,
        repr(proxy.exporter.proxy.keys.entries),
    ]
    for output in outputs:
        assert PROD_KEY not in output and "sk-leaky-unknown-key-42" not in output
    assert "sk-leaky-unknown-key-42" not in str(caught.value)


def test_account_currency_override(sim: Simulator, background_loop: BackgroundLoop) -> None:
    clock = FakeClock(PEAK)
    sim.set_clock(clock)
    config = exporter_config(
        sim.base_url, accounts=(AccountConfig("prod", Secret(PROD_KEY), currency="USD"),)
    )
    with running_exporter(config, background_loop, clock=clock) as running:
        client(running).chat.completions.create(model="deepseek-flash", messages=MESSAGES)
        assert (
            running.registry_value(
                "deepseek_estimated_cost_total",
                account="prod",
                model="deepseek-flash",
                currency="USD",
            )
            > 0
        )
        assert (
            running.registry_value(
                "deepseek_estimated_cost_total",
                account="prod",
                model="deepseek-flash",
                currency="CNY",
            )
            is None
        )


def test_keys_are_remembered_only_once_they_match(tmp_path: Path) -> None:
    """The per-request shortcut (a dict of keys already matched) holds configured keys only,
    however many unknown keys clients send, and answers exactly as the digest comparison."""
    from exporter.config import load_config
    from exporter.proxy.server import KeyBook

    path = tmp_path / "c.yml"
    path.write_text(
        "accounts:\n  - {name: prod, api_key: sk-prod-0123456789}\n"
        "  - {name: dev, api_key: sk-dev-0123456789}\n"
    )
    book = KeyBook(load_config(path, environ={}))
    for i in range(1000):
        assert book.identify(f"sk-unknown-{i}") is None
    assert book._known == {}
    for _ in range(2):  # first by digest, then from the dict: the same answer
        prod, dev = book.identify("sk-prod-0123456789"), book.identify("sk-dev-0123456789")
        assert (prod.account, dev.account) == ("prod", "dev")
    assert book.identify("sk-prod-012345678") is None  # a prefix is not a key
    assert len(book._known) == 2


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_a_connection_back_in_the_pool_reads_again(loop_factory: Any) -> None:
    """An exchange can end with the upstream connection's reading paused (the last bytes' write
    to a slow client crossed its high-water mark after they were read); the pool must not hand
    out a connection that would never read the next response. Real loopback sockets, on both
    event loops the exporter may run on."""
    from exporter.proxy.upstream import UpstreamPool

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(f"http://127.0.0.1:{port}", connect_timeout=5)
        try:
            connection = await pool.connect()
            assert connection.transport is not None
            connection.transport.pause_reading()
            pool.release(connection)
            again = pool.take_idle()
            assert again is connection
            assert again.transport is not None and again.transport.is_reading()
        finally:
            pool.close()
            server.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())

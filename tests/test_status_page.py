"""The status page as a person sees it: Debian's chromium, driven by Playwright, headless.

One exporter in front of the simulator goes through the states a person must tell apart at a
glance (healthy, low, empty, down); in each the test reads what is on the screen, checks the
colour of the badge, and takes a screenshot (into docs/screenshots/ with UPDATE_SCREENSHOTS=1,
which is how the README's pictures are made). Time is an injected clock: a day of history takes
no time at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop, FakeClock, require_binary
from tests.harness import (
    PROD_KEY,
    USD_KEY,
    RunningExporter,
    exporter_config,
    running_exporter,
    running_simulator,
)
from tests.test_cli import Process

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
GREEN, AMBER, RED = "rgb(26, 127, 55)", "rgb(212, 167, 44)", "rgb(207, 34, 46)"
# 2026-11-16 09:00 UTC, a Monday: the clock the scenario starts at.
START = 1_794_819_600.0


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        yield browser
        browser.close()


class Scenario:
    """An exporter whose account ``prod`` (CNY, threshold 50) is walked through the states."""

    def __init__(self, sim: Simulator, running: RunningExporter, browser: object) -> None:
        self.sim, self.running, self.browser = sim, running, browser
        self.outside: list[str] = []

    def balance(self, amount: str, hours: float = 0.5) -> None:
        """The prod balance DeepSeek reports after ``hours`` more; then a poll."""
        self.sim.set_balance("prod", "CNY", "0", amount)
        self.running.clock.advance(hours * 3600)
        self.running.exporter.recent.snapshot()
        self.running.poll()

    def requests(self, count: int, key: str = PROD_KEY) -> None:
        client = openai.OpenAI(api_key=key, base_url=self.running.proxy_url, max_retries=0)
        for _ in range(count):
            # A 402 when the account is empty: counted, which is the point.
            with contextlib.suppress(openai.APIStatusError):
                client.chat.completions.create(
                    model="deepseek-flash", messages=[{"role": "user", "content": "Hello!"}]
                )
        self.running.settle()

    def open(self, name: str, javascript: bool = True) -> object:
        context = self.browser.new_context(  # type: ignore[attr-defined]
            viewport={"width": 1200, "height": 900}, java_script_enabled=javascript
        )
        page = context.new_page()
        origin = self.running.web_url
        page.on(
            "request",
            lambda request: (
                None if request.url.startswith(origin) else self.outside.append(request.url)
            ),
        )
        page.goto(origin + "/")
        target = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") else None
        if target is not None and javascript:
            target.mkdir(parents=True, exist_ok=True)
            page.locator("main").screenshot(path=str(target / f"status-{name}.png"))
        return page


def card(page: object, account: str) -> object:
    return page.locator(f'section.card[data-account="{account}"]')  # type: ignore[attr-defined]


def badge_colour(page: object, account: str) -> str:
    return (
        card(page, account)
        .locator(".badge")
        .evaluate(  # type: ignore[attr-defined]
            "element => getComputedStyle(element).backgroundColor"
        )
    )


def text(locator: object) -> str:
    return " ".join(locator.inner_text().split())  # type: ignore[attr-defined]


@pytest.fixture
def scenario(browser: object, background_loop: BackgroundLoop) -> Iterator[Scenario]:
    with running_simulator() as sim:
        sim.set_balance("prod", "CNY", "0", "160")
        config = exporter_config(sim.base_url)
        prod = config.accounts[0]
        accounts = (
            type(prod)("prod", prod.api_key, low_balance_threshold=Decimal("50")),
            config.accounts[1],
        )
        config = type(config)(
            deepseek=config.deepseek,
            balance=config.balance,
            accounts=accounts,
            web=config.web,
            proxy=config.proxy,
        )
        clock = FakeClock(START)
        with running_exporter(config, background_loop, clock) as running:
            yield Scenario(sim, running, browser)


def test_the_status_page_shows_each_state_at_a_glance(scenario: Scenario) -> None:
    # ---- healthy: a day of history, spending about 2 CNY an hour, some traffic ----------
    amount = Decimal("160")
    for _ in range(48):
        amount -= 1
        scenario.balance(str(amount))
        if _ == 10:
            scenario.requests(3)
    scenario.requests(2)  # within the last hour
    page = scenario.open("healthy")
    assert text(page.locator(".summary")) == "All 2 accounts OK"
    prod = card(page, "prod")
    assert text(prod.locator("h2")) == "prod OK"
    assert badge_colour(page, "prod") == GREEN
    assert text(prod.locator(".amount")) == "112.00 CNY threshold 50.00"
    facts = text(prod.locator(".facts"))
    # 1 CNY per half hour is 48 a day: 112 last 2.3 days; a week needs 336 - 112 more.
    assert "Burn 48.00 CNY/day" in facts
    assert re.search(r"Lasts 2\.3 days, until Nov 19 \d\d:\d\d UTC", facts), facts
    assert "Top-up for 7 days +224.00 CNY" in facts
    assert "Top-up for 30 days +1,328.00 CNY" in facts
    assert prod.locator(".spark svg polyline").count() == 1
    assert text(prod.locator(".spark figcaption")) == "balance, since Nov 16 09:00 UTC"
    traffic = text(prod.locator("table.traffic"))
    assert "402 Insufficient Balance 0 0" in traffic
    assert "other errors 0 0" in traffic
    today = text(prod.locator(".today"))
    assert re.fullmatch(
        r"Today \(UTC\): 2 requests · \d+ tokens · [0-9.]+ CNY estimated cost", today
    ), today
    assert text(card(page, "usd").locator("h2")) == "usd OK"
    # How to use the proxy, with its URL and a snippet; links to the rest.
    assert scenario.running.proxy_url in text(page.locator(".proxy-url"))
    assert "deepseek-v4-pro" in text(page.locator(".snippets"))
    hrefs = page.locator("footer a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert hrefs == ["/metrics", "/runbooks/", "/-/healthy", "/-/ready"]
    # Refreshes itself, without JavaScript.
    refresh = page.locator('meta[http-equiv="refresh"]').get_attribute("content")
    assert refresh == "30"

    # ---- low: under its threshold of 50 -----------------------------------------------------
    scenario.balance("42.50")
    page = scenario.open("low")
    assert text(page.locator(".summary")) == "Needs attention: prod LOW"
    assert text(card(page, "prod").locator("h2")) == "prod LOW"
    assert badge_colour(page, "prod") == AMBER
    assert text(card(page, "prod").locator(".amount")) == "42.50 CNY threshold 50.00"

    # ---- empty: nothing left, calls get 402 ---------------------------------------------------
    scenario.balance("0")
    emptied = scenario.running.clock.now
    scenario.balance("0", hours=0.25)
    scenario.requests(4)
    page = scenario.open("empty")
    since = f"EMPTY since {_hhmm(emptied)} UTC"
    assert text(card(page, "prod").locator("h2")) == f"prod {since}"
    assert text(page.locator(".summary")) == f"Needs attention: prod {since.split(' since')[0]}"
    assert badge_colour(page, "prod") == RED
    assert "nothing left: every call fails with 402" in text(card(page, "prod"))
    assert "Lasts empty now" in text(card(page, "prod").locator(".facts"))
    traffic = card(page, "prod").locator("table.traffic tr.bad")
    assert text(traffic) == "402 Insufficient Balance 4 4"
    assert traffic.locator("td").first.evaluate("e => getComputedStyle(e).color") == RED

    # ---- down: the balance poll is refused -----------------------------------------------------
    scenario.sim.set_balance("prod", "CNY", "0", "80")
    scenario.sim.add_fault("status", path="/user/balance", status=401, times=1)
    scenario.running.clock.advance(60)
    state = scenario.running.exporter.poller.states["prod"]
    scenario.running.loop.run(scenario.running.exporter.poller.poll_account(state))
    page = scenario.open("down")
    prod = card(page, "prod")
    assert text(prod.locator("h2")) == "prod DOWN"
    assert badge_colour(page, "prod") == RED
    assert "last poll failed: unauthorized" in text(prod.locator(".detail"))
    assert text(card(page, "usd").locator("h2")) == "usd OK"
    assert PROD_KEY not in page.content() and USD_KEY not in page.content()

    # The same page with JavaScript off shows the same, and nothing was ever fetched from
    # anywhere but the exporter's page itself.
    plain = scenario.open("down-no-js", javascript=False)
    assert text(card(plain, "prod").locator("h2")) == "prod DOWN"
    assert scenario.outside == []


def _hhmm(at: float) -> str:
    return time.strftime("%H:%M", time.gmtime(at))


def test_a_newcomer_pastes_the_demo_snippets_and_sees_them_metered(browser: object) -> None:
    """The README's quick start, as a person does it: run the demo, paste the two snippets it
    prints, find the requests with their cost in /metrics and on the status page."""
    curl = require_binary("curl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    process = Process("--demo", env=env)
    try:
        process.wait_ready()
        banner = _read_banner(process)
        python_snippet = _indented_block(banner, "or with the openai Python SDK")
        curl_snippet = _indented_block(banner, "Call it yourself (curl):")
        assert 'api_key="sk-demo-steady"' in python_snippet
        assert f'base_url="{process.proxy}"' in python_snippet
        pasted = subprocess.run(
            [sys.executable, "-c", python_snippet], capture_output=True, text=True, timeout=60
        )
        assert pasted.returncode == 0, pasted.stderr
        assert "completion_tokens=" in pasted.stdout  # print(reply.usage)
        pasted = subprocess.run(
            ["bash", "-c", curl_snippet.replace("curl ", f"{curl} -sf ", 1)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pasted.returncode == 0, pasted.stderr
        assert json.loads(pasted.stdout)["model"] == "deepseek-v4-pro"

        labels = {"account": "demo-steady", "model": "deepseek-v4-pro"}
        samples = process.samples()
        assert (
            samples[("deepseek_requests_total", frozenset({**labels, "code": "200"}.items()))] == 2
        )
        cost = samples[
            ("deepseek_estimated_cost_total", frozenset({**labels, "currency": "CNY"}.items()))
        ]
        assert cost > 0

        context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(process.web + "/")
        steady = card(page, "demo-steady")
        assert text(steady.locator("h2")).startswith("demo-steady ")
        today = text(steady.locator(".today"))
        match = re.fullmatch(
            r"Today \(UTC\): ([\d,]+) requests · \S+ tokens · ([0-9.]+) CNY estimated cost", today
        )
        assert match and int(match[1].replace(",", "")) >= 2 and float(match[2]) >= cost, today
        keys = text(page.locator(".demo-keys"))
        assert "sk-demo-steady (demo-steady)" in keys and "sk-demo-draining" in keys
        assert process.stop() == 0
    finally:
        process.output()


def _read_banner(process: Process) -> str:
    """The demo's start-up banner, from its output (stdout and stderr, merged)."""
    assert process.popen.stdout is not None
    lines: list[str] = []
    for line in process.popen.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Your request shows up"):
            return "\n".join(lines)
    raise AssertionError("\n".join(lines))


def _indented_block(banner: str, heading: str) -> str:
    """The snippet under ``heading``: its indented lines, dedented."""
    after = banner.split(heading, 1)[1].splitlines()[1:]
    block: list[str] = []
    for line in after:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    return textwrap.dedent("\n".join(block)).strip()

"""Both listeners behind TLS and basic auth, as an exporter runs them; bad web configs refused."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import bcrypt
import httpx
import openai
import pytest

from exporter.simulator import Simulator
from tests.conftest import BackgroundLoop, require_binary
from tests.harness import (
    PROD_KEY,
    RunningExporter,
    exporter_config,
    parse_samples,
    running_exporter,
    running_simulator,
)
from tests.pki import Pki
from tests.test_webconfig import pki  # noqa: F401  (a fixture)

USER, PASSWORD = "prometheus", "scrape-secret-123"
MESSAGES = [{"role": "user", "content": "hi"}]


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def web_config(tmp_path: Path, pki: Pki) -> Path:  # noqa: F811
    file = tmp_path / "web.yml"
    file.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD)}\n"
    )
    return file


@pytest.fixture
def secured(
    web_config: Path, background_loop: BackgroundLoop
) -> Iterator[tuple[RunningExporter, Simulator]]:
    with running_simulator() as sim:
        config = exporter_config(sim.base_url)
        config = replace(
            config,
            web=replace(config.web, config_file=web_config),
            proxy=replace(config.proxy, web_config_file=web_config),
        )
        with running_exporter(config, background_loop) as running:
            yield running, sim


def test_metrics_listener_requires_tls_and_basic_auth(
    secured: tuple[RunningExporter, Simulator],
    pki: Pki,  # noqa: F811
) -> None:
    running, _ = secured
    url = running.web_url
    assert url.startswith("https://")
    plain = httpx.get(url.replace("https://", "http://") + "/metrics")
    assert (plain.status_code, plain.text) == (
        400,
        "Client sent an HTTP request to an HTTPS server.\n",  # what a Go exporter answers
    )
    tls = ssl.create_default_context(cafile=str(pki.ca))
    assert httpx.get(url + "/metrics", verify=tls).status_code == 401
    wrong = httpx.get(url + "/metrics", verify=tls, headers={"Authorization": basic(USER, "nope")})
    assert wrong.status_code == 401
    good = httpx.get(url + "/metrics", verify=tls, headers={"Authorization": basic(USER, PASSWORD)})
    assert good.status_code == 200
    assert "deepseek_balance{" in good.text


def test_proxy_listener_requires_tls_and_proxy_authorization(
    secured: tuple[RunningExporter, Simulator],
    pki: Pki,  # noqa: F811
) -> None:
    running, sim = secured
    tls = ssl.create_default_context(cafile=str(pki.ca))
    anonymous = openai.OpenAI(
        base_url=running.proxy_url,
        api_key=PROD_KEY,
        max_retries=0,
        http_client=httpx.Client(verify=tls),
    )
    with pytest.raises(openai.APIStatusError) as caught:
        anonymous.chat.completions.create(model="deepseek-flash", messages=MESSAGES)
    assert caught.value.status_code == 407
    authorised = openai.OpenAI(
        base_url=running.proxy_url,
        api_key=PROD_KEY,
        max_retries=0,
        http_client=httpx.Client(verify=tls),
        default_headers={"Proxy-Authorization": basic(USER, PASSWORD)},
    )
    assert authorised.chat.completions.create(model="deepseek-flash", messages=MESSAGES).choices
    # The proxy credentials stop at the proxy: the upstream never sees them.
    assert (
        running.registry_value(
            "deepseek_requests_total", account="prod", model="deepseek-flash", code="200"
        )
        == 1
    )
    assert len([r for r in sim.requests() if r.endpoint == "chat"]) == 1


def test_bad_web_config_refuses_to_start(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    config = tmp_path / "config.yml"
    config.write_text("web: {config_file: web.yml}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("config error: ")
    assert "missing.crt" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_web_config_reloads_are_reported_per_listener(
    secured: tuple[RunningExporter, Simulator],
    web_config: Path,
    pki: Pki,  # noqa: F811
) -> None:
    running, _ = secured
    tls = ssl.create_default_context(cafile=str(pki.ca))
    auth = {"Authorization": basic(USER, PASSWORD)}

    def scrape() -> str:
        return httpx.get(running.web_url + "/metrics", verify=tls, headers=auth).text

    text = scrape()
    lint = subprocess.run(
        [require_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    ok = "deepseek_exporter_web_config_last_reload_successful"
    samples = parse_samples(text)
    assert samples[(ok, frozenset({("listener", "web")}))] == 1
    assert samples[(ok, frozenset({("listener", "proxy")}))] == 1
    stamp = "deepseek_exporter_web_config_last_reload_success_timestamp_seconds"
    assert samples[(stamp, frozenset({("listener", "web")}))] == running.clock()

    good = web_config.read_text()
    web_config.write_text(good.replace(str(pki.server_key), "/nonexistent/server.key"))
    samples = parse_samples(scrape())  # a new connection looks at the files first
    assert samples[(ok, frozenset({("listener", "web")}))] == 0
    assert samples[(ok, frozenset({("listener", "proxy")}))] == 1  # no connection there yet
    web_config.write_text(good)
    assert parse_samples(scrape())[(ok, frozenset({("listener", "web")}))] == 1

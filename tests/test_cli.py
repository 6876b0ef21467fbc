"""The command line as users run it: real processes, signals, exit codes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exporter.simulator import Simulator
from tests.harness import PROD_KEY, USD_KEY, parse_samples, running_simulator, wait_until

EXPORTER = [sys.executable, "-m", "exporter"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


def write_config(path: Path, base_url: str, accounts: str, extra: str = "") -> Path:
    path.write_text(
        f"deepseek: {{base_url: '{base_url}', timeout: 2s}}\n"
        "balance: {poll_interval: 1h, max_staleness: 2h}\n"
        f"accounts:\n{accounts}{extra}"
    )
    return path


PROD = "  - name: prod\n    api_key_env: K_PROD\n    low_balance_threshold: 5\n"
USD = "  - name: usd\n    api_key_env: K_USD\n"
ENV = {**os.environ, "K_PROD": PROD_KEY, "K_USD": USD_KEY}


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The exporter as a user runs it; ``cwd`` is where a serving one puts its default data/."""
    return subprocess.run(
        [*EXPORTER, *args], capture_output=True, text=True, env=env or ENV, timeout=60, cwd=cwd
    )


def test_config_check(tmp_path: Path) -> None:
    good = write_config(tmp_path / "good.yml", "http://127.0.0.1:1", PROD)
    result = run("--config.file", str(good), "--config.check")
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout

    bad = write_config(tmp_path / "bad.yml", "http://127.0.0.1:1", PROD + "    poll_interval: 1s\n")
    result = run("--config.file", str(bad), "--config.check")
    assert result.returncode == 1
    assert result.stderr.strip() == "config error: accounts[0].poll_interval: unknown key"


def test_bad_config_refuses_to_start(tmp_path: Path) -> None:
    bad = write_config(tmp_path / "bad.yml", "http://127.0.0.1:1", "  - {name: prod}\n")
    result = run("--config.file", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "config error: accounts[0]: exactly one of api_key_env, api_key_file, api_key is required"
    ]


def test_balance_one_shot_exit_codes(tmp_path: Path, sim: Simulator) -> None:
    config = write_config(tmp_path / "c.yml", sim.base_url, PROD + USD)
    result = run("balance", "--config.file", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ACCOUNT",
        "CURRENCY",
        "TOTAL",
        "GRANTED",
        "TOPPED_UP",
        "AVAILABLE",
        "STATUS",
    ]
    assert lines[1].split() == ["prod", "CNY", "110.00", "10.00", "100.00", "yes", "ok"]
    assert PROD_KEY not in result.stdout + result.stderr

    sim.set_balance("prod", "CNY", "0", "4.00")  # under the threshold of 5
    result = run("balance", "--config.file", str(config))
    assert result.returncode == 1
    assert "LOW" in result.stdout

    sim.set_balance("prod", "CNY", "0", "0")
    result = run("balance", "--config.file", str(config))
    assert result.returncode == 1
    assert "NO" in result.stdout

    broken = write_config(tmp_path / "b.yml", "http://127.0.0.1:9", PROD)
    result = run("balance", "--config.file", str(broken))
    assert result.returncode == 2
    assert "error: connection" in result.stdout


def test_balance_with_only_the_environment_key(sim: Simulator) -> None:
    env = {**ENV, "DEEPSEEK_API_KEY": USD_KEY}
    result = run("balance", "--deepseek.base-url", sim.base_url, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["default", "USD", "20.00"]


class Process:
    """The exporter as a user starts it; ``cwd`` is where the default ``data/`` store goes."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.web = f"http://127.0.0.1:{free_port()}"
        self.proxy = f"http://127.0.0.1:{free_port()}"
        self.popen = subprocess.Popen(
            [
                *EXPORTER,
                *args,
                "--web.listen-address",
                self.web.removeprefix("http://"),
                "--proxy.listen-address",
                self.proxy.removeprefix("http://"),
            ],
            env=env or ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.popen.poll() is None, self.output()
            try:
                return httpx.get(self.web + "/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout)

    def samples(self) -> dict:
        return parse_samples(httpx.get(self.web + "/metrics").text)

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(20)

    def output(self) -> str:
        if self.popen.poll() is None:
            self.popen.kill()
        return self.popen.communicate()[0]


def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(tmp_path: Path, sim: Simulator) -> None:
    config = write_config(tmp_path / "c.yml", sim.base_url, PROD)
    process = Process("--config.file", str(config), cwd=tmp_path)
    try:
        process.wait_ready()
        assert ("deepseek_up", frozenset({"account": "usd"}.items())) not in process.samples()
        write_config(config, sim.base_url, PROD + USD)
        process.popen.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                process.samples().get(
                    ("deepseek_balance", frozenset({"account": "usd", "currency": "USD"}.items()))
                )
                == 20
            )
        )

        config.write_text("accounts: [{name: prod}]\n")
        process.popen.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (
                process.samples()[("deepseek_exporter_config_last_reload_successful", frozenset())]
                == 0
            )
        )
        assert process.samples()[("deepseek_up", frozenset({"account": "usd"}.items()))] == 1
        assert process.stop() == 0
    finally:
        output = process.output()
    assert "config reload failed, keeping the running config" in output
    assert PROD_KEY not in output and USD_KEY not in output


def test_sigterm_lets_an_in_flight_stream_finish(tmp_path: Path, sim: Simulator) -> None:
    sim.stream_chunks, sim.chunk_interval = 20, 0.05  # a one-second stream
    config = write_config(tmp_path / "c.yml", sim.base_url, PROD)
    process = Process("--config.file", str(config), "--web.shutdown-timeout", "10s", cwd=tmp_path)
    try:
        process.wait_ready()
        body = {
            "model": "deepseek-flash",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with httpx.stream(
            "POST",
            process.proxy + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {PROD_KEY}"},
        ) as response:
            chunks = response.iter_raw()
            next(chunks)
            process.popen.send_signal(signal.SIGTERM)
            rest = b"".join(chunks)
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert process.popen.wait(20) == 0
    finally:
        process.output()


def test_demo_runs_without_a_key_and_meters_its_workload(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "DEEPSEEK_API_KEY"}
    process = Process("--demo", env=env, cwd=tmp_path)
    try:
        process.wait_ready()

        def demo_traffic_metered() -> bool:
            samples = process.samples()
            requests = sum(
                v
                for (name, labels), v in samples.items()
                if name == "deepseek_requests_total" and ("code", "200") in labels
            )
            accounts = {
                dict(labels)["account"] for (name, labels) in samples if name == "deepseek_balance"
            }
            return requests >= 4 and accounts == {"demo-steady", "demo-draining"}

        wait_until(demo_traffic_metered, timeout=20)
        page = httpx.get(process.web + "/").text
        assert "demo-draining" in page
        assert process.stop() == 0
    finally:
        output = process.output()
    # The demo's keys are fixed and fake, and printed on purpose for people to paste.
    assert "sk-demo-steady" in output and "sk-demo-draining" in output
    assert not (tmp_path / "data").exists(), "the demo stores nothing unless asked"


def test_simulate_subcommand_serves_the_api() -> None:
    port = free_port()
    popen = subprocess.Popen(
        [*EXPORTER, "simulate", "--listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert popen.stdout is not None
        assert f"127.0.0.1:{port}" in popen.stdout.readline()
        reply = httpx.get(
            f"http://127.0.0.1:{port}/user/balance",
            headers={"Authorization": "Bearer sk-sim-demo-cny"},
        )
        assert reply.json()["balance_infos"][0]["currency"] == "CNY"
    finally:
        popen.terminate()
        popen.wait(10)


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == "deepseek-exporter 0.1.0"
    help_text = run("--help").stdout
    for flag in (
        "--config.file",
        "--config.check",
        "--web.listen-address",
        "--web.config.file",
        "--web.shutdown-timeout",
        "--proxy.listen-address",
        "--log.level",
        "--log.format",
        "--deepseek.base-url",
        "--storage.path",
        "--demo",
    ):
        assert flag in help_text
    backtest_help = run("backtest", "--help").stdout
    for flag in ("--history", "--config.file", "--rules", "--promtool"):
        assert flag in backtest_help

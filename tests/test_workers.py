"""``--proxy.workers``: a real exporter process whose proxy is served by worker processes.

Each test runs ``python -m exporter`` as a person would, against the simulator, and looks at
it from outside: the port, ``/metrics`` (one exposition, summed), the status page, the log,
and the processes themselves (``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exporter.simulator import Simulator
from tests.conftest import require_binary
from tests.harness import PROD_KEY, USD_KEY, parse_samples, running_simulator
from tests.test_deploy import ExporterProcess, wait_for

EXPORTER = [sys.executable, "-m", "exporter"]
CHAT = "/chat/completions"
BODY = {"model": "deepseek-flash", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


def write_config(path: Path, sim: Simulator, *, usd: bool = True, workers: str = "") -> Path:
    accounts = "  - {name: prod, api_key_env: K_PROD}\n"
    if usd:
        accounts += "  - {name: usd, api_key_env: K_USD}\n"
    path.write_text(
        f"deepseek: {{base_url: '{sim.base_url}', timeout: 5s}}\n"
        "balance: {poll_interval: 1h, max_staleness: 2h}\n"
        f"web: {{listen_address: '127.0.0.1:0', shutdown_timeout: 10s}}\n"
        f"proxy: {{listen_address: '127.0.0.1:0'{workers}}}\n"
        f"accounts:\n{accounts}"
    )
    return path


def start(tmp_path: Path, *args: str) -> ExporterProcess:
    env = {**os.environ, "K_PROD": PROD_KEY, "K_USD": USD_KEY}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    exporter = ExporterProcess([*EXPORTER, *args], env, cwd=tmp_path)
    exporter.wait_for_listeners("metrics", "proxy", timeout=60)
    return exporter


def stop(exporter: ExporterProcess) -> int:
    exporter.proc.send_signal(signal.SIGTERM)
    return exporter.proc.wait(60)


def workers_of(exporter: ExporterProcess) -> list[int]:
    """The worker processes: the exporter's children running multiprocessing's spawn."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == exporter.proc.pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def sockets_of(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def post(url: str, key: str = PROD_KEY, **options: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(url + CHAT, json=BODY, headers=headers, timeout=10, **options)  # type: ignore[arg-type]


def samples(exporter: ExporterProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(exporter.web_url + "/metrics", headers={"Accept": "text/plain"}).text
    return parse_samples(text)


def requests_total(exporter: ExporterProcess, account: str) -> float:
    return sum(
        value
        for (name, labels), value in samples(exporter).items()
        if name == "deepseek_requests_total" and ("account", account) in labels
    )


def test_workers_share_the_port_and_metrics_show_their_sum(tmp_path: Path, sim: Simulator) -> None:
    config = write_config(tmp_path / "c.yml", sim)
    exporter = start(tmp_path, "--proxy.workers", "2", "--config.file", str(config))
    try:
        assert "forwarding to" in exporter.log and "2 worker processes" in exporter.log
        wait_for(lambda: len(workers_of(exporter)) == 2, 30, "two workers")
        workers = workers_of(exporter)
        before = {pid: sockets_of(pid) for pid in workers}
        # Connections held open: the kernel spreads them over both workers' sockets.
        clients = [httpx.Client(base_url=exporter.proxy_url, timeout=10) for _ in range(24)]
        try:
            for client in clients:
                reply = client.post(
                    CHAT, json=BODY, headers={"Authorization": f"Bearer {PROD_KEY}"}
                )
                assert reply.status_code == 200 and reply.json()["usage"]
            assert all(sockets_of(pid) > before[pid] for pid in workers), "a worker got nothing"
        finally:
            for client in clients:
                client.close()
        for _ in range(6):
            assert post(exporter.proxy_url, USD_KEY).status_code == 200
        # One exposition with the workers' sum, linted, with the metrics' own help texts.
        wait_for(lambda: requests_total(exporter, "prod") == 24, 10, "24 requests counted")
        assert requests_total(exporter, "usd") == 6
        text = httpx.get(exporter.web_url + "/metrics", headers={"Accept": "text/plain"}).text
        assert "# HELP deepseek_requests_total Upstream responses by HTTP status code." in text
        assert "Multiprocess metric" not in text
        lint = subprocess.run(
            [require_binary("promtool"), "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
        assert (
            samples(exporter)[("deepseek_requests_in_flight", frozenset({("account", "prod")}))]
            == 0
        )
        # The status page reads the same sum (read_totals across workers).
        page = httpx.get(exporter.web_url + "/").text
        assert "24 requests" in page and "6 requests" in page
        # The balance poller runs once, in the main process: one poll per account.
        assert len([r for r in sim.requests() if r.endpoint == "balance"]) == 2
    finally:
        assert stop(exporter) == 0
    assert not workers_of(exporter)


def test_reload_restart_and_graceful_stop_reach_every_worker(
    tmp_path: Path, sim: Simulator
) -> None:
    config = write_config(tmp_path / "c.yml", sim, usd=False, workers=", workers: 2")
    exporter = start(tmp_path, "--config.file", str(config), "--log.level", "info")
    try:
        wait_for(lambda: len(workers_of(exporter)) == 2, 30, "two workers")
        # The usd key is unknown until a reload adds its account, in every worker.
        assert post(exporter.proxy_url, USD_KEY).status_code == 200
        assert requests_total(exporter, "unknown") == 1
        write_config(config, sim, usd=True, workers=", workers: 2")
        exporter.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: requests_total(exporter, "usd") == 0 and _has_usd(exporter), 10, "usd")
        for _ in range(12):
            assert post(exporter.proxy_url, USD_KEY).status_code == 200
        assert requests_total(exporter, "usd") == 12
        assert requests_total(exporter, "unknown") == 1

        # A worker that dies is logged and replaced; what it counted stays counted.
        victim = workers_of(exporter)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: f"(pid {victim}) exited with code -9" in exporter.log, 10, "the log")
        wait_for(lambda: len(workers_of(exporter)) == 2, 30, "a new worker")
        assert victim not in workers_of(exporter)
        for _ in range(4):
            assert post(exporter.proxy_url, USD_KEY).status_code == 200
        assert requests_total(exporter, "usd") == 16

        # SIGTERM with a stream in flight: the stream finishes, then everything stops.
        sim.stream_chunks, sim.chunk_interval = 10, 0.1
        headers = {"Authorization": f"Bearer {PROD_KEY}"}
        with httpx.stream(
            "POST", exporter.proxy_url + CHAT, json={**BODY, "stream": True}, headers=headers
        ) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            assert first.startswith(b"data:")
            exporter.proc.send_signal(signal.SIGTERM)
            rest = b"".join(chunks)
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert exporter.proc.wait(60) == 0
    finally:
        if exporter.proc.poll() is None:
            stop(exporter)
    assert not workers_of(exporter)


def _has_usd(exporter: ExporterProcess) -> bool:
    return any(
        name == "deepseek_requests_total" and ("account", "usd") in labels
        for name, labels in samples(exporter)
    )


def test_bad_worker_counts_are_refused(tmp_path: Path) -> None:
    for value in ("0", "many", "-1"):
        result = subprocess.run(
            [*EXPORTER, f"--proxy.workers={value}"], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2
        assert result.stderr.strip().endswith(
            "must be auto or a number of processes (1 to 1024)"
        ), result.stderr


def test_auto_is_the_cpus_this_process_may_use(tmp_path: Path, sim: Simulator) -> None:
    config = write_config(tmp_path / "c.yml", sim)
    cpus = len(os.sched_getaffinity(0))
    exporter = start(tmp_path, "--config.file", str(config), "--proxy.workers=auto")
    try:
        if cpus > 1:
            assert f"{cpus} worker processes" in exporter.log
            wait_for(lambda: len(workers_of(exporter)) == cpus, 30, "the workers")
        else:
            assert "worker processes" not in exporter.log
        assert post(exporter.proxy_url).status_code == 200
    finally:
        assert stop(exporter) == 0

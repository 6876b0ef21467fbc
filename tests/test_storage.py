"""History that survives restarts, on real processes: the way users start, stop and break it."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from exporter.simulator import Simulator
from tests.harness import parse_samples, running_simulator, wait_until
from tests.test_cli import ENV, PROD, Process

RATE = 0.5  # CNY a second, drained from the simulated account while a test runs
LABELS = frozenset({"account": "prod", "currency": "CNY"}.items())
BURN_1H = ("deepseek_balance_burn_rate", frozenset({*LABELS, ("window", "1h")}))
EXHAUSTION = ("deepseek_balance_exhaustion_seconds", LABELS)
SPENT = ("deepseek_balance_spent_total", LABELS)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


class Drain:
    """Spends RATE a second from prod's CNY balance, in cents, like a steady bot."""

    def __init__(self, sim: Simulator, start: float = 5000.0) -> None:
        self.sim, self.start, self.began = sim, start, time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def balance(self) -> float:
        return self.start - RATE * (time.monotonic() - self.began)

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.sim.set_balance("prod", "CNY", "0", f"{self.balance():.2f}")

    def __enter__(self) -> Drain:
        self.sim.set_balance("prod", "CNY", "0", f"{self.start:.2f}")
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)


def fast_polls(tmp_path: Path, sim: Simulator) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(
        f"deepseek: {{base_url: '{sim.base_url}', timeout: 2s}}\n"
        "balance: {poll_interval: 1s, max_staleness: 1h}\n"
        f"accounts:\n{PROD}"
    )
    return path


def first_scrape(process: Process, timeout: float = 20) -> dict:
    """The first answer of /metrics, as soon as the listener accepts."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.popen.poll() is None, process.output()
        try:
            response = httpx.get(process.web + "/metrics", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the exporter did not start listening"
            time.sleep(0.02)
            continue
        return parse_samples(response.text)


def test_a_restarted_exporter_continues_its_burn_rate_and_forecast(
    tmp_path: Path, sim: Simulator
) -> None:
    config = fast_polls(tmp_path, sim)
    store = tmp_path / "store"
    with Drain(sim) as drain:
        first = Process("--config.file", str(config), "--storage.path", str(store), cwd=tmp_path)
        try:
            first.wait_ready()
            # Six seconds of history at a poll a second.
            wait_until(lambda: (first.samples().get(SPENT) or 0) >= 6 * RATE - 0.05, timeout=20)
            before = first.samples()
            assert first.stop() == 0
        finally:
            first.output()
        second = Process("--storage.path", str(store), "--config.file", str(config), cwd=tmp_path)
        try:
            after = first_scrape(second)
            balance = drain.balance()
            second.wait_ready()
            assert second.stop() == 0
        finally:
            output = second.output()
    # At its very first scrape the restarted exporter has the burn rate and the forecast of the
    # stored history (the bot kept spending at RATE meanwhile), and its spend counter goes on.
    assert before[BURN_1H] == pytest.approx(RATE, rel=0.1)
    assert after[BURN_1H] == pytest.approx(RATE, rel=0.1), output
    assert after[EXHAUSTION] == pytest.approx(balance / RATE, rel=0.1)
    assert after[SPENT] >= before[SPENT]
    assert (store / "history.db").is_file() and not (tmp_path / "data").exists()


def test_without_storage_a_restart_forgets(tmp_path: Path, sim: Simulator) -> None:
    """The control: with --storage.path= (empty) the first scrape after the first poll has one
    observation, so no burn rate and no forecast; and nothing is written anywhere."""
    config = fast_polls(tmp_path, sim)
    process = Process("--config.file", str(config), "--storage.path=", cwd=tmp_path)
    try:
        process.wait_ready()
        samples = process.samples()
        assert ("deepseek_balance", LABELS) in samples
        assert BURN_1H not in samples and EXHAUSTION not in samples
        assert process.stop() == 0
    finally:
        process.output()
    assert list(tmp_path.iterdir()) == [config]


def test_a_damaged_store_is_set_aside_and_the_exporter_polls(
    tmp_path: Path, sim: Simulator
) -> None:
    config = fast_polls(tmp_path, sim)
    (tmp_path / "data").mkdir()
    damaged = tmp_path / "data" / "history.db"
    damaged.write_bytes(b"\x00garbage, not SQLite\x00" * 500)
    process = Process("--config.file", str(config), cwd=tmp_path)  # the default data/
    try:
        process.wait_ready()
        assert process.samples()[("deepseek_up", frozenset({("account", "prod")}))] == 1
        assert process.stop() == 0
    finally:
        output = process.output()
    assert "Traceback" not in output
    storage_lines = [line for line in output.splitlines() if "storage" in line]
    assert len(storage_lines) == 1, output
    assert "level=error" in storage_lines[0] and "data/history.db is unusable" in storage_lines[0]
    aside = list((tmp_path / "data").glob("history.db.damaged-*"))
    assert len(aside) == 1 and aside[0].name in storage_lines[0]
    assert aside[0].read_bytes().startswith(b"\x00garbage")
    with sqlite3.connect(damaged) as db:  # a new, good store took its place
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("SELECT account, currency FROM series").fetchall() == [("prod", "CNY")]


def test_an_unwritable_storage_path_keeps_polling_in_memory(tmp_path: Path, sim: Simulator) -> None:
    config = fast_polls(tmp_path, sim)
    (tmp_path / "a-file").write_text("not a directory")
    process = Process(
        "--config.file", str(config), "--storage.path", str(tmp_path / "a-file"), cwd=tmp_path
    )
    try:
        process.wait_ready()
        assert process.samples()[("deepseek_up", frozenset({("account", "prod")}))] == 1
        assert process.stop() == 0
    finally:
        output = process.output()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "storage" in line]
    assert len(lines) == 1 and f"cannot use {tmp_path / 'a-file'}" in lines[0], output


def test_a_second_process_on_the_same_store_refuses_with_one_line(
    tmp_path: Path, sim: Simulator
) -> None:
    config = fast_polls(tmp_path, sim)
    first = Process("--config.file", str(config), cwd=tmp_path)
    try:
        first.wait_ready()
        second = Process("--config.file", str(config), cwd=tmp_path)
        assert second.popen.wait(20) == 1
        lines = second.output().strip().splitlines()
        assert len(lines) == 1, lines
        assert "storage data is in use by another process (pid" in lines[0]
        assert "give each exporter its own --storage.path" in lines[0]
        # the first one is unaffected
        assert first.samples()[("deepseek_up", frozenset({("account", "prod")}))] == 1
        assert first.stop() == 0
    finally:
        first.output()


def test_a_proxy_only_replica_needs_no_store(tmp_path: Path, sim: Simulator) -> None:
    config = tmp_path / "c.yml"
    config.write_text(
        f"deepseek: {{base_url: '{sim.base_url}'}}\n"
        f"balance: {{poll_interval: 0s}}\naccounts:\n{PROD}    currency: CNY\n"
    )
    process = Process("--config.file", str(config), cwd=tmp_path, env=ENV)
    try:
        process.wait_ready()
        assert process.stop() == 0
    finally:
        process.output()
    assert not (tmp_path / "data").exists()

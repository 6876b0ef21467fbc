"""The history store: round trips, compaction, retention, damage, versions and the lock."""

from __future__ import annotations

import logging
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.balance.forecast import MIN_RETENTION, RESOLUTION, SpendTracker
from exporter.balance.poller import AccountState
from exporter.balance.store import FILENAME, SCHEMA_VERSION, HistoryStore, StorageLocked
from exporter.config import AccountConfig, Secret

NOW = 1_790_000_000.0
DAY = 86400.0


def open_store(directory: Path, now: float = NOW) -> HistoryStore:
    store = HistoryStore.open(directory, MIN_RETENTION, clock=lambda: now)
    assert store is not None
    return store


def state_with(store: HistoryStore | None, name: str = "prod") -> AccountState:
    state = AccountState(account=AccountConfig(name, Secret("k")), retention=MIN_RETENTION)
    state.store = store
    state.restore()
    return state


def observe(state: AccountState, at: float, balance: str, currency: str = "CNY") -> None:
    from exporter.balance.client import BalanceReply, CurrencyBalance

    amount = Decimal(balance)
    reply = BalanceReply(True, (CurrencyBalance(currency, amount, Decimal(0), amount),))
    state.record_success(reply, at, 0.01)


def test_a_restarted_state_continues_exactly(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = state_with(store)
    for i in range(3000):  # a poll a minute for two days, with a top-up
        balance = Decimal(1000) - Decimal(i) / 100 + (50 if i > 2000 else 0)
        observe(state, NOW + i * 60, str(balance))
    store.close()

    again = state_with(open_store(tmp_path, NOW + 3000 * 60))
    before, after = state.trackers["CNY"], again.trackers["CNY"]
    assert after.points() == before.points()
    assert after.latest == before.latest
    # 2999 cents spent, less the one interval the top-up hides
    assert after.topups_total == 1 and after.spent_total == Decimal("29.98")
    now = NOW + 2999 * 60 + 30
    for window in (3600.0, 6 * 3600.0, DAY):
        assert after.burn_rate(window, now) == before.burn_rate(window, now)
    assert after.exhaustion_seconds(28 * DAY, now) == before.exhaustion_seconds(28 * DAY, now)


def test_one_row_per_five_minutes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = state_with(store)
    for i in range(600):  # ten hours, a poll every minute
        observe(state, NOW + i * 60, str(1000 - i))
    rows = store._db.execute("SELECT count(*) FROM points").fetchone()[0]
    assert rows == len({int((NOW + i * 60) // RESOLUTION) for i in range(600)}) == 121
    series = store.balance_series("prod", "CNY", since=0)
    assert len(series) == rows + 1  # and the latest
    assert series[0] == (NOW, Decimal(1000)) and series[-1] == (NOW + 599 * 60, Decimal(401))
    spend = store.spend_series("prod", "CNY", since=NOW + 3600)
    assert spend[0][0] >= NOW + 3600 and spend[-1] == (NOW + 599 * 60, Decimal(599))
    assert store.series() == [("prod", "CNY")]


def test_points_older_than_the_retention_are_dropped(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = state_with(store)
    for day in range(50):
        observe(state, NOW + day * DAY, str(1000 - day))
    kept = [at for at, _ in store.balance_series("prod", "CNY", since=0)]
    assert kept[0] >= NOW + 49 * DAY - MIN_RETENTION - 2 * DAY
    assert len(kept) <= 38


def test_currencies_and_accounts_are_kept_apart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    prod, other = state_with(store, "prod"), state_with(store, "other")
    observe(prod, NOW, "10", "CNY")
    observe(prod, NOW, "20", "USD")
    observe(other, NOW, "30", "CNY")
    assert store.series() == [("other", "CNY"), ("prod", "CNY"), ("prod", "USD")]
    restored = state_with(store, "prod")
    assert sorted(restored.trackers) == ["CNY", "USD"]
    assert restored.trackers["USD"].last_balance == Decimal(20)


def test_a_damaged_store_is_moved_aside_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with caplog.at_level(logging.INFO, logger="exporter.balance.store"):
        store = open_store(tmp_path)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    message = caplog.records[0].getMessage()
    assert str(tmp_path / FILENAME) in message and "moved it to history.db.damaged-" in message
    assert "\n" not in message
    aside = list(tmp_path.glob(f"{FILENAME}.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    observe(state_with(store), NOW, "5")  # and the new one works
    assert store.balance_series("prod", "CNY", 0) == [(NOW, Decimal(5))]


def test_a_store_of_a_newer_version_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path)
    observe(state_with(store), NOW, "5")
    store._db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    store.close()
    with caplog.at_level(logging.ERROR):
        again = open_store(tmp_path)
    assert "schema version 2, this exporter knows 1" in caplog.text
    assert again.series() == []
    assert len(list(tmp_path.glob(f"{FILENAME}.damaged-*"))) == 1


def test_a_foreign_sqlite_file_is_moved_aside(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    store = open_store(tmp_path)
    assert store.series() == []
    assert len(list(tmp_path.glob(f"{FILENAME}.damaged-*"))) == 1


def test_an_unusable_directory_means_memory_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "not-a-directory"
    file.write_text("x")
    with caplog.at_level(logging.ERROR):
        assert HistoryStore.open(file, MIN_RETENTION) is None
    assert len(caplog.records) == 1
    assert f"storage: cannot use {file}" in caplog.records[0].getMessage()
    state = state_with(None)  # and polling goes on without it
    observe(state, NOW, "5")
    assert state.trackers["CNY"].last_balance == Decimal(5)


def test_a_second_opener_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StorageLocked, match=r"in use by another process \(pid \d+\)"):
        HistoryStore.open(tmp_path, MIN_RETENTION)
    store.close()
    open_store(tmp_path).close()  # free again once closed


def test_a_tracker_without_a_store_is_unchanged() -> None:
    state = state_with(None)
    observe(state, NOW, "5")
    observe(state, NOW + 60, "4")
    tracker = state.trackers["CNY"]
    assert isinstance(tracker, SpendTracker) and tracker.spent_total == 1


def test_the_status_pages_week_of_balances_survives_a_restart(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    state = state_with(store)
    for i in range(2 * 24 * 12):  # two days, a poll every five minutes, then empty
        observe(state, NOW + i * 300, "0" if i >= 500 else str(1000 - i))
    before = state.history["CNY"].since(NOW - 1)
    store.close()
    again = state_with(open_store(tmp_path, NOW + 2 * DAY))
    assert again.history["CNY"].since(NOW - 1) == before
    assert again.history["CNY"].empty_since == state.history["CNY"].empty_since == NOW + 500 * 300

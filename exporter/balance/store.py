"""The balance history store: what the forecast and the spike baseline need, across restarts.

One SQLite file (``history.db``, standard library, no server) under ``--storage.path``, written
only by the process that polls balances. Per account and currency it keeps the first observation
of every 5-minute slot (the tracker's compaction, :mod:`exporter.balance.forecast`) for
``retention`` (five weeks by default), and the latest observation with its running totals: about
0.26 MB per account and currency and month, whatever the poll interval (measured by
bench/forecast_bench.py; README, "History that survives restarts").

Schema (version 1, in ``PRAGMA user_version``)::

    series(id, account, currency, at, balance, spent_total, topups_total)   the latest observation
    points(series, slot, at, balance, spent)                                 first of each slot

Amounts are exact decimal strings; ``spent`` is the cumulative spend since the series began
(top-ups excluded), so spend between any two points is a subtraction. A store written by a newer
version (a higher ``user_version``) or one SQLite cannot read is moved aside (``history.db.
damaged-<UTC time>``) with one log line, and a new one is started: a damaged store costs only
itself. Future schema changes add a step to ``_MIGRATIONS``.

Read API for other parts of the exporter (the status page's sparkline, reports)::

    store.series()                                   -> [(account, currency)]
    store.balance_series(account, currency, since)   -> [(unix time, balance)]
    store.spend_series(account, currency, since)     -> [(unix time, cumulative spend)]

A lock file (``lock``, ``flock``) keeps a second process off the same directory: it refuses to
start with one line instead of interleaving writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

from exporter.balance.forecast import RESOLUTION, Observation, slot_of
from exporter.clock import Clock

log = logging.getLogger(__name__)

FILENAME = "history.db"
LOCKFILE = "lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    currency TEXT NOT NULL,
    at REAL NOT NULL,
    balance TEXT NOT NULL,
    spent_total TEXT NOT NULL,
    topups_total INTEGER NOT NULL,
    UNIQUE (account, currency)
);
CREATE TABLE points (
    series INTEGER NOT NULL REFERENCES series (id),
    slot INTEGER NOT NULL,
    at REAL NOT NULL,
    balance TEXT NOT NULL,
    spent TEXT NOT NULL,
    PRIMARY KEY (series, slot)
) WITHOUT ROWID;
"""
# _MIGRATIONS[n] upgrades a store of version n to n + 1.
_MIGRATIONS: dict[int, str] = {}


class StorageLocked(Exception):
    """Another process holds the store's lock."""


class _Damaged(Exception):
    """The file is not a store this version can use."""


@dataclass(frozen=True, slots=True)
class StoredSeries:
    points: list[tuple[float, float]]  # (time, cumulative spend): the first of each slot
    latest: Observation


class HistoryStore:
    """An open store. Build with :meth:`open`; every method is cheap enough for the event loop
    (one small indexed write per poll and currency)."""

    def __init__(self, directory: Path, db: sqlite3.Connection, lock: IO[str], retention: float):
        self.directory = directory
        self.path = directory / FILENAME
        self.retention = retention
        self._db = db
        self._lock = lock
        self._ids: dict[tuple[str, str], int] = {}
        self._failing = False

    # ---- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: str | Path, retention: float, clock: Clock = time.time
    ) -> HistoryStore | None:
        """Open (or create) the store in ``directory``.

        Raises StorageLocked when another process uses it. Any other problem is logged in one
        line and returns None: the exporter then runs on, keeping history in memory only.
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock = _acquire_lock(directory / LOCKFILE)
        except OSError as err:
            log.error(
                "storage: cannot use %s (%s); history is kept in memory only",
                directory,
                err.strerror or err,
            )
            return None
        try:
            db = cls._connect(directory / FILENAME)
        except _Damaged as err:
            moved = _move_aside(directory / FILENAME)
            if moved is None:
                lock.close()
                return None
            log.error(
                "storage: %s is unusable (%s): moved it to %s and started a new store",
                directory / FILENAME,
                err,
                moved.name,
            )
            try:
                db = cls._connect(directory / FILENAME)
            except (_Damaged, OSError) as again:
                log.error("storage: cannot create %s (%s)", directory / FILENAME, again)
                lock.close()
                return None
        except OSError as err:
            log.error(
                "storage: cannot open %s (%s); history is kept in memory only",
                directory / FILENAME,
                err.strerror or err,
            )
            lock.close()
            return None
        store = cls(directory, db, lock, retention)
        store.expire(clock())
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            raise OSError(str(err)) from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Damaged(f"integrity check: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                _apply(db, _SCHEMA, SCHEMA_VERSION)
                version = SCHEMA_VERSION
            if version > SCHEMA_VERSION or version == 0:
                raise _Damaged(f"schema version {version}, this exporter knows {SCHEMA_VERSION}")
            while version < SCHEMA_VERSION:
                _apply(db, _MIGRATIONS[version], version + 1)
                version += 1
            if tables and not {"series", "points"} <= tables:
                raise _Damaged("tables missing")
        except sqlite3.DatabaseError as err:
            db.close()
            raise _Damaged(str(err)) from None
        except _Damaged:
            db.close()
            raise
        return db

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._lock.close()

    # ---- writing ------------------------------------------------------------------------------

    def record(self, account: str, currency: str, latest: Observation) -> None:
        """Persist an observation the tracker accepted: it becomes the latest, and the first
        point of its slot if the slot has none yet."""
        try:
            with _transaction(self._db):
                series = self._series_id(account, currency, latest)
                self._db.execute(
                    "UPDATE series SET at=?, balance=?, spent_total=?, topups_total=? WHERE id=?",
                    (
                        latest.at,
                        str(latest.balance),
                        str(latest.spent_total),
                        latest.topups_total,
                        series,
                    ),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO points (series, slot, at, balance, spent) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        series,
                        slot_of(latest.at),
                        latest.at,
                        str(latest.balance),
                        str(latest.spent_total),
                    ),
                )
                # Expire as we go: one indexed range delete, usually of nothing.
                self._db.execute(
                    "DELETE FROM points WHERE series=? AND slot<?",
                    (series, self._oldest_slot(latest.at)),
                )
        except sqlite3.Error as err:
            if not self._failing:
                log.error(
                    "storage: cannot write %s (%s); history continues in memory", self.path, err
                )
            self._failing = True
            return
        if self._failing:
            log.info("storage: writing %s again", self.path)
            self._failing = False

    def _series_id(self, account: str, currency: str, latest: Observation) -> int:
        key = (account, currency)
        if key not in self._ids:
            row = self._db.execute(
                "SELECT id FROM series WHERE account=? AND currency=?", key
            ).fetchone()
            if row is None:
                cursor = self._db.execute(
                    "INSERT INTO series (account, currency, at, balance, spent_total, "
                    "topups_total) VALUES (?, ?, ?, ?, ?, ?)",
                    (account, currency, latest.at, str(latest.balance), "0", 0),
                )
                row = (cursor.lastrowid,)
            self._ids[key] = int(row[0])
        return self._ids[key]

    def _oldest_slot(self, now: float) -> int:
        # One slot older than the retention, so that the oldest window stays covered.
        return slot_of(now - self.retention) - 1

    def expire(self, now: float) -> None:
        """Drop points older than the retention, for every series (done at start-up)."""
        with contextlib.suppress(sqlite3.Error), _transaction(self._db):
            self._db.execute("DELETE FROM points WHERE slot<?", (self._oldest_slot(now),))

    # ---- reading ------------------------------------------------------------------------------

    def load(self, account: str, currency: str) -> StoredSeries | None:
        """What a tracker needs to continue where the last process stopped, if anything."""
        try:
            row = self._db.execute(
                "SELECT id, at, balance, spent_total, topups_total FROM series "
                "WHERE account=? AND currency=?",
                (account, currency),
            ).fetchone()
            if row is None:
                return None
            series, at, balance, spent_total, topups_total = row
            points = [
                (float(p_at), float(Decimal(spent)))
                for p_at, spent in self._db.execute(
                    "SELECT at, spent FROM points WHERE series=? ORDER BY slot", (series,)
                )
            ]
            latest = Observation(float(at), Decimal(balance), Decimal(spent_total), topups_total)
        except (sqlite3.Error, ArithmeticError, ValueError) as err:
            log.error("storage: cannot read %s/%s from %s (%s)", account, currency, self.path, err)
            return None
        return StoredSeries(points, latest)

    def currencies(self, account: str) -> list[str]:
        try:
            rows = self._db.execute(
                "SELECT currency FROM series WHERE account=? ORDER BY currency", (account,)
            ).fetchall()
        except sqlite3.Error:
            return []
        return [r[0] for r in rows]

    def series(self) -> list[tuple[str, str]]:
        """Every (account, currency) with stored history."""
        rows = self._db.execute("SELECT account, currency FROM series ORDER BY account, currency")
        return [(a, c) for a, c in rows]

    def balance_series(
        self, account: str, currency: str, since: float
    ) -> list[tuple[float, Decimal]]:
        """(time, balance) at the stored resolution (5 minutes) from ``since``, and the latest."""
        return [(at, Decimal(b)) for at, b in self._column(account, currency, since, "balance")]

    def spend_series(
        self, account: str, currency: str, since: float
    ) -> list[tuple[float, Decimal]]:
        """(time, cumulative spend) from ``since``, and the latest; differences are spend."""
        return [(at, Decimal(s)) for at, s in self._column(account, currency, since, "spent")]

    def _column(
        self, account: str, currency: str, since: float, column: str
    ) -> Iterator[tuple[float, str]]:
        latest_column = "spent_total" if column == "spent" else "balance"
        row = self._db.execute(
            f"SELECT id, at, {latest_column} FROM series WHERE account=? AND currency=?",
            (account, currency),
        ).fetchone()
        if row is None:
            return
        series, latest_at, latest_value = row
        for at, value in self._db.execute(
            f"SELECT at, {column} FROM points WHERE series=? AND slot>=? ORDER BY slot",
            (series, math.floor(since / RESOLUTION)),
        ):
            if at >= since and at < latest_at:
                yield at, value
        if latest_at >= since:
            yield latest_at, latest_value


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _apply(db: sqlite3.Connection, script: str, version: int) -> None:
    """Run a schema script and set the version, all or nothing."""
    with _transaction(db):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={version}")


def _acquire_lock(path: Path) -> IO[str]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StorageLocked(
            f"storage {path.parent} is in use by another process{who}: give each exporter its "
            "own --storage.path"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _move_aside(path: Path) -> Path | None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    try:
        path.rename(target)
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            if extra.exists():
                extra.rename(target.with_name(target.name + suffix))
    except OSError as err:
        log.error(
            "storage: %s is unusable and cannot be moved aside (%s); history is kept in memory "
            "only",
            path,
            err.strerror or err,
        )
        return None
    return target

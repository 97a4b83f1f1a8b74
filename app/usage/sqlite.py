"""The embedded ledger: one SQLite file in the state directory, in WAL mode, shared by every worker of a pod.

Each process writes with a connection of its own (WAL lets readers go on meanwhile; writers of other workers
wait up to `CMP_USAGE_TIMEOUT` for the lock), so rows of all workers land in one file and every worker's
budget checks read them. The schema is created on first use.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from app.errors import SettingsError, UsageUnavailable
from app.usage.ledger import COLUMNS, GROUPS, REPORT_SELECT, Ledger, Row, daily_totals, report_rows, row_values

DB_NAME = "usage.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_calls (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT,
    context TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    served_model TEXT,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cached_tokens INTEGER,
    reasoning_tokens INTEGER,
    estimated INTEGER NOT NULL,
    cost_usd REAL,
    latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_calls_ts ON usage_calls (ts);
CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    usd REAL NOT NULL,
    PRIMARY KEY (kind, name, day)
) WITHOUT ROWID;
"""
_INSERT = f"INSERT INTO usage_calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
_ADD_DAY = """
    INSERT INTO usage_daily (day, kind, name, tokens, usd) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (kind, name, day) DO UPDATE SET tokens = tokens + excluded.tokens, usd = usd + excluded.usd
"""


class SQLiteLedger(Ledger):
    def __init__(self, state_dir: Path, timeout: float) -> None:
        super().__init__()
        self.path = state_dir / DB_NAME
        self.where = str(self.path)
        self.timeout = timeout
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(SCHEMA)
            conn.close()
        except (OSError, sqlite3.Error) as exc:
            raise SettingsError(
                f"the usage ledger {self.where} cannot be written ({exc}); set CMP_STATE_DIR to a writable "
                "directory, CMP_USAGE_URL to a PostgreSQL database, or CMP_USAGE_URL=off"
            ) from None
        self._writer_conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _reset_connections(self) -> None:
        self._writer_conn = self._reader = None
        self._read_lock = threading.Lock()

    def _write(self, rows: list[Row]) -> None:
        if self._writer_conn is None:
            self._writer_conn = self._connect()
        conn = self._writer_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, [row_values(row) for row in rows])
            conn.executemany(_ADD_DAY, [(*key, int(t), u) for key, (t, u) in daily_totals(rows).items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            try:
                if self._reader is None:
                    self._reader = self._connect()
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise UsageUnavailable(f"usage ledger {self.where} cannot be read ({exc})") from None

    def spent(self, kind: str, name: str, first_day: str) -> tuple[float, float]:
        (found,) = self._read(
            "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM usage_daily"
            " WHERE kind = ? AND name = ? AND day >= ?",
            (kind, name, first_day),
        )
        return float(found[0]), float(found[1])

    def totals(self, kind: str, first_day: str) -> dict[str, tuple[float, float]]:
        found = self._read(
            "SELECT name, SUM(tokens), SUM(usd) FROM usage_daily WHERE kind = ? AND day >= ? GROUP BY name",
            (kind, first_day),
        )
        return {name: (float(tokens), float(usd)) for name, tokens, usd in found}

    def report(self, since: float, until: float, by: str, tenant: str | None) -> list[dict[str, Any]]:
        group = "strftime('%Y-%m-%d', ts, 'unixepoch')" if by == "day" else GROUPS[by]
        sql = REPORT_SELECT.format(group=group, p="?", tenant="AND tenant = ?" if tenant is not None else "")
        params = (since, until) if tenant is None else (since, until, tenant)
        return report_rows(self._read(sql, params))

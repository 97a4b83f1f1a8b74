"""The embedded ledger: one SQLite file in the state directory, in WAL mode, shared by every worker of a pod.

Each process writes with a connection of its own (WAL lets readers go on meanwhile; writers of other workers
wait up to `CMP_USAGE_TIMEOUT` for the lock), so rows of all workers land in one file and every worker's
budget checks read them. Opening creates the schema, or upgrades a file of an earlier release in place
(`app.sqlite_files`: safe when every worker opens it at once).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from itertools import chain
from pathlib import Path
from typing import Any

from app.errors import SettingsError, UsageUnavailable
from app.sqlite_files import Schema, connect, is_busy, transaction
from app.usage.ledger import COLUMNS, GROUPS, REPORT_SELECT, Ledger, Row, daily_totals, report_rows

log = logging.getLogger(__name__)

DB_NAME = "usage.db"
# Version 1 is the first release's tables (no `user_version` set); 2 added the cache's savings to the rows.
SCHEMA = Schema(
    version=2,
    statements=(
        """
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
            outcome TEXT NOT NULL,
            saved_tokens INTEGER,
            saved_usd REAL
        )
        """,
        "CREATE INDEX IF NOT EXISTS usage_calls_ts ON usage_calls (ts)",
        """
        CREATE TABLE IF NOT EXISTS usage_daily (
            day TEXT NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            usd REAL NOT NULL,
            PRIMARY KEY (kind, name, day)
        ) WITHOUT ROWID
        """,
    ),
    columns=(("usage_calls", "saved_tokens", "INTEGER"), ("usage_calls", "saved_usd", "REAL")),
)
# Rows go in as few statements as a batch allows, each of many rows: SQLite hands the GIL back on every step, and
# `executemany` (a step per row) made the writer and the request threads trade it once per row, a context switch
# each, which cost a cached answer's request a fifth of its CPU. Statements of 2**n rows (at most `_MOST_ROWS`),
# so a handful are ever prepared, and within the parameters SQLite allows (32,766 since 3.32, 999 before).
_MOST_ROWS = 256
_ROW = f"({', '.join('?' * len(COLUMNS))})"
_INSERTS = {
    rows: f"INSERT INTO usage_calls ({', '.join(COLUMNS)}) VALUES {', '.join([_ROW] * rows)}"  # noqa: S608
    for rows in (2**n for n in range(_MOST_ROWS.bit_length()))
}
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
        writer: sqlite3.Connection | None = None
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            # Kept as the writer's: closing what may be the file's last connection checkpoints its whole WAL under
            # an exclusive lock, which every worker opening the file meanwhile waits for.
            writer = self._connect()
        except sqlite3.Error as exc:
            if not is_busy(exc):
                raise self._unwritable(exc) from None
            # Locked past the timeout (another process's last connection checkpointing a long WAL as it closes):
            # a ledger away for a while, as a database is (rows queue, budgets fail open), not a worker that
            # cannot boot. The writer opens it, and makes its schema, on its next try.
            log.warning("usage ledger locked at start, opened later", extra={"fields": {"ledger": self.where}})
        except OSError as exc:
            raise self._unwritable(exc) from None
        self._writer_conn = writer
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def _unwritable(self, exc: Exception) -> SettingsError:
        return SettingsError(
            f"the usage ledger {self.where} cannot be written ({exc}); set CMP_STATE_DIR to a writable "
            "directory, CMP_USAGE_URL to a PostgreSQL database, or CMP_USAGE_URL=off"
        )

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self.timeout, SCHEMA)

    def _reset_connections(self) -> None:
        self._writer_conn = self._reader = None
        self._read_lock = threading.Lock()

    def _write(self, rows: list[Row]) -> None:
        if self._writer_conn is None:
            self._writer_conn = self._connect()
        conn = self._writer_conn
        most = min(_MOST_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS))
        with transaction(conn):
            start = 0
            while start < len(rows):
                count = 1 << (min(most, len(rows) - start).bit_length() - 1)  # the largest 2**n that fits
                chunk = rows[start : start + count]
                conn.execute(_INSERTS[count], list(chain.from_iterable(chunk)))
                start += count
            conn.executemany(_ADD_DAY, [(*key, int(t), u) for key, (t, u) in daily_totals(rows).items()])

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

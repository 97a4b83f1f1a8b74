"""Stored responses in one embedded SQLite file under the state directory, shared by a pod's workers (WAL).

Each thread of each process keeps its own connection (a sqlite3 connection must not cross gunicorn's fork),
opened by `app.sqlite_files` (however many workers open the file at once).
Waiting on another writer's lock is bounded by `CMP_MEMORY_TIMEOUT`; a database that is locked past it, or is
no database, is `StoreUnavailable` (503), never a hung thread or a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.config import Settings
from app.errors import StoreUnavailable
from app.responses_store.store import Purger, StoredResponse
from app.sqlite_files import Schema, connect, transaction

DB_NAME = "responses.db"
_SCHEMA = Schema(
    version=1,
    statements=(
        """
        CREATE TABLE IF NOT EXISTS stored_responses (
            tenant     TEXT NOT NULL,
            id         TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            response   TEXT NOT NULL,
            items      TEXT NOT NULL,
            PRIMARY KEY (tenant, id)
        )
        """,
        "CREATE INDEX IF NOT EXISTS stored_responses_expiry ON stored_responses (expires_at)",
    ),
)


class SQLiteResponseStore:
    """The tenants' stored responses in `<state dir>/responses.db`, created on first write."""

    system = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.state_path) / DB_NAME
        self.timeout = settings.memory_timeout
        self._local = threading.local()
        self._purger = Purger()

    def _connection(self) -> sqlite3.Connection:
        cache: dict[int, sqlite3.Connection] = self._local.__dict__.setdefault("connections", {})
        conn = cache.get(os.getpid())
        if conn is not None and not self.path.exists():
            conn.close()  # the file was removed (forgetting every response): start a new one
            conn = None
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Transactions are explicit; the timeout bounds every wait on a lock, opening's included.
            conn = connect(self.path, self.timeout, _SCHEMA)
            cache[os.getpid()] = conn
        return conn

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, every SQLite failure (locked too long, not a database) a `StoreUnavailable`."""
        try:
            yield self._connection()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the response store ({DB_NAME}) is unavailable: {exc}") from None
        except OSError as exc:
            raise StoreUnavailable(f"the response store ({DB_NAME}) cannot be created: {exc.strerror}") from None

    def put(self, stored: StoredResponse) -> None:
        row = (
            stored.tenant,
            stored.id,
            stored.created_at,
            stored.expires_at,
            json.dumps(stored.response),
            json.dumps(stored.items),
        )
        with self._open() as conn, transaction(conn):
            conn.execute("INSERT OR REPLACE INTO stored_responses VALUES (?, ?, ?, ?, ?, ?)", row)
            if self._purger.due():
                conn.execute("DELETE FROM stored_responses WHERE expires_at <= ?", (time.time(),))

    def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        with self._open() as conn:
            row = conn.execute(
                "SELECT created_at, expires_at, response, items FROM stored_responses"
                " WHERE tenant = ? AND id = ? AND expires_at > ?",
                (tenant, response_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, tenant, json.loads(row[2]), json.loads(row[3]), row[0], row[1])

    def delete(self, tenant: str, response_id: str) -> bool:
        with self._open() as conn:
            cursor = conn.execute(
                "DELETE FROM stored_responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                (tenant, response_id, time.time()),
            )
        return cursor.rowcount > 0

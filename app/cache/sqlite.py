"""The default cache: one SQLite file under the project's state directory, shared by every worker of a pod.

WAL lets the workers read while one writes; each thread of each process has its own connection, opened by
`app.sqlite_files` (however many open the file at once). The file is bounded (`max_bytes` of answers): past it,
the least recently used answers go first.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.cache.store import SEMANTIC_CANDIDATES, CacheStats, CacheUnavailable, Entry, best
from app.sqlite_files import Schema, connect

_SCHEMA = Schema(
    version=1,
    statements=(
        """
        CREATE TABLE IF NOT EXISTS answers (
            digest TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            context TEXT NOT NULL,
            scope TEXT NOT NULL,
            vector BLOB NOT NULL,
            value BLOB NOT NULL,
            size INTEGER NOT NULL,
            expires REAL NOT NULL,
            used REAL NOT NULL,
            hits INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX IF NOT EXISTS answers_used ON answers (used)",
        "CREATE INDEX IF NOT EXISTS answers_scope ON answers (scope, used) WHERE scope != ''",
        "CREATE INDEX IF NOT EXISTS answers_owner ON answers (tenant, context)",
    ),
)
LOCK_TIMEOUT = 2.0  # seconds a lookup or a write waits for another worker's lock (then a miss, counted)

TOUCH_SECONDS = 1.0


class SqliteCache:
    """Answers in `path`, at most `max_bytes` of them."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.location = str(path)
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._hits: dict[str, int] = {}  # hits not yet written (`_touch`)
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():  # a forked worker opens its own
            return held[1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, LOCK_TIMEOUT, _SCHEMA)  # every worker's threads open it at once
        self._local.conn = (os.getpid(), conn)
        return conn

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        with _guarded():
            conn = self._conn()
            now = time.time()
            row = conn.execute(
                "SELECT value, used FROM answers WHERE digest = ? AND tenant = ? AND context = ? AND expires > ?",
                (digest, tenant, context, now),
            ).fetchone()
            if row is None:
                return None
            self._touch(conn, digest, row[1], now)
            return bytes(row[0])

    def _touch(self, conn: sqlite3.Connection, digest: str, used: float, now: float) -> None:
        """Count a hit, and move the answer up the LRU at most once per `TOUCH_SECONDS`: a write per hit would
        cost a hit more than the render before it, and serialize the workers on the file's write lock."""
        with self._lock:
            hits = self._hits[digest] = self._hits.get(digest, 0) + 1
            if now - used < TOUCH_SECONDS:
                return
            del self._hits[digest]
        conn.execute("UPDATE answers SET used = ?, hits = hits + ? WHERE digest = ?", (now, hits, digest))

    def put(self, entry: Entry) -> None:
        with _guarded():
            conn = self._conn()
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO answers (digest, tenant, context, scope, vector, value, size, expires, used)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.digest,
                    entry.tenant,
                    entry.context,
                    entry.scope,
                    entry.vector,
                    entry.value,
                    len(entry.value) + len(entry.vector),
                    now + entry.ttl,
                    now,
                ),
            )
            self._evict(conn, now)

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        """Expired answers, then the least recently used ones until the file's answers fit `max_bytes`."""
        conn.execute("DELETE FROM answers WHERE expires <= ?", (now,))
        (total,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()
        if total <= self.max_bytes:
            return
        # In LRU order, every answer whose predecessors free less than the excess: just enough go.
        conn.execute(
            "DELETE FROM answers WHERE digest IN (SELECT digest FROM (SELECT digest,"
            " SUM(size) OVER (ORDER BY used, digest) - size AS before FROM answers) WHERE before < ?)",
            (total - self.max_bytes,),
        )

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        with _guarded():
            conn = self._conn()
            rows = conn.execute(
                "SELECT digest, vector, value, used FROM answers WHERE scope = ? AND tenant = ? AND context = ?"
                " AND expires > ? ORDER BY used DESC LIMIT ?",
                (scope, tenant, context, time.time(), SEMANTIC_CANDIDATES),
            ).fetchall()
            found = best([(bytes(packed), digest) for digest, packed, _, _ in rows], vector, threshold)
            if found is None:
                return None
            used, value = next((used, value) for digest, _, value, used in rows if digest == found)
            self._touch(conn, found, used, time.time())
            return bytes(value)

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        with _guarded():
            where, args = _owner(tenant, context)
            query = (
                "SELECT tenant, context, COUNT(*), SUM(size), SUM(hits) FROM answers"  # noqa: S608 - `where` is _owner's constants
                f" WHERE expires > ?{where} GROUP BY tenant, context ORDER BY tenant, context"
            )
            rows = self._conn().execute(query, (time.time(), *args))
            return [CacheStats(*row) for row in rows]

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        with _guarded():
            where, args = _owner(tenant, context)
            query = f"DELETE FROM answers WHERE 1 = 1{where}"  # noqa: S608 - `where` is _owner's constants
            return self._conn().execute(query, args).rowcount

    def close(self) -> None:
        held = getattr(self._local, "conn", None)
        if held is not None:
            held[1].close()
            self._local.conn = None


@contextmanager
def _guarded() -> Iterator[None]:
    """SQLite's failures (a file locked past the busy timeout, a full disk) as `CacheUnavailable`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise CacheUnavailable(type(exc).__name__) from None


def _owner(tenant: str | None, context: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (after other conditions) naming a tenant's, a context's, or both's answers."""
    where, args = "", ()  # type: tuple[str, tuple[str, ...]]
    if tenant is not None:
        where, args = " AND tenant = ?", (tenant,)
    if context is not None:
        where, args = f"{where} AND context = ?", (*args, context)
    return where, args

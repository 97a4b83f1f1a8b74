"""The default cache: one SQLite file under the project's state directory, shared by every worker of a pod.

WAL lets the workers read while one writes; each thread of each process has its own connection, opened by
`app.sqlite_files` (however many open the file at once), and again when the file it reads is no longer the one
at its path (deleted or replaced while serving). The answers a worker read lately stay in its memory too
(`NEAR_BYTES` of them), served without reading the file for as long as no other connection has written to it.
A worker looks at that (SQLite's `data_version`, and the file's inode) once per `NEAR_CHECK`, not on every hit:
a look is a statement and a system call, which cost a hit under load more than the rest of its lookup. So a
clear, an eviction or a refresh by another worker is seen within `NEAR_CHECK`, the worker's own at once.
The file is bounded (`max_bytes` of answers, a running total kept by triggers): past it, the least recently used
answers go first, a few rows through an index, so a put costs the same in a full cache of a million answers as
in an empty one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from app.cache.store import SEMANTIC_CANDIDATES, CacheStats, CacheUnavailable, Entry, best
from app.sqlite_files import Schema, connect, transaction

# `total` holds the bytes of every answer, kept by the triggers, so a put never sums the table: created with the
# total of the rows already there (summed only when it is created), in the one transaction of the upgrade.
_SCHEMA = Schema(
    version=2,  # 2: `total`, its triggers and the index on `expires`
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
        "CREATE INDEX IF NOT EXISTS answers_expires ON answers (expires)",
        "CREATE INDEX IF NOT EXISTS answers_scope ON answers (scope, used) WHERE scope != ''",
        "CREATE INDEX IF NOT EXISTS answers_owner ON answers (tenant, context)",
        "CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO total SELECT 1, COALESCE(SUM(size), 0) FROM answers"
        " WHERE NOT EXISTS (SELECT 1 FROM total)",
        "CREATE TRIGGER IF NOT EXISTS answers_added AFTER INSERT ON answers"
        " BEGIN UPDATE total SET bytes = bytes + NEW.size WHERE id = 1; END",
        "CREATE TRIGGER IF NOT EXISTS answers_removed AFTER DELETE ON answers"
        " BEGIN UPDATE total SET bytes = bytes - OLD.size WHERE id = 1; END",
    ),
)

TOUCH_SECONDS = 1.0
LOCK_TIMEOUT = 0.5  # seconds a call waits for another writer, as long as a Redis call may take: then a miss
PENDING_HITS = 1024  # hits held in memory (`_touch`) before they are written at once
CLOCK_SLACK = 60.0  # an answer used further in the future than this was stamped by a clock since set back
NEAR_BYTES = 8 * 1024 * 1024  # answers a worker keeps in memory, the most recently read, while the file is unchanged
NEAR_CHECK = 0.05  # seconds between a worker's looks at whether another connection wrote to the file
BATCH = 1000  # rows deleted per transaction by `clear` and by expiry, so no writer waits on one long delete


@dataclass
class _Held:
    pid: int  # a forked worker opens its own
    inode: tuple[int, int]  # (device, inode) of the file it opened
    conn: sqlite3.Connection
    seen: int = -1  # the connection's `data_version` when it last looked: another changes when anyone else writes


@dataclass(frozen=True)
class _Near:
    """An answer read from the file, as it was: whose, its value, when it expires, when it was last moved up the LRU."""

    tenant: str
    context: str
    value: bytes
    expires: float
    used: float


class SqliteCache:
    """Answers in `path`, at most `max_bytes` of them."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.location = str(path)
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._hits: dict[str, int] = {}  # hits not yet written (`_touch`)
        self._lock = threading.Lock()
        self._near: OrderedDict[str, _Near] = OrderedDict()  # digest → answer, least recently read first
        self._near_bytes = 0
        self._generation = 0  # bumped when the near copy is forgotten, so a read begun before keeps nothing
        self._look_at = 0.0  # when (time.monotonic) a lookup next looks at the file for other connections' writes

    def _conn(self) -> sqlite3.Connection:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.pid == os.getpid() and _inode(self.path) == held.inode:
            return held.conn
        if held is not None and held.pid == os.getpid():  # the file was deleted or replaced: read the new one
            held.conn.close()
        self._local.held = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, LOCK_TIMEOUT, _SCHEMA)  # every worker's threads open it at once
        inode = _inode(self.path)
        if inode is None:  # deleted again as it was opened: the next call tries anew
            conn.close()
            raise sqlite3.OperationalError("the cache file vanished while it was opened")
        self._local.held = _Held(os.getpid(), inode, conn)
        self._forget()  # what changed before this connection opened, it cannot tell
        return conn

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        with _guarded:
            generation = self._unchanged()
            now = time.time()
            with self._lock:
                near = self._near.get(digest)
                if near is not None:
                    self._near.move_to_end(digest)
            live = near is not None and near.expires > now and near.used <= now + CLOCK_SLACK
            if near is not None and live and (near.tenant, near.context) == (tenant, context):
                used = self._touch(None, digest, near.used, now)
                if used != near.used:
                    self._keep(digest, _Near(tenant, context, near.value, near.expires, used), generation)
                return near.value
            return self._get(self._conn(), tenant, context, digest, generation)

    def _unchanged(self) -> int:
        """The near copy's generation, once it is forgotten if another connection wrote to the file since this
        thread's connection last looked (SQLite's `data_version` changes then, never for the connection's own
        writes) or the file at the path is another (`_conn` reopens, and forgets); at most once per `NEAR_CHECK`."""
        now = time.monotonic()
        if now < self._look_at:
            return self._generation
        self._conn()
        held: _Held = self._local.held
        (version,) = held.conn.execute("PRAGMA data_version").fetchone()
        if version != held.seen:  # `held` is this thread's own
            held.seen = version
            self._forget()
        # Only once the look is done: the threads that come meanwhile look too, none serves what it has not seen.
        self._look_at = now + NEAR_CHECK
        return self._generation

    def _forget(self) -> None:
        with self._lock:
            self._near.clear()
            self._near_bytes = 0
            self._generation += 1

    def _keep(self, digest: str, near: _Near, generation: int) -> None:
        """Keep an answer near, unless the copy was forgotten since it was read (it may be gone from the file)."""
        size = len(near.value)
        with self._lock:
            if generation != self._generation or size > NEAR_BYTES:
                return
            old = self._near.pop(digest, None)
            self._near_bytes += size - (len(old.value) if old else 0)
            self._near[digest] = near
            while self._near_bytes > NEAR_BYTES:
                _, gone = self._near.popitem(last=False)
                self._near_bytes -= len(gone.value)

    def _get(
        self, conn: sqlite3.Connection, tenant: str, context: str, digest: str, generation: int | None = None
    ) -> bytes | None:
        now = time.time()
        row = conn.execute(
            "SELECT value, used, expires FROM answers WHERE digest = ? AND tenant = ? AND context = ?"
            " AND expires > ? AND used <= ?",
            (digest, tenant, context, now, now + CLOCK_SLACK),
        ).fetchone()
        if row is None:
            return None
        value = bytes(row[0])
        used = self._touch(conn, digest, row[1], now)
        if generation is not None:
            self._keep(digest, _Near(tenant, context, value, row[2], used), generation)
        return value

    def _touch(self, conn: sqlite3.Connection | None, digest: str, used: float, now: float) -> float:
        """Count a hit, and move the answer up the LRU at most once per `TOUCH_SECONDS` (or when the clock went back):
        a write per hit would cost a hit more than the render before it, and serialize the workers on the file's
        write lock. A hit is served even when the write cannot be made (locked): its count waits for the next.
        Returns the answer's `used` after the touch."""
        with self._lock:
            if 0 <= now - used < TOUCH_SECONDS and len(self._hits) < PENDING_HITS:
                self._hits[digest] = self._hits.get(digest, 0) + 1
                return used
        conn = conn or self._conn()  # a near hit has none yet: when none can be had, the lookup fails uncounted
        with self._lock:
            pending, self._hits = self._hits, {}
        hits = pending.pop(digest, 0) + 1  # with the hits another thread's touch left, if any
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # a touch never waits: the hit is what the request needs
            with transaction(conn):
                conn.execute("UPDATE answers SET used = ?, hits = hits + ? WHERE digest = ?", (now, hits, digest))
                # Hits of other answers within their second go with it, so `_hits` stays bounded.
                others = [(count, other) for other, count in pending.items()]
                conn.executemany("UPDATE answers SET hits = hits + ? WHERE digest = ?", others)
            used = now
        except sqlite3.Error:
            with self._lock:  # counted at the next write; past the bound, hits of a locked file are dropped
                for other, count in {**pending, digest: hits}.items():
                    if len(self._hits) < PENDING_HITS:
                        self._hits[other] = self._hits.get(other, 0) + count
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(LOCK_TIMEOUT * 1000)}")
        return used

    def put(self, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:  # it would evict every other answer, then itself
            return
        with _guarded:
            conn = self._conn()
            now = time.time()
            with transaction(conn):
                conn.execute("DELETE FROM answers WHERE digest = ?", (entry.digest,))
                conn.execute(
                    "INSERT INTO answers (digest, tenant, context, scope, vector, value, size, expires, used)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.digest,
                        entry.tenant,
                        entry.context,
                        entry.scope,
                        entry.vector,
                        entry.value,
                        size,
                        now + entry.ttl,
                        now,
                    ),
                )
                self._evict(conn, now)
            self._forget()  # it may have evicted answers kept near

    def _evict(self, conn: sqlite3.Connection, now: float) -> None:
        """Expired answers (and those stamped by a clock since set back), then the least recently used until the
        answers fit `max_bytes`: each through an index, a bounded number of rows per put."""
        for condition, bound in (("expires <= ?", now), ("used > ?", now + CLOCK_SLACK)):
            conn.execute(
                f"DELETE FROM answers WHERE digest IN (SELECT digest FROM answers WHERE {condition} LIMIT ?)",  # noqa: S608 - constants
                (bound, BATCH),
            )
        (excess,) = conn.execute("SELECT bytes - ? FROM total", (self.max_bytes,)).fetchone()
        while excess > 0:
            rows = conn.execute("SELECT digest, size FROM answers ORDER BY used, digest LIMIT 64").fetchall()
            if not rows:
                return
            gone = []
            for digest, size in rows:
                gone.append((digest,))
                excess -= size
                if excess <= 0:
                    break
            conn.executemany("DELETE FROM answers WHERE digest = ?", gone)

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        with _guarded:
            conn = self._conn()
            now = time.time()
            rows = conn.execute(  # vectors only: the answers of a thousand candidates can weigh megabytes each
                "SELECT digest, vector FROM answers WHERE scope = ? AND tenant = ? AND context = ?"
                " AND expires > ? AND used <= ? ORDER BY used DESC LIMIT ?",
                (scope, tenant, context, now, now + CLOCK_SLACK, SEMANTIC_CANDIDATES),
            ).fetchall()
            found = best([(bytes(packed), digest) for digest, packed in rows], vector, threshold)
            return None if found is None else self._get(conn, tenant, context, found)

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        with _guarded:
            where, args = _owner(tenant, context)
            now = time.time()
            query = (
                "SELECT tenant, context, COUNT(*), SUM(size), SUM(hits) FROM answers"  # noqa: S608 - `where` is _owner's constants
                f" WHERE expires > ? AND used <= ?{where} GROUP BY tenant, context ORDER BY tenant, context"
            )
            rows = self._conn().execute(query, (now, now + CLOCK_SLACK, *args))
            return [CacheStats(*row) for row in rows]

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        """A batch per transaction: the workers serving meanwhile wait for one batch at most, never the whole."""
        with _guarded:
            where, args = _owner(tenant, context)
            query = (
                "DELETE FROM answers WHERE digest IN"  # noqa: S608 - `where` is _owner's constants
                f" (SELECT digest FROM answers WHERE 1 = 1{where} LIMIT {BATCH})"
            )
            conn, removed = self._conn(), 0
            while True:
                count = conn.execute(query, args).rowcount
                removed += count
                if count < BATCH:
                    self._forget()
                    return removed

    def close(self) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            held.conn.close()
            self._local.held = None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class _Guarded:
    """SQLite's failures (a file locked past the busy timeout, a full disk) and the file system's (a state directory
    that cannot be made) as `CacheUnavailable`; a class, not a generator: it is entered on every hit."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(exc, sqlite3.Error | OSError):
            raise CacheUnavailable(type(exc).__name__) from None


_guarded = _Guarded()


def _owner(tenant: str | None, context: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (after other conditions) naming a tenant's, a context's, or both's answers."""
    where, args = "", ()  # type: tuple[str, tuple[str, ...]]
    if tenant is not None:
        where, args = " AND tenant = ?", (tenant,)
    if context is not None:
        where, args = f"{where} AND context = ?", (*args, context)
    return where, args

"""SQLite connections of one process, bounded: a few idle ones per store, the least recently used closed first.

A connection kept per (thread, store) for ever cost a file descriptor for the database and one for its WAL,
plus SQLite's page cache and map, for every store a thread had touched: with many tenants a worker ran out of
file descriptors (every chat a 500) and memory. Here a connection is leased for one operation and comes back;
at most ``IDLE_PER_STORE`` stay open per store and ``IDLE_TOTAL`` in the process, and one idle longer than
``IDLE_SECONDS`` is closed at the next lease or return. A shortage of file descriptors when opening closes
every idle connection and tries once more, so the worker recovers as soon as descriptors are free again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.errors import MemoryUnavailable

IDLE_PER_STORE = 4
IDLE_TOTAL = 32
IDLE_SECONDS = 60.0


class SqlitePool:
    """Idle connections by database path, most recently returned last; a lease takes the newest of its path."""

    def __init__(self, configure: Callable[[sqlite3.Connection], None]) -> None:
        self._configure = configure
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # (path, serial) -> (connection, returned at); OrderedDict keeps the least recently returned first.
        self._idle: OrderedDict[tuple[str, int], tuple[sqlite3.Connection, float]] = OrderedDict()
        self._serial = 0

    @contextmanager
    def lease(self, path: Path) -> Iterator[sqlite3.Connection]:
        """A connection to ``path`` for one operation; it goes back idle unless a transaction was left open."""
        conn = self._take(str(path)) or self._open(path)
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.close()
            else:
                self._give(str(path), conn)

    def _take(self, key: str) -> sqlite3.Connection | None:
        with self._lock:
            self._forget_parent()
            expired = self._expire(time.monotonic())
            found = next((idle_key for idle_key in reversed(self._idle) if idle_key[0] == key), None)
            conn = self._idle.pop(found)[0] if found else None
        for old in expired:
            old.close()
        return conn

    def _open(self, path: Path) -> sqlite3.Connection:
        """A new connection; when the process is out of file descriptors, the idle ones are closed first."""
        try:
            return self._connect(path)
        except sqlite3.OperationalError:
            if not self.close_idle():
                raise
        try:
            return self._connect(path)
        except sqlite3.OperationalError as exc:
            if "unable to open" in str(exc):  # out of file descriptors: another moment may have some
                raise MemoryUnavailable(f"memory store {path.name} cannot be opened now ({exc})") from None
            raise

    def _connect(self, path: Path) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in the backend.
        # check_same_thread=False: a connection serves one lease at a time, whichever thread holds it.
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            self._configure(conn)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _give(self, key: str, conn: sqlite3.Connection) -> None:
        now = time.monotonic()
        surplus: list[sqlite3.Connection] = []
        with self._lock:
            if os.getpid() != self._pid:
                surplus.append(conn)
            else:
                self._serial += 1
                self._idle[(key, self._serial)] = (conn, now)
                same = [idle_key for idle_key in self._idle if idle_key[0] == key]
                for idle_key in same[: max(0, len(same) - IDLE_PER_STORE)]:
                    surplus.append(self._idle.pop(idle_key)[0])
                while len(self._idle) > IDLE_TOTAL:
                    surplus.append(self._idle.popitem(last=False)[1][0])
                surplus += self._expire(now)
        for extra in surplus:
            extra.close()

    def _expire(self, now: float) -> list[sqlite3.Connection]:
        """Take out the connections idle longer than IDLE_SECONDS (the oldest are first); the caller closes them."""
        expired = []
        while self._idle:
            key, (conn, returned) = next(iter(self._idle.items()))
            if now - returned <= IDLE_SECONDS:
                break
            del self._idle[key]
            expired.append(conn)
        return expired

    def _forget_parent(self) -> None:
        """After a fork, the parent's connections are not ours to use or close."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._idle.clear()

    def close_idle(self, path: Path | None = None) -> int:
        """Close the idle connections (of ``path`` only, when given); how many were closed."""
        with self._lock:
            self._forget_parent()
            keys = [key for key in self._idle if path is None or key[0] == str(path)]
            closing = [self._idle.pop(key)[0] for key in keys]
        for conn in closing:
            conn.close()
        return len(closing)

    def idle(self) -> int:
        """How many connections are open and idle in this process."""
        with self._lock:
            return len(self._idle)

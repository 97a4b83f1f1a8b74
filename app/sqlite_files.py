"""Opening a SQLite file that several processes share: every worker of a pod, or two runtimes on one state directory.

Each such file (the usage ledger, the response cache, stored responses) needs WAL mode and its schema at the
current version. Done as `PRAGMA journal_mode=WAL` and a script of `CREATE ... IF NOT EXISTS` on every new
connection, both failed with "database is locked" when processes opened a file at once, busy timeout or not:

- Switching a new file to WAL reads its header, then upgrades that read lock to a write lock to change it; while
  another connection holds the file, SQLite refuses the upgrade at once (SQLITE_BUSY without calling the busy
  handler: waiting there could deadlock). Here the mode is read first (a read waits like any other) and switched
  only when the file is not in WAL yet, a refusal retried until the timeout.
- A schema of several statements took the write lock once per statement, each wait starting over behind a busy
  writer. Here the version (`PRAGMA user_version`) is read first: a file at it takes no write lock at all; one
  behind it takes one `BEGIN IMMEDIATE`, reads the version again (another process may have just upgraded it) and
  upgrades within that transaction, so a file is never half-upgraded and never upgraded twice.

The retries and SQLite's own waits share one deadline: opening takes at most `timeout`, then raises what SQLite said.
A lock held past it (the last connection of a file checkpoints its whole WAL as it closes, holding the file
exclusively meanwhile) is `is_busy`: the ledger then starts without its connection rather than fail a worker's boot.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BUSY = 5  # SQLITE_BUSY: the primary code of every busy refusal (BUSY_SNAPSHOT, BUSY_RECOVERY, ...)
FIRST_PAUSE, LONGEST_PAUSE = 0.002, 0.05  # seconds between retries of a refusal, doubling


@dataclass(frozen=True)
class Schema:
    """What a file holds at `version`: `statements` (each `CREATE ... IF NOT EXISTS`, so a file of an earlier version
    gets what it lacks) and the `columns` added to tables since their first release, as (table, column,
    declaration), which a table made before them gets with `ALTER TABLE ... ADD COLUMN`."""

    version: int
    statements: tuple[str, ...]
    columns: tuple[tuple[str, str, str], ...] = ()


def connect(path: Path, timeout: float, schema: Schema) -> sqlite3.Connection:
    """A connection to `path` (created when absent) in WAL mode with `schema`, whatever other processes are doing.

    Transactions are explicit (`isolation_level=None`); any thread may use the connection, one at a time."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        _within(deadline, conn, lambda: _use_wal(conn))
        conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints: no fsync per commit
        if _version(conn) < schema.version:
            _within(deadline, conn, lambda: _upgrade(conn, schema))
        conn.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the file of `conn` in WAL mode (a no-op for one in it already) within `timeout`; for a connection that
    makes its schema on its own terms (memory's)."""
    _within(time.monotonic() + timeout, conn, lambda: _use_wal(conn))
    conn.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")


def _within(deadline: float, conn: sqlite3.Connection, step: Callable[[], None]) -> None:
    """Run `step`, again while SQLite refuses it as busy and `deadline` (monotonic) allows; each of SQLite's own
    waits is bounded by the time left."""
    pause = FIRST_PAUSE
    while True:
        left = deadline - time.monotonic()
        conn.execute(f"PRAGMA busy_timeout = {max(1, round(left * 1000))}")
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + pause >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused for another connection's lock (held past the timeout, or not to be waited for)."""
    return exc.sqlite_errorcode & 0xFF == BUSY


def _use_wal(conn: sqlite3.Connection) -> None:
    # Reading the mode reads the file's header (waiting on locks like any read); only a change takes a write lock.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL").fetchall()


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction of a connection opened with `isolation_level=None`; IMMEDIATE takes the write lock up
    front, so a writer waits for another (`busy_timeout`) instead of failing on a lock upgrade halfway."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a COMMIT refused as busy leaves it open
            conn.execute("ROLLBACK")
        raise


def _upgrade(conn: sqlite3.Connection, schema: Schema) -> None:
    with transaction(conn):
        if _version(conn) < schema.version:
            for statement in schema.statements:
                conn.execute(statement)
            for table, column, declaration in schema.columns:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            conn.execute(f"PRAGMA user_version = {int(schema.version)}")

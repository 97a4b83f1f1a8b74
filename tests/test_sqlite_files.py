"""The SQLite files a pod's processes share, opened by many processes at once (issue 32's boot race).

A gunicorn worker failed to boot with "the usage ledger .../usage.db cannot be written (database is locked)":
several runtimes shared one state directory, one of them writing. Here processes released together by a barrier
open, round after round, a new file, a file of the previous release (its tables without a version, the ledger's
without the cache's columns) and a file another process writes in a loop, through each store's own code; and one
connection holds a new file's write lock while a store opens it. Before `app.sqlite_files`, SQLite refused the
switch of a new file to WAL at once (a read lock's upgrade is not waited for): in five runs the first test failed
every run for the ledger, the cache and stored responses (7 to 32 of 1120 opens each), two for memory; the
second fails every time for all four.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import FIRST_RELEASE_LEDGER

from app.cache.sqlite import SqliteCache
from app.config import Settings
from app.memory.sqlite_schema import SCHEMA as MEMORY_SCHEMA
from app.memory.sqlite_schema import connection
from app.responses_store.sqlite import SQLiteResponseStore
from app.usage.sqlite import SQLiteLedger

PROCESSES = 8
NEW_ROUNDS = 100  # rounds of a new file each
ROUNDS = 20  # rounds of a file of the previous release each, and of the file another process writes
HELD = 0.3  # seconds another connection holds a new file's write lock
TIMEOUT = 2.0  # the stores' default lock timeouts (CMP_USAGE_TIMEOUT, CMP_MEMORY_TIMEOUT, the cache's)

# The previous release's files: their tables, without a `user_version`.
FIRST_CACHE = """
CREATE TABLE answers (digest TEXT PRIMARY KEY, tenant TEXT NOT NULL, context TEXT NOT NULL, scope TEXT NOT NULL,
    vector BLOB NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL, expires REAL NOT NULL, used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0);
CREATE INDEX answers_used ON answers (used);
CREATE INDEX answers_scope ON answers (scope, used) WHERE scope != '';
CREATE INDEX answers_owner ON answers (tenant, context);
"""
FIRST_RESPONSES = """
CREATE TABLE stored_responses (tenant TEXT NOT NULL, id TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, response TEXT NOT NULL, items TEXT NOT NULL, PRIMARY KEY (tenant, id));
CREATE INDEX stored_responses_expiry ON stored_responses (expires_at);
"""


def open_ledger(directory: Path) -> None:
    # A ledger locked past its timeout starts without its connection (and logs it): here that is a failure.
    assert SQLiteLedger(directory, TIMEOUT)._writer_conn is not None, "the ledger was locked: opened later"


def open_cache(directory: Path) -> None:
    SqliteCache(directory / "cache.sqlite3", 1 << 20).get("acme", "SupportBot", "digest")


def open_responses(directory: Path) -> None:
    SQLiteResponseStore(Settings(project_root=directory, state_dir=directory)).get("acme", "resp_x")


def open_memory(directory: Path) -> None:
    with connection(directory / "memory.db", create=True) as conn:
        assert conn is not None
        conn.execute("SELECT count(*) FROM chunks").fetchone()


# store -> (how a process opens it in a directory, its file there, that file as the previous release left it)
STORES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "ledger": (open_ledger, "usage.db", FIRST_RELEASE_LEDGER),
    "cache": (open_cache, "cache.sqlite3", FIRST_CACHE),
    "responses": (open_responses, "responses.db", FIRST_RESPONSES),
    "memory": (open_memory, "memory.db", MEMORY_SCHEMA),  # memory versions its own schema: the current one
}


def _write_in_a_loop(path: Path, started, stop) -> None:
    """Another runtime under load: short write transactions one after another on `path`, which it made."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE load (x BLOB)")
    started.set()
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO load VALUES (randomblob(2000))", [()] * 20)
        conn.execute("COMMIT")
        time.sleep(0.005)


def _open_every_round(store: str, root: Path, barrier, failures) -> None:
    opener = STORES[store][0]
    rounds = [("new", number) for number in range(NEW_ROUNDS)]
    rounds += [(kind, number) for number in range(ROUNDS) for kind in ("previous", "busy")]
    for kind, number in rounds:
        barrier.wait()
        try:
            opener(root / kind / (str(number) if kind != "busy" else ""))
        except Exception:  # what failed, for the assertion's message
            failures.put(f"{kind} file {number}: {traceback.format_exc(limit=1).splitlines()[-1]}")


def open_at_once(store: str, root: Path) -> list[str]:
    """Every failure of PROCESSES processes opening each file at the same moment, while another writes."""
    _, name, previous = STORES[store]
    for number in range(NEW_ROUNDS):
        (root / "new" / str(number)).mkdir(parents=True)
    for number in range(ROUNDS):
        (root / "previous" / str(number)).mkdir(parents=True)
        with sqlite3.connect(root / "previous" / str(number) / name) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(previous)
        conn.close()
    (root / "busy").mkdir()
    context = multiprocessing.get_context("fork")
    started, stop, failures = context.Event(), context.Event(), context.Queue()
    writer = context.Process(target=_write_in_a_loop, args=(root / "busy" / name, started, stop))
    writer.start()
    assert started.wait(10)
    barrier = context.Barrier(PROCESSES)
    openers = [
        context.Process(target=_open_every_round, args=(store, root, barrier, failures)) for _ in range(PROCESSES)
    ]
    for process in openers:
        process.start()
    for process in openers:
        process.join(120)
    stop.set()
    writer.join(10)
    assert [p.exitcode for p in openers] == [0] * PROCESSES and writer.exitcode == 0
    found = []
    while not failures.empty():
        found.append(failures.get())
    return found


@pytest.mark.parametrize("store", list(STORES))
def test_processes_opening_a_store_at_once_all_open_it(store: str, tmp_path: Path) -> None:
    failures = open_at_once(store, tmp_path)
    opens = (NEW_ROUNDS + 2 * ROUNDS) * PROCESSES
    assert failures == [], f"{len(failures)} of {opens} opens failed, e.g. {failures[:3]}"
    name = STORES[store][1]
    for path in [*tmp_path.glob(f"new/*/{name}"), *tmp_path.glob(f"previous/*/{name}")]:
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", path
    if store == "ledger":  # every file of the previous release upgraded once, its row kept
        for path in tmp_path.glob(f"previous/*/{name}"):
            with sqlite3.connect(path) as conn:
                columns = [row[1] for row in conn.execute("PRAGMA table_info(usage_calls)")]
                kept = conn.execute("SELECT request_id, saved_tokens, saved_usd FROM usage_calls").fetchall()
                assert columns[-2:] == ["saved_tokens", "saved_usd"] and kept == [("r-old", None, None)]
                assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


@pytest.mark.parametrize("store", list(STORES))
def test_a_new_file_another_connection_is_writing_is_waited_for_not_refused(store: str, tmp_path: Path) -> None:
    """The moment of the race, held open: a connection of another worker holds the write lock of a file not yet
    in WAL (as the first opener does while it switches it). SQLite refuses another's switch at once, busy
    timeout or not; opening waits for the lock instead, and ends well within the timeout."""
    opener, name, _ = STORES[store]
    holder = sqlite3.connect(tmp_path / name, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(HELD, holder.execute, ("COMMIT",)).start()
    started = time.monotonic()
    opener(tmp_path)
    assert HELD <= time.monotonic() - started < TIMEOUT
    holder.close()
    with sqlite3.connect(tmp_path / name) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

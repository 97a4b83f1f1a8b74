"""The response cache's stores as production meets them: an answer bigger than the bound, a semantic scope busier
than `SEMANTIC_CANDIDATES` (the same on every backend), and for SQLite a file deleted while serving, a clock set
back, a file locked by another writer, hits of many answers, a clear of more than one batch, a directory that
cannot be made."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from helpers_cache import CONTEXT

from app.cache import sqlite as sqlite_cache
from app.cache.memory import MemoryCache
from app.cache.redis import RedisCache
from app.cache.sqlite import BATCH, CLOCK_SLACK, PENDING_HITS, TOUCH_SECONDS, SqliteCache
from app.cache.store import SEMANTIC_CANDIDATES, CacheStore, CacheUnavailable, Entry, pack


def exact(digest: str, size: int = 10, tenant: str = "") -> Entry:
    return Entry(tenant, CONTEXT, digest, b"x" * size, 60)


def open_cache(kind: str, path: Path, max_bytes: int, request: pytest.FixtureRequest) -> CacheStore:
    if kind == "sqlite":
        return SqliteCache(path / "cache.sqlite3", max_bytes)
    if kind == "memory":
        return MemoryCache(max_bytes)
    return RedisCache(request.getfixturevalue("redis_server").url)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_an_answer_bigger_than_the_bound_is_not_kept_and_evicts_nothing(tmp_path, kind, request):
    cache = open_cache(kind, tmp_path, 3000, request)
    for name in "ab":
        cache.put(exact(name, 1000))
    cache.put(exact("huge", 3001))
    assert cache.get("", CONTEXT, "huge") is None
    assert [cache.get("", CONTEXT, name) for name in "ab"] == [b"x" * 1000] * 2
    for _ in range(5):  # the same answer kept again replaces itself: its bytes count once
        cache.put(exact("a", 1000))
    cache.put(exact("c", 1000))
    assert [cache.get("", CONTEXT, name) is not None for name in "abc"] == [True] * 3


@pytest.mark.parametrize("kind", ["sqlite", "memory", "redis"])
def test_a_scope_compares_its_most_recently_used_answers_only(tmp_path, kind, request):
    cache = open_cache(kind, tmp_path, 1 << 30, request)
    near, far = pack([1.0, 0.0, 0.0]), pack([0.0, 1.0, 0.0])

    def put(digest: str, vector: bytes) -> None:
        cache.put(Entry("acme", CONTEXT, digest, digest.encode(), 60, "scope", vector))

    put("first", far)  # the only answers near `far`
    put("second", far)
    for n in range(SEMANTIC_CANDIDATES - 1):
        put(f"n{n}", near)
    time.sleep(TOUCH_SECONDS)  # SQLite moves an answer up the LRU at most once a second
    assert cache.get("acme", CONTEXT, "second") == b"second"  # now the most recently used
    put("last", near)
    # The lookup compares the SEMANTIC_CANDIDATES most recently used: "first" is not among them any more.
    assert cache.nearest("acme", CONTEXT, "scope", far, 0.99) == b"second"
    assert cache.get("acme", CONTEXT, "second") == b"second"
    cache.clear(context=CONTEXT)
    assert cache.nearest("acme", CONTEXT, "scope", far, 0.99) is None
    assert cache.nearest("acme", CONTEXT, "scope", near, 0.99) is None


def test_sqlite_follows_its_file_when_it_is_deleted_while_serving(tmp_path):
    path = tmp_path / "cache.sqlite3"
    worker, other = SqliteCache(path, 1 << 20), SqliteCache(path, 1 << 20)
    worker.put(exact("old"))
    assert other.get("", CONTEXT, "old") == b"x" * 10
    for name in ("cache.sqlite3", "cache.sqlite3-wal", "cache.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # an operator emptying the cache by hand
    assert worker.get("", CONTEXT, "old") is None  # not served from the deleted file
    worker.put(exact("new"))
    assert other.get("", CONTEXT, "new") == b"x" * 10  # both workers write the same file again
    assert path.is_file()


def test_sqlite_does_not_serve_answers_stamped_by_a_clock_since_set_back(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite3", 1 << 20)
    cache.put(exact("ahead"))
    cache.put(exact("behind"))
    ahead = time.time() + 3600
    with sqlite3.connect(tmp_path / "cache.sqlite3") as conn:  # written while the clock was an hour ahead
        conn.execute("UPDATE answers SET used = ?, expires = ? WHERE digest = 'ahead'", (ahead, ahead + 60))
        # and one a few seconds ahead: served, and its hits still written though `used` is in the future
        conn.execute("UPDATE answers SET used = ? WHERE digest = 'behind'", (time.time() + CLOCK_SLACK / 2,))
    assert cache.get("", CONTEXT, "ahead") is None  # its age cannot be told: expired
    assert cache.get("", CONTEXT, "behind") == b"x" * 10
    assert [(row.entries, row.hits) for row in cache.stats()] == [(1, 1)]
    cache.put(exact("next"))  # a put removes what no lookup may serve
    with sqlite3.connect(tmp_path / "cache.sqlite3") as conn:
        assert {digest for (digest,) in conn.execute("SELECT digest FROM answers")} == {"behind", "next"}


def test_sqlite_writes_the_hits_of_many_answers_hit_within_their_second(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite3", 1 << 30)
    for n in range(PENDING_HITS + 10):
        cache.put(exact(f"d{n}"))
        assert cache.get("", CONTEXT, f"d{n}") is not None  # hit at once: not written for its own sake
    assert sum(row.hits for row in cache.stats()) >= PENDING_HITS  # written together, not held in memory for ever


def test_a_sqlite_hit_is_served_while_another_writer_holds_the_file(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite3", 1 << 20)
    cache.put(exact("a"))
    time.sleep(TOUCH_SECONDS)  # the next hit moves the answer up the LRU: a write
    writer = sqlite3.connect(tmp_path / "cache.sqlite3", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # `ctx cache clear` or another worker's put, in the middle of its write
    try:
        assert cache.get("", CONTEXT, "a") == b"x" * 10  # the hit does not need the write
        with pytest.raises(CacheUnavailable, match="OperationalError"):
            cache.put(exact("b"))  # a put waits its LOCK_TIMEOUT, then the request goes on without it
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    time.sleep(TOUCH_SECONDS)
    assert cache.get("", CONTEXT, "a") is not None
    assert [row.hits for row in cache.stats()] == [2]  # the hit the lock held back is counted with the next


def test_sqlite_clears_more_answers_than_one_batch_per_tenant(tmp_path):
    cache = SqliteCache(tmp_path / "cache.sqlite3", 1 << 30)
    for n in range(BATCH * 2 + 5):
        cache.put(exact(f"d{n}", tenant="acme"))
    cache.put(exact("kept", tenant="globex"))
    assert cache.clear(tenant="acme") == BATCH * 2 + 5
    assert [(row.tenant, row.entries, row.bytes) for row in cache.stats()] == [("globex", 1, 10)]


def test_a_sqlite_cache_that_cannot_make_its_directory_is_unavailable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cache = SqliteCache(tmp_path / "file" / "state" / "cache.sqlite3", 1 << 20)
    with pytest.raises(CacheUnavailable):
        cache.put(exact("a"))
    with pytest.raises(CacheUnavailable):
        cache.get("", CONTEXT, "a")
    assert os.path.isfile(tmp_path / "file")


def test_sqlite_sees_another_connections_writes_within_near_check(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_cache, "NEAR_CHECK", 3600.0)
    monkeypatch.setattr(sqlite_cache, "TOUCH_SECONDS", 3600.0)  # no hit is written here, however slow the machine
    path = tmp_path / "cache.sqlite3"
    worker, other = SqliteCache(path, 10_000), SqliteCache(path, 10_000)
    worker.put(Entry("", CONTEXT, "a", b"first", 60))
    assert worker.get("", CONTEXT, "a") == b"first"  # its first lookup looks, and keeps the answer near
    statements: list[str] = []
    worker._conn().set_trace_callback(statements.append)
    assert other.clear() == 1
    assert worker.get("", CONTEXT, "a") == b"first"  # within the window: not looked at, not read
    assert statements == []
    worker._look_at = 0.0  # the window is over
    assert worker.get("", CONTEXT, "a") is None
    assert statements[0] == "PRAGMA data_version"
    worker.put(Entry("", CONTEXT, "b", b"own", 60))
    assert worker.get("", CONTEXT, "b") == b"own"
    worker.clear()  # the worker's own writes are seen at once
    assert worker.get("", CONTEXT, "b") is None


def test_sqlite_lookups_while_another_thread_looks_look_too(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_cache, "NEAR_CHECK", 3600.0)
    monkeypatch.setattr(sqlite_cache, "TOUCH_SECONDS", 3600.0)
    path = tmp_path / "cache.sqlite3"
    worker, other = SqliteCache(path, 10_000), SqliteCache(path, 10_000)
    worker.put(Entry("", CONTEXT, "a", b"first", 60))
    ready, go, answered = threading.Event(), threading.Event(), threading.Event()
    meanwhile: list[bytes | None] = []

    def serving_thread() -> None:  # a thread with a connection of its own that has seen the file as it is
        worker._look_at = 0.0
        worker.get("", CONTEXT, "a")
        ready.set()
        go.wait(10)
        meanwhile.append(worker.get("", CONTEXT, "a"))
        answered.set()

    asking = threading.Thread(target=serving_thread)
    asking.start()
    assert ready.wait(10)
    worker._look_at = 0.0
    assert worker.get("", CONTEXT, "a") == b"first"  # this thread's connection has seen it too, and keeps it near
    assert other.clear() == 1
    worker._look_at = 0.0

    def another_thread_asks(statement: str) -> None:  # while this thread's look is under way
        if statement == "PRAGMA data_version" and not go.is_set():
            go.set()
            answered.wait(10)

    worker._conn().set_trace_callback(another_thread_asks)
    assert worker.get("", CONTEXT, "a") is None
    asking.join(10)
    assert not asking.is_alive()
    assert meanwhile == [None]  # it looked too: not the near copy this thread's look was about to forget


def test_sqlite_serves_a_worker_its_recent_answers_from_memory_until_another_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_cache, "NEAR_CHECK", 0.0)  # every lookup looks at the file
    path = tmp_path / "cache.sqlite3"
    worker, other = SqliteCache(path, 10_000), SqliteCache(path, 10_000)
    worker.put(Entry("", CONTEXT, "a", b"first", 60))
    assert worker.get("", CONTEXT, "a") == b"first"
    statements: list[str] = []
    worker._conn().set_trace_callback(statements.append)
    assert worker.get("", CONTEXT, "a") == b"first"
    assert statements[0] == "PRAGMA data_version"  # served from memory, once it saw nobody else wrote
    assert not [s for s in statements if "FROM answers" in s]
    with sqlite3.connect(path) as raw:  # any other connection's write is seen
        raw.execute("UPDATE answers SET value = x'00'")
    assert worker.get("", CONTEXT, "a") == b"\x00"
    assert [s for s in statements if "FROM answers" in s]
    assert worker.get("acme", CONTEXT, "a") is None  # another tenant's lookup never meets the near copy
    other.put(Entry("", CONTEXT, "a", b"refreshed", 60))  # another worker's refresh (Cache-Control: no-cache)
    assert worker.get("", CONTEXT, "a") == b"refreshed"
    assert other.clear() == 1  # `ctx cache clear`, or another worker's eviction
    assert worker.get("", CONTEXT, "a") is None
    worker.put(Entry("", CONTEXT, "b", b"brief", 0.05))
    assert worker.get("", CONTEXT, "b") == b"brief"
    time.sleep(0.1)
    assert worker.get("", CONTEXT, "b") is None  # expired, though nothing was written since
    time.sleep(TOUCH_SECONDS)
    worker.put(exact("c"))
    assert worker.get("", CONTEXT, "c") is not None
    time.sleep(TOUCH_SECONDS)
    assert worker.get("", CONTEXT, "c") is not None  # its hits are still written, once a second
    assert [row.hits for row in other.stats()] == [2]

"""The SQLite memory database: its schema, its connections, its write transactions and its embedding facts.

Vectors live in the same file as the chunks (table ``vectors``, float16 blobs keyed by the chunk's rowid) and
are deleted with their chunk by a trigger inside the same transaction; ``vectors_version`` is bumped by
triggers on every vector write, so a process knows when its index of them is stale (``sqlite_ranking``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.memory.sqlite_pool import SqlitePool
from app.sqlite_files import use_wal

DB_NAME = "memory.db"
BUSY_SECONDS = 10.0  # how long a connection waits for another's lock
SCHEMA_VERSION = 2


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    source       TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    chunking     TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    chunks       INTEGER NOT NULL,
    ingested_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid        INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    source       TEXT NOT NULL,
    position     INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    content      TEXT NOT NULL
);
-- ids are derived from (source, position), so this index also keeps them unique.
CREATE UNIQUE INDEX IF NOT EXISTS chunks_by_source ON chunks (source, position);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (
    content, content='chunks', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
END;
-- embed_model, embed_dimension, and vectors_version: bumped on every vector write, so readers know
-- when their cached vectors are stale; with store_id, as a database removed and made anew restarts it.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('vectors_version', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS vectors (
    rowid        INTEGER PRIMARY KEY,  -- the chunk's rowid
    vector       BLOB NOT NULL         -- float16, unit length, embed_dimension of them
);
CREATE TRIGGER IF NOT EXISTS chunks_vector_ad AFTER DELETE ON chunks BEGIN
    DELETE FROM vectors WHERE rowid = old.rowid;
END;
CREATE TRIGGER IF NOT EXISTS vectors_ai AFTER INSERT ON vectors BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'vectors_version';
END;
CREATE TRIGGER IF NOT EXISTS vectors_ad AFTER DELETE ON vectors BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'vectors_version';
END;
PRAGMA user_version = {SCHEMA_VERSION};
"""  # noqa: S608 - constants only, no input


def _configure(conn: sqlite3.Connection) -> None:
    """WAL lets readers run beside one writer (`use_wal`: safe when several processes open a new file at once);
    NORMAL sync is durable at checkpoints and needs no fsync per document; the cache and mmap keep the FTS index in
    memory for searches."""
    use_wal(conn, BUSY_SECONDS)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -32000")
    conn.execute("PRAGMA mmap_size = 268435456")


_connections = SqlitePool(_configure)


@contextmanager
def connection(path: Path, create: bool) -> Iterator[sqlite3.Connection | None]:
    """A connection to ``path`` for one operation (``sqlite_pool``: bounded per process, reused, closed when
    idle), or ``None`` when the database is absent and not to be created."""
    if not path.exists():
        _connections.close_idle(path)  # the database was removed under us: start over
        if not create:
            yield None
            return
        path.parent.mkdir(parents=True, exist_ok=True)
    with _connections.lease(path) as conn:
        if create and conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        yield conn


def file_bytes(path: Path) -> int:
    """Disk use of a database: recent writes live in its WAL file until a checkpoint."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def read_meta(conn: sqlite3.Connection) -> dict[str, object]:
    """The store's embedding facts; empty for a database made before vectors existed."""
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise


def embedding_of(meta: dict[str, object]) -> tuple[str | None, int | None]:
    """The model and dimension of the store's vectors, as far as it has recorded them."""
    model, dimension = meta.get("embed_model"), meta.get("embed_dimension")
    return model if isinstance(model, str) else None, dimension if isinstance(dimension, int) else None

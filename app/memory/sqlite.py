"""The embedded memory backend: document chunks in SQLite FTS5, searched with BM25, and their vectors.

One database per component and owner under the project root:
``memory/<Component>/memory.db`` holds documents shared by every tenant and
``memory/<Component>/tenant_<id>/memory.db`` one tenant's own. A tenant's search
covers its own store and the shared one and never another tenant's.
Callers (HTTP, CLI) time ``search()`` themselves for metrics and spans.

Vectors live in the same file (table ``vectors``, float16 blobs keyed by the chunk's rowid) and are
deleted with their chunk by a trigger inside the same transaction. Each process keeps a store's
vectors as a ``vectors.VectorIndex``, rebuilt when ``vectors_version`` (bumped by triggers on every
vector write) changes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from app.errors import DocumentError, MemoryStoreBroken
from app.memory.config import load_config
from app.memory.hybrid import PendingChunk, check_batch, copied_dimension, embed_pending, retrieve
from app.memory.query import query_terms
from app.memory.sqlite_pool import SqlitePool
from app.memory.store import (
    Chunk,
    Document,
    Embedder,
    IngestReport,
    MemoryStore,
    Progress,
    Retrieval,
    SearchResult,
    StoreStats,
    build_document,
    check_name,
    collect_files,
    file_digest,
    source_name,
)
from app.memory.vectors import VectorIndex, from_blob, to_blob
from app.names import is_safe_name

DB_NAME = "memory.db"
SCHEMA_VERSION = 2


_SCHEMA = f"""
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

# Cost control: FTS5 computes BM25 for every chunk a query matches (about 2-3 us each), so a query is
# allowed to score at most this many chunks per store; see ``_rank``.
SCORE_BUDGET = 2000

_COUNT_SQL = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
_RANK_SQL = "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid > ? ORDER BY rank LIMIT ?"
_FLOOR_SQL = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?"


def _phrase(term: str) -> str:
    """An FTS5 string: ``\\w`` never contains a double quote, so the term can only ever be words."""
    return f'"{term}"'


def _rank(conn: sqlite3.Connection, terms: list[str], top_k: int) -> list[tuple[int, float]]:
    """``(rowid, score)`` of the best chunks for the terms (ORed), scoring at most ~``SCORE_BUDGET`` chunks.

    When the terms' chunk counts fit the budget this is plain BM25 over the OR of all terms.
    Otherwise the rarest terms that fit the budget (R) decide which chunks are candidates, and
    ``R AND C`` and ``R NOT C`` (C: the common terms) split them in two without scoring any chunk
    twice. Both queries name every term once, so each candidate gets its exact BM25 score: the
    result is exact among chunks holding a rare term and gives up chunks with common terms only.
    When even the rarest term is over budget, the OR is ranked within its newest
    ``SCORE_BUDGET`` chunks.
    """
    phrases = [_phrase(t) for t in terms]
    counts = [conn.execute(_COUNT_SQL, (p,)).fetchone()[0] for p in phrases]
    every = " OR ".join(phrases)
    if sum(counts) <= SCORE_BUDGET:
        return conn.execute(_RANK_SQL, (every, -1, top_k)).fetchall()
    rare: list[str] = []
    total = 0
    for count, phrase in sorted(zip(counts, phrases, strict=True)):
        if total + count > SCORE_BUDGET:
            break
        rare.append(phrase)
        total += count
    if not rare:
        floor = conn.execute(_FLOOR_SQL, (every, SCORE_BUDGET)).fetchone()[0]
        return conn.execute(_RANK_SQL, (every, floor, top_k)).fetchall()
    candidates = f"({' OR '.join(rare)})"
    common = f"({' OR '.join(p for p in phrases if p not in rare)})"
    scores = conn.execute(_RANK_SQL, (f"{candidates} AND {common}", -1, top_k)).fetchall()
    scores += conn.execute(_RANK_SQL, (f"{candidates} NOT {common}", -1, top_k)).fetchall()
    return sorted(scores, key=lambda item: item[1], reverse=True)[:top_k]


def _configure(conn: sqlite3.Connection) -> None:
    """WAL lets readers run beside one writer; NORMAL sync is durable at checkpoints and needs no
    fsync per document; the cache and mmap keep the FTS index in memory for searches."""
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -32000")
    conn.execute("PRAGMA mmap_size = 268435456")


_connections = SqlitePool(_configure)


@contextmanager
def _connection(path: Path, create: bool) -> Iterator[sqlite3.Connection | None]:
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
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        yield conn


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; ``IMMEDIATE`` takes the write lock up front so concurrent writers wait
    (``busy_timeout``) instead of failing on a lock upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _replace(conn: sqlite3.Connection, document: Document) -> int:
    """Write ``document`` over any earlier version of it in one transaction; the number of chunks removed.

    Chunks whose text did not change keep their vectors: only new text is embedded again. A copied
    document's own vectors are stored when the store takes them (``hybrid.copied_dimension``).
    """
    source = document.source
    with _write(conn):
        kept = conn.execute(
            "SELECT c.content_hash, v.vector FROM chunks c JOIN vectors v ON v.rowid = c.rowid WHERE c.source = ?",
            (source,),
        ).fetchall()
        removed = conn.execute("DELETE FROM chunks WHERE source = ?", (source,)).rowcount
        conn.executemany(
            "INSERT INTO chunks (id, source, position, content_hash, content) VALUES (?, ?, ?, ?, ?)",
            [(c.id, source, c.position, c.content_hash, c.content) for c in document.chunks],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO vectors (rowid, vector)"
            " SELECT rowid, ? FROM chunks WHERE source = ? AND content_hash = ?",
            [(vector, source, content_hash) for content_hash, vector in dict(kept).items()],
        )
        dimension = copied_dimension(document, *_embedding(_meta(conn))) if document.embed_model else None
        if dimension is not None:
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("embed_model", document.embed_model), ("embed_dimension", dimension)],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO vectors (rowid, vector)"
                " SELECT rowid, ? FROM chunks WHERE source = ? AND position = ?",
                [(to_blob(c.vector), source, c.position) for c in document.chunks if c.vector is not None],
            )
        conn.execute(
            "INSERT OR REPLACE INTO documents (source, content_hash, chunking, bytes, chunks, ingested_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (source, document.content_hash, document.chunking, document.bytes, len(document.chunks), time.time()),
        )
    return removed


def _contents(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, tuple[str, str, str]]:
    """The id, content and source of the chunks ``rowids``, by rowid (none for an empty list)."""
    if not rowids:
        return {}
    marks = ",".join("?" * len(rowids))
    rows = conn.execute(f"SELECT rowid, id, content, source FROM chunks WHERE rowid IN ({marks})", rowids)  # noqa: S608
    return {rowid: (i, content, source) for rowid, i, content, source in rows}


def _file_bytes(path: Path) -> int:
    """Disk use of a database: recent writes live in its WAL file until a checkpoint."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _meta(conn: sqlite3.Connection) -> dict[str, object]:
    """The store's embedding facts; empty for a database made before vectors existed."""
    try:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise


def _embedding(meta: dict[str, object]) -> tuple[str | None, int | None]:
    """The model and dimension of the store's vectors, as far as it has recorded them."""
    model, dimension = meta.get("embed_model"), meta.get("embed_dimension")
    return model if isinstance(model, str) else None, dimension if isinstance(dimension, int) else None


# (pid, database) -> (vectors_version, its index): one index per store and process, shared by its threads.
_indexes: dict[tuple[int, str], tuple[object, VectorIndex]] = {}
_indexes_lock = threading.Lock()


def _vector_index(conn: sqlite3.Connection, path: Path, version: object, dimension: int) -> VectorIndex:
    """The store's vectors at ``version``, loaded once per version and process (call inside a read transaction)."""
    key = (os.getpid(), str(path))
    cached = _indexes.get(key)
    if cached is None or cached[0] != version:
        with _indexes_lock:
            cached = _indexes.get(key)
            if cached is None or cached[0] != version:
                rows = conn.execute("SELECT rowid, vector FROM vectors ORDER BY rowid").fetchall()
                index = VectorIndex([rowid for rowid, _ in rows], [blob for _, blob in rows], dimension)
                cached = _indexes[key] = (version, index)
    return cached[1]


class SqliteStore:
    """The memory of one component, as seen by one tenant (``None`` or ``""``: the shared store).

    Writes (``ingest``, ``delete``) go to the owner's own database; ``search`` reads the tenant's
    database and the shared one. Instances are cheap and hold no connection themselves.
    """

    def __init__(
        self, root: Path, component: str, tenant_id: str | None = None, embedder: Embedder | None = None
    ) -> None:
        self.root = Path(root)
        self.component = check_name("component", component)
        self.tenant_id = check_name("tenant", tenant_id) if tenant_id else None
        self.component_dir = self.root / "memory" / component
        self._check_inside(self.component_dir)
        self.config = load_config(self.component_dir)
        self.embedder = embedder

    def _check_inside(self, path: Path) -> None:
        """Refuse a folder or database that a symlink leads outside the project root (its content is not ours)."""
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise MemoryStoreBroken(f"{self._rel(path)} leads outside the project root")

    def _rel(self, path: Path) -> str:
        """`path` as errors name it: relative to the root, never where a link leads."""
        return path.relative_to(self.root).as_posix()

    @contextmanager
    def _open(self, path: Path, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection to `path` (None when absent), with any SQLite failure reported as a broken store.

        A `memory.db` that is no database (a link to /etc/passwd, a truncated copy) is a clear error naming
        the store, not a 500 with a traceback.
        """
        self._check_inside(path)
        try:
            with _connection(path, create) as conn:
                yield conn
        except sqlite3.DatabaseError as exc:
            raise MemoryStoreBroken(f"{self._rel(path)} is not a usable memory database ({exc})") from None

    @contextmanager
    def _own(self) -> Iterator[sqlite3.Connection]:
        """A connection to the store's own database, created when absent."""
        with self._open(self.path, create=True) as conn:
            assert conn is not None  # create=True always gives one
            yield conn

    @property
    def path(self) -> Path:
        """The database this store writes to."""
        if self.tenant_id is None:
            return self.component_dir / DB_NAME
        return self.component_dir / f"tenant_{self.tenant_id}" / DB_NAME

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def search_paths(self) -> list[Path]:
        """The databases a search reads: the tenant's own (if any) and the shared one."""
        shared = self.component_dir / DB_NAME
        return [shared] if self.tenant_id is None else [self.path, shared]

    def source_name(self, path: Path) -> str:
        """The stored name of a file (see ``store.source_name``)."""
        return source_name(self.root, path)

    # -- ingest ------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[Path],
        progress: Progress | None = None,
        embed_progress: Progress | None = None,
    ) -> IngestReport:
        """Add files and directories (recursively, hidden entries skipped) to the store.

        Each document is written in its own transaction, so readers see all of its chunks or none.
        A file whose bytes and the chunking settings are unchanged is skipped; a changed one has its
        chunks replaced. Unsupported extensions are counted, unreadable files reported in ``failed``.
        ``progress(done, total, source)`` is called after each file. With an embedder, the chunks
        without a vector are then embedded in batches (``embed_progress(done, total, model)``); a
        failure there is reported in ``embed_error`` and the next ingest continues where it stopped.
        """
        started = time.perf_counter()
        report = IngestReport()
        files = collect_files(paths, report)
        with self._own() as conn:
            for done, file in enumerate(files, 1):
                source = self.source_name(file)
                try:
                    self._ingest_file(conn, file, source, report)
                except (OSError, DocumentError) as exc:
                    report.failed.append((source, str(exc)))
                if progress is not None:
                    progress(done, len(files), source)
        if self.embedder is not None:
            embed_pending(self, self.embedder, report, embed_progress)
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_file(self, conn: sqlite3.Connection, file: Path, source: str, report: IngestReport) -> None:
        data = file.read_bytes()
        row = conn.execute("SELECT content_hash, chunking FROM documents WHERE source = ?", (source,)).fetchone()
        if row == (file_digest(data), self.config.chunking):
            report.unchanged += 1
            return
        document = build_document(file, data, source, self.config)
        removed = _replace(conn, document)
        report.ingested += 1
        report.chunks_added += len(document.chunks)
        report.chunks_removed += removed

    def documents(self) -> Iterator[Document]:
        """Every document of this store with its chunks and their vectors, in source order (none without a
        database)."""
        with self._open(self.path, create=False) as conn:
            if conn is None:
                return
            model = _embedding(_meta(conn))[0]
            for source, content_hash, chunking, size in conn.execute(
                "SELECT source, content_hash, chunking, bytes FROM documents ORDER BY source"
            ).fetchall():
                chunks = tuple(
                    Chunk(i, position, digest, content, None if blob is None else from_blob(blob))
                    for i, position, digest, content, blob in conn.execute(
                        "SELECT c.id, c.position, c.content_hash, c.content, v.vector FROM chunks c"
                        " LEFT JOIN vectors v ON v.rowid = c.rowid WHERE c.source = ? ORDER BY c.position",
                        (source,),
                    )
                )
                embedded = any(chunk.vector is not None for chunk in chunks)
                yield Document(source, content_hash, chunking, size, chunks, model if embedded else None)

    def put(self, document: Document) -> bool:
        """Store ``document`` as it is; False when this version of it is already stored."""
        with self._own() as conn:
            row = conn.execute("SELECT content_hash, chunking FROM documents WHERE source = ?", (document.source,))
            if row.fetchone() == (document.content_hash, document.chunking):
                return False
            _replace(conn, document)
            return True

    # -- search ------------------------------------------------------------

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None) -> Retrieval:
        """The ``top_k`` best chunks for an untrusted query, best first (``hybrid.retrieve``: defaults, modes).

        No database gives no results; nothing is created.
        """
        return retrieve(self, self.embedder, self.config, query, top_k, mode)

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[SearchResult]:
        return self.retrieve(query, top_k, mode).results

    @contextmanager
    def _snapshot(self, path: Path) -> Iterator[sqlite3.Connection | None]:
        """One read transaction on ``path`` (None without a database): a ranking and the content of its
        chunks come from the same snapshot."""
        with self._open(path, create=False) as conn:
            if conn is None:
                yield None
                return
            try:
                conn.execute("BEGIN")
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def keyword_ranking(self, query: str, limit: int) -> list[SearchResult]:
        """The best chunks by BM25 (scores negated: higher is better), merged across the tenant's and the
        shared store; a query without searchable words gives ``[]``."""
        terms = query_terms(query)
        if not terms:
            return []
        results: list[SearchResult] = []
        for path in self.search_paths:
            with self._snapshot(path) as conn:
                if conn is None:
                    continue
                try:
                    ranked = _rank(conn, terms, limit)
                    found = _contents(conn, [rowid for rowid, _ in ranked])
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):  # created by a concurrent ingest, schema not yet committed
                        continue
                    raise
            results.extend(
                SearchResult(found[r][0], found[r][1], score, found[r][2]) for r, score in ranked if r in found
            )
        results.sort(key=lambda r: r.score, reverse=True)
        return results[:limit]

    def vector_ranking(self, vector: Sequence[float], model_id: str, limit: int) -> list[SearchResult]:
        """The chunks nearest ``vector`` by cosine (vectors are unit length), across the tenant's and the
        shared store; a store embedded by another model, or of another dimension, has none to offer."""
        results: list[SearchResult] = []
        for path in self.search_paths:
            with self._snapshot(path) as conn:  # the matrix's version and the chunks' content from one snapshot
                if conn is None:
                    continue
                meta = _meta(conn)
                if meta.get("embed_model") != model_id or meta.get("embed_dimension") != len(vector):
                    continue
                version = (meta.get("store_id"), meta["vectors_version"])
                ranked = dict(_vector_index(conn, path, version, len(vector)).nearest(vector, limit))
                found = _contents(conn, list(ranked))
            results.extend(SearchResult(i, content, ranked[r], source) for r, (i, content, source) in found.items())
        results.sort(key=lambda r: r.score, reverse=True)
        return results[:limit]

    # -- vectors at ingest (hybrid.embed_pending) -----------------------------

    def start_embedding(self, model_id: str) -> int:
        """Switch the store to ``model_id`` (dropping another model's vectors); the chunks still to embed."""
        with self._own() as conn, _write(conn):
            if _meta(conn).get("embed_model") != model_id:
                conn.execute("DELETE FROM vectors")
                conn.execute("DELETE FROM meta WHERE key = 'embed_dimension'")
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embed_model', ?)", (model_id,))
            return conn.execute(
                "SELECT count(*) FROM chunks WHERE rowid NOT IN (SELECT rowid FROM vectors)"
            ).fetchone()[0]

    def pending_chunks(self, after: int, limit: int) -> list[PendingChunk]:
        with self._own() as conn:
            rows = conn.execute(
                "SELECT c.rowid, c.content_hash, c.content FROM chunks c LEFT JOIN vectors v ON v.rowid = c.rowid"
                " WHERE v.rowid IS NULL AND c.rowid > ? ORDER BY c.rowid LIMIT ?",
                (after, limit),
            ).fetchall()
        return [PendingChunk(key=rowid, content_hash=digest, text=content) for rowid, digest, content in rows]

    def store_vectors(self, model_id: str, vectors: Sequence[tuple[PendingChunk, list[float]]]) -> int:
        """Save a batch in one transaction; a chunk replaced meanwhile (another hash) gets none."""
        with self._own() as conn, _write(conn):
            dimension = len(vectors[0][1]) if vectors else 0
            check_batch(self.location, *_embedding(_meta(conn)), model_id, dimension)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embed_dimension', ?)", (dimension,))
            return sum(
                conn.execute(
                    "INSERT OR REPLACE INTO vectors (rowid, vector)"
                    " SELECT rowid, ? FROM chunks WHERE rowid = ? AND content_hash = ?",
                    (to_blob(vector), chunk.key, chunk.content_hash),
                ).rowcount
                for chunk, vector in vectors
            )

    # -- maintenance -------------------------------------------------------

    def delete(self, source: str | None = None) -> int:
        """Remove one document (by stored name or by path) or, with ``None``, every document.

        Returns the number of documents removed; a store without a database removes nothing.
        """
        with self._open(self.path, create=False) as conn:
            if conn is None:
                return 0
            with _write(conn):
                if source is None:
                    conn.execute("DELETE FROM chunks")
                    return conn.execute("DELETE FROM documents").rowcount
                names = (source, self.source_name(Path(source)))
                conn.execute("DELETE FROM chunks WHERE source IN (?, ?)", names)
                return conn.execute("DELETE FROM documents WHERE source IN (?, ?)", names).rowcount

    def stats(self) -> StoreStats:
        """Documents, chunks and sizes of this store's own database (zeros when it has none)."""
        documents = chunks = source_bytes = with_vectors = 0
        meta: dict[str, object] = {}
        with self._open(self.path, create=False) as conn:
            if conn is not None:
                row = conn.execute("SELECT count(*), coalesce(sum(chunks), 0), coalesce(sum(bytes), 0) FROM documents")
                documents, chunks, source_bytes = row.fetchone()
                meta = _meta(conn)
                if meta:
                    with_vectors = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        model, dimension = _embedding(meta)
        return StoreStats(
            component=self.component,
            tenant_id=self.tenant_id,
            location=self.location,
            documents=documents,
            chunks=chunks,
            source_bytes=source_bytes,
            db_bytes=_file_bytes(self.path) if conn is not None else 0,
            embed_model=model,
            embed_dimension=dimension,
            chunks_with_vectors=with_vectors,
        )


def list_sqlite_stores(root: Path, embedder: Embedder | None = None) -> list[SqliteStore]:
    """Every store with a database under ``root/memory``, shared before tenants, for ``ctx memory stats``."""
    stores: list[SqliteStore] = []
    base = Path(root) / "memory"
    if not base.is_dir():
        return stores
    for component_dir in sorted(p for p in base.iterdir() if p.is_dir() and is_safe_name(p.name)):
        if (component_dir / DB_NAME).is_file():
            stores.append(SqliteStore(root, component_dir.name, None, embedder))
        for tenant_dir in sorted(component_dir.glob(f"tenant_*/{DB_NAME}")):
            tenant = tenant_dir.parent.name.removeprefix("tenant_")
            if is_safe_name(tenant):
                stores.append(SqliteStore(root, component_dir.name, tenant, embedder))
    return stores


class SqliteMemory:
    """The embedded backend: one SQLite database per component and owner under the project root."""

    system = "sqlite"

    def __init__(self, root: Path, embedder: Embedder | None = None) -> None:
        self.root = Path(root)
        self.embedder = embedder

    def store(self, component: str, tenant_id: str | None = None) -> MemoryStore:
        return SqliteStore(self.root, component, tenant_id, self.embedder)

    def stores(self) -> list[MemoryStore]:
        return list(list_sqlite_stores(self.root, self.embedder))

    def problem(self) -> str | None:
        """Nothing to wait for: databases are files, created on first ingest."""
        return None

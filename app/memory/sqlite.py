"""The embedded memory backend: document chunks in SQLite FTS5, searched with BM25, and their vectors.

One database per component and owner under the project root:
``memory/<Component>/memory.db`` holds documents shared by every tenant and
``memory/<Component>/tenant_<id>/memory.db`` one tenant's own. A tenant's search
covers its own store and the shared one and never another tenant's.
Callers (HTTP, CLI) time ``search()`` themselves for metrics and spans.

The schema and connections are ``sqlite_schema``; the rankings ``sqlite_ranking``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from app.errors import DocumentError, MemoryStoreBroken
from app.memory.config import load_config
from app.memory.hybrid import PendingChunk, check_batch, copied_dimension, embed_pending, retrieve
from app.memory.query import query_terms
from app.memory.sqlite_ranking import contents, rank, vector_index
from app.memory.sqlite_schema import DB_NAME, connection, embedding_of, file_bytes, read_meta
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
from app.memory.vectors import from_blob, to_blob
from app.names import is_safe_name
from app.sqlite_files import transaction


def _replace(conn: sqlite3.Connection, document: Document) -> int:
    """Write ``document`` over any earlier version of it in one transaction; the number of chunks removed.

    Chunks whose text did not change keep their vectors: only new text is embedded again. A copied
    document's own vectors are stored when the store takes them (``hybrid.copied_dimension``).
    """
    source = document.source
    with transaction(conn):
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
        dimension = copied_dimension(document, *embedding_of(read_meta(conn))) if document.embed_model else None
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
            with connection(path, create) as conn:
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
            model = embedding_of(read_meta(conn))[0]
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
                    ranked = rank(conn, terms, limit)
                    found = contents(conn, [rowid for rowid, _ in ranked])
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
                meta = read_meta(conn)
                if meta.get("embed_model") != model_id or meta.get("embed_dimension") != len(vector):
                    continue
                version = (meta.get("store_id"), meta["vectors_version"])
                ranked = dict(vector_index(conn, path, version, len(vector)).nearest(vector, limit))
                found = contents(conn, list(ranked))
            results.extend(SearchResult(i, content, ranked[r], source) for r, (i, content, source) in found.items())
        results.sort(key=lambda r: r.score, reverse=True)
        return results[:limit]

    # -- vectors at ingest (hybrid.embed_pending) -----------------------------

    def start_embedding(self, model_id: str) -> int:
        """Switch the store to ``model_id`` (dropping another model's vectors); the chunks still to embed."""
        with self._own() as conn, transaction(conn):
            if read_meta(conn).get("embed_model") != model_id:
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
        with self._own() as conn, transaction(conn):
            dimension = len(vectors[0][1]) if vectors else 0
            check_batch(self.location, *embedding_of(read_meta(conn)), model_id, dimension)
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
            with transaction(conn):
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
                meta = read_meta(conn)
                if meta:
                    with_vectors = conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        model, dimension = embedding_of(meta)
        return StoreStats(
            component=self.component,
            tenant_id=self.tenant_id,
            location=self.location,
            documents=documents,
            chunks=chunks,
            source_bytes=source_bytes,
            db_bytes=file_bytes(self.path) if conn is not None else 0,
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

"""``PostgresStore``: one component's memory as one owner sees it: ingest, keyword and vector rankings, copies."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import psycopg

from app.errors import DocumentError
from app.memory.config import load_config
from app.memory.hybrid import PendingChunk, check_batch, copied_dimension, embed_pending, retrieve
from app.memory.postgres.schema import TS_CONFIG
from app.memory.query import query_terms
from app.memory.store import (
    Chunk,
    Document,
    Embedder,
    IngestReport,
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


class Database(Protocol):
    """What a store needs of its backend (``PostgresMemory``): transactions, and what it names and embeds with."""

    root: Path
    embedder: Embedder | None
    where: str

    def transaction(
        self,
        tenant_id: str | None,
        *,
        all_tenants: bool = False,
        search: bool = False,
        ef_search: int = 0,
        bounded: bool = True,
    ) -> AbstractContextManager[psycopg.Connection]: ...

    def prepare_searches(self) -> None: ...


# Candidates an HNSW search keeps (pgvector's hnsw.ef_search, 40 by default; at least the limit asked for):
# more is slower and nearer the exact ranking. docs/retrieval.md has the figures that chose it.
EF_SEARCH = 100

# Cost control: ranking reads every candidate row, so a search ranks at most this many chunks: those
# holding all the query's words first, then any of them (in table order). Below the budget it is exact.
SCORE_BUDGET = 500

# websearch_to_tsquery reads the bound words joined by " or " (or by spaces: AND) as plain words: no
# syntax of the caller's text reaches the parser, since query_terms keeps only \w words (drops "or").
_CANDIDATES = f"""
    SELECT pk, id, content, source, tsv FROM memory_chunks
    WHERE component = %(component)s AND (tenant IS NULL OR tenant = %(tenant)s)
      AND tsv @@ websearch_to_tsquery('{TS_CONFIG}', %({{}})s)
    LIMIT %(budget)s
"""  # noqa: S608 - constants only
_SEARCH_SQL = f"""
SELECT id, content, ts_rank(tsv, websearch_to_tsquery('{TS_CONFIG}', %(any)s), 1) AS score, source
FROM (({_CANDIDATES.format("all")}) UNION ({_CANDIDATES.format("any")})) AS candidates
ORDER BY score DESC, pk
LIMIT %(top_k)s
"""  # noqa: S608 - constants only; the query's words are bound parameters

# The nearest vectors of the owner and the shared store, by cosine distance. `{embedding}` and `{vector}`
# are either `embedding::vector(N)` and `vector(N)`, the expression of the dimension's HNSW index (and
# `dimension = N` its predicate), or the bare column, which no index serves: an exact scan.
_NEAREST_SQL = """
SELECT c.id, c.content, 1 - nearest.distance, c.source
FROM (
    SELECT chunk, {embedding} <=> %(vector)s::{vector} AS distance FROM memory_vectors
    WHERE component = %(component)s AND (tenant IS NULL OR tenant = %(tenant)s)
      AND model = %(model)s AND dimension = {dimension}
    ORDER BY distance
    LIMIT %(limit)s
) AS nearest JOIN memory_chunks c ON c.pk = nearest.chunk
ORDER BY nearest.distance, c.pk
"""


class PostgresStore:
    """One component's memory in PostgreSQL as one owner sees it (``tenant_id`` None: the shared store)."""

    def __init__(self, memory: Database, component: str, tenant_id: str | None = None) -> None:
        self.memory = memory
        self.component = check_name("component", component)
        self.tenant_id = check_name("tenant", tenant_id) if tenant_id else None
        self.config = load_config(memory.root / "memory" / component)
        self.embedder = memory.embedder

    @property
    def location(self) -> str:
        owner = f"tenant {self.tenant_id}" if self.tenant_id else "shared"
        return f"{self.memory.where} ({self.component}, {owner})"

    def _owner(self, alias: str = "") -> tuple[str, tuple[str, ...]]:
        """The owner's rows (of the table named ``alias``, if given) as a condition the unique index serves
        (``IS NOT DISTINCT FROM`` would scan)."""
        prefix = f"{alias}." if alias else ""
        if self.tenant_id is None:
            return f"{prefix}component = %s AND {prefix}tenant IS NULL", (self.component,)
        return f"{prefix}component = %s AND {prefix}tenant = %s", (self.component, self.tenant_id)

    # -- ingest ------------------------------------------------------------

    def ingest(
        self, paths: Iterable[Path], progress: Progress | None = None, embed_progress: Progress | None = None
    ) -> IngestReport:
        """Add files and directories, one transaction per document; unchanged files are skipped.

        With an embedder, then embed the chunks without a vector of its model (``hybrid.embed_pending``);
        a failure there is reported in ``embed_error`` and the next ingest continues where it stopped.
        """
        started = time.perf_counter()
        report = IngestReport()
        files = collect_files(paths, report)
        for done, file in enumerate(files, 1):
            source = source_name(self.memory.root, file)
            try:
                self._ingest_file(file, source, report)
            except (OSError, DocumentError) as exc:
                report.failed.append((source, str(exc)))
            except psycopg.DataError as exc:  # text PostgreSQL cannot store, such as NUL characters
                report.failed.append((source, str(exc)))
            if progress is not None:
                progress(done, len(files), source)
        if self.embedder is not None:
            embed_pending(self, self.embedder, report, embed_progress)
        if report.ingested or report.chunks_embedded:
            self.memory.prepare_searches()
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_file(self, file: Path, source: str, report: IngestReport) -> None:
        data = file.read_bytes()
        with self.memory.transaction(self.tenant_id) as conn:
            if self._stored_version(conn, source) == (file_digest(data), self.config.chunking):
                report.unchanged += 1
                return
            document = build_document(file, data, source, self.config)
            report.chunks_removed += self._write(conn, document)
        report.ingested += 1
        report.chunks_added += len(document.chunks)

    def _stored_version(self, conn: psycopg.Connection, source: str) -> tuple[str, str] | None:
        owner, params = self._owner()
        row = conn.execute(
            f"SELECT content_hash, chunking FROM memory_documents WHERE {owner} AND source = %s",  # noqa: S608
            (*params, source),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def _write(self, conn: psycopg.Connection, document: Document) -> int:
        """Write ``document`` over its earlier version within ``conn``'s transaction; the chunks removed.

        Chunks whose text did not change keep their vectors (deleted with the old chunks, written again
        for the new ones), so only new text is embedded again; a copied document's own vectors are stored
        when the owner takes them (``hybrid.copied_dimension``). The commit does not wait for the WAL
        flush (like SQLite's ``synchronous=NORMAL``): a crash may lose the last documents written, never
        half of one, and a re-ingest adds them again.
        """
        conn.execute("SET LOCAL synchronous_commit = off")
        owner, params = self._owner()
        chunk_owner, _ = self._owner("c")
        kept = conn.execute(
            "SELECT DISTINCT ON (c.content_hash) c.content_hash, v.model, v.embedding::text FROM memory_chunks c"  # noqa: S608
            f" JOIN memory_vectors v ON v.chunk = c.pk WHERE {chunk_owner} AND c.source = %s",
            (*params, document.source),
        ).fetchall()
        removed = conn.execute(
            f"DELETE FROM memory_chunks WHERE {owner} AND source = %s",  # noqa: S608 - constants only
            (*params, document.source),
        ).rowcount
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO memory_chunks (tenant, component, source, position, id, content_hash, content)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (self.tenant_id, self.component, document.source, c.position, c.id, c.content_hash, c.content)
                    for c in document.chunks
                ],
            )
            # The chunks' own tenant and component, so the vectors' owner is their chunk's by construction.
            attach = (
                "INSERT INTO memory_vectors (chunk, tenant, component, model, embedding)"  # noqa: S608
                f" SELECT pk, tenant, component, %s, %s::vector FROM memory_chunks WHERE {owner} AND source = %s"
            )
            cur.executemany(
                f"{attach} AND content_hash = %s",
                [(model, vector, *params, document.source, digest) for digest, model, vector in kept],
            )
            dimension = copied_dimension(document, *self._hold_embedding(conn)) if document.embed_model else None
            if dimension is not None:
                self._set_embedding(conn, document.embed_model, dimension)
                cur.executemany(
                    f"{attach} AND position = %s"
                    " ON CONFLICT (chunk) DO UPDATE SET model = excluded.model, embedding = excluded.embedding",
                    [
                        (document.embed_model, _literal(c.vector), *params, document.source, c.position)
                        for c in document.chunks
                        if c.vector is not None
                    ],
                )
        conn.execute(
            "INSERT INTO memory_documents (tenant, component, source, content_hash, chunking, bytes, chunks)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (component, tenant, source) DO UPDATE SET content_hash = excluded.content_hash,"
            " chunking = excluded.chunking, bytes = excluded.bytes, chunks = excluded.chunks, ingested_at = now()",
            (
                self.tenant_id,
                self.component,
                document.source,
                document.content_hash,
                document.chunking,
                document.bytes,
                len(document.chunks),
            ),
        )
        return removed

    # -- vectors at ingest (hybrid.embed_pending) -----------------------------

    def _hold_embedding(self, conn: psycopg.Connection) -> tuple[str | None, int | None]:
        """The owner's embedding model and dimension (None before it has them), its row locked until the
        transaction ends, so the writers of one owner's vectors take turns."""
        row = conn.execute(
            "INSERT INTO memory_embeddings (tenant, component) VALUES (%s, %s) ON CONFLICT (component, tenant)"
            " DO UPDATE SET model = memory_embeddings.model RETURNING model, dimension",
            (self.tenant_id, self.component),
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _set_embedding(self, conn: psycopg.Connection, model: str | None, dimension: int | None) -> None:
        owner, params = self._owner()
        conn.execute(
            f"UPDATE memory_embeddings SET model = %s, dimension = %s WHERE {owner}",  # noqa: S608 - constants only
            (model, dimension, *params),
        )

    def start_embedding(self, model_id: str) -> int:
        """Switch the owner to ``model_id`` (dropping another model's vectors); the chunks still to embed."""
        owner, params = self._owner()
        chunk_owner, _ = self._owner("c")
        with self.memory.transaction(self.tenant_id) as conn:
            if self._hold_embedding(conn)[0] != model_id:
                conn.execute(f"DELETE FROM memory_vectors WHERE {owner}", params)  # noqa: S608 - constants only
                self._set_embedding(conn, model_id, None)
            row = conn.execute(
                f"SELECT count(*) FROM memory_chunks c WHERE {chunk_owner}"  # noqa: S608 - constants only
                " AND NOT EXISTS (SELECT 1 FROM memory_vectors v WHERE v.chunk = c.pk)",
                params,
            ).fetchone()
        return int(row[0]) if row else 0

    def pending_chunks(self, after: int, limit: int) -> list[PendingChunk]:
        chunk_owner, params = self._owner("c")
        with self.memory.transaction(self.tenant_id) as conn:
            rows = conn.execute(
                f"SELECT c.pk, c.content_hash, c.content FROM memory_chunks c WHERE {chunk_owner} AND c.pk > %s"  # noqa: S608
                " AND NOT EXISTS (SELECT 1 FROM memory_vectors v WHERE v.chunk = c.pk) ORDER BY c.pk LIMIT %s",
                (*params, after, limit),
            ).fetchall()
        return [PendingChunk(key=pk, content_hash=digest, text=content) for pk, digest, content in rows]

    def store_vectors(self, model_id: str, vectors: Sequence[tuple[PendingChunk, list[float]]]) -> int:
        """Save a batch in one transaction; a chunk replaced meanwhile (another hash, or gone) gets none."""
        owner, params = self._owner()
        dimension = len(vectors[0][1]) if vectors else 0
        with self.memory.transaction(self.tenant_id) as conn:
            held_model, held_dimension = self._hold_embedding(conn)
            check_batch(self.location, held_model, held_dimension, model_id, dimension)
            if held_dimension is None:
                self._set_embedding(conn, model_id, dimension)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO memory_vectors (chunk, tenant, component, model, embedding)"  # noqa: S608
                    f" SELECT pk, tenant, component, %s, %s::vector FROM memory_chunks WHERE {owner}"
                    " AND pk = %s AND content_hash = %s"
                    " ON CONFLICT (chunk) DO UPDATE SET model = excluded.model, embedding = excluded.embedding",
                    [(model_id, _literal(vector), *params, chunk.key, chunk.content_hash) for chunk, vector in vectors],
                )
                return max(cur.rowcount, 0)

    # -- search ------------------------------------------------------------

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None) -> Retrieval:
        """The ``top_k`` best chunks for an untrusted query, best first (``hybrid.retrieve``: defaults, modes)."""
        return retrieve(self, self.embedder, self.config, query, top_k, mode)

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[SearchResult]:
        return self.retrieve(query, top_k, mode).results

    def keyword_ranking(self, query: str, limit: int) -> list[SearchResult]:
        """The ``limit`` best chunks of the tenant's and the shared rows, by ``ts_rank`` (higher is better)."""
        terms = query_terms(query)
        if not terms:
            return []
        params = {
            "any": " or ".join(terms),
            "all": " ".join(terms),
            "component": self.component,
            "tenant": self.tenant_id,
            "budget": SCORE_BUDGET,
            "top_k": limit,
        }
        with self.memory.transaction(self.tenant_id, search=True) as conn:
            rows = conn.execute(_SEARCH_SQL, params).fetchall()
        return [SearchResult(id=i, content=content, score=float(score), source=src) for i, content, score, src in rows]

    def vector_ranking(self, vector: Sequence[float], model_id: str, limit: int) -> list[SearchResult]:
        """The ``limit`` chunks of the tenant's and the shared rows nearest ``vector`` by cosine (the score),
        among the vectors of ``model_id`` and of the query's dimension.

        The dimension's HNSW index, when it has one, ranks every owner's vectors, and the rows of other
        owners are filtered out after: when that leaves fewer than ``limit`` (the index's candidates were
        mostly other tenants' or components', or the store is small), the same query is answered by an
        exact scan of the owner's and the shared vectors instead.
        """
        dimension = len(vector)
        params = {
            "vector": _literal(vector),
            "component": self.component,
            "tenant": self.tenant_id,
            "model": model_id,
            "limit": limit,
        }
        indexed = _NEAREST_SQL.format(
            embedding=f"embedding::vector({dimension})", vector=f"vector({dimension})", dimension=dimension
        )
        with self.memory.transaction(self.tenant_id, search=True, ef_search=max(EF_SEARCH, limit)) as conn:
            rows = conn.execute(indexed, params).fetchall()
            if len(rows) < limit:
                exact = _NEAREST_SQL.format(embedding="embedding", vector="vector", dimension=dimension)
                rows = conn.execute(exact, params).fetchall()
        return [SearchResult(id=i, content=content, score=float(score), source=src) for i, content, score, src in rows]

    # -- maintenance -------------------------------------------------------

    def delete(self, source: str | None = None) -> int:
        """Remove one document (by stored name or path) or, with None, all of the owner's; documents removed.

        Their vectors go with their chunks (the foreign key cascades).
        """
        where, params = self._owner()
        if source is not None:
            where += " AND source IN (%s, %s)"
            params += (source, source_name(self.memory.root, Path(source)))
        with self.memory.transaction(self.tenant_id) as conn:
            conn.execute(f"DELETE FROM memory_chunks WHERE {where}", params)  # noqa: S608 - constants only
            return conn.execute(f"DELETE FROM memory_documents WHERE {where}", params).rowcount  # noqa: S608

    def stats(self) -> StoreStats:
        """Documents, chunks, vectors and sizes of the owner's rows (``db_bytes``: their size in the tables)."""
        owner, params = self._owner()
        with self.memory.transaction(self.tenant_id) as conn:
            totals = "count(*), coalesce(sum(chunks), 0), coalesce(sum(bytes), 0)"
            documents, chunks, source_bytes = conn.execute(
                f"SELECT {totals} FROM memory_documents WHERE {owner}",  # noqa: S608 - constants only
                params,
            ).fetchone() or (0, 0, 0)
            chunk_bytes, vectors, vector_bytes = conn.execute(
                f"SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM memory_chunks c WHERE {owner}),"  # noqa: S608
                f" count(*), coalesce(sum(pg_column_size(v.*)), 0) FROM memory_vectors v WHERE {owner}",
                params + params,
            ).fetchone() or (0, 0, 0)
            embedding = conn.execute(
                f"SELECT model, dimension FROM memory_embeddings WHERE {owner}",  # noqa: S608 - constants only
                params,
            ).fetchone()
        model, dimension = embedding or (None, None)
        return StoreStats(
            component=self.component,
            tenant_id=self.tenant_id,
            location=self.location,
            documents=int(documents),
            chunks=int(chunks),
            source_bytes=int(source_bytes),
            db_bytes=int(chunk_bytes) + int(vector_bytes),
            embed_model=model,
            embed_dimension=dimension,
            chunks_with_vectors=int(vectors),
        )

    def documents(self) -> Iterator[Document]:
        """Every document of the owner with its chunks and their vectors, in source order."""
        owner, params = self._owner()
        chunk_owner, _ = self._owner("c")
        with self.memory.transaction(self.tenant_id) as conn:
            heads = conn.execute(
                f"SELECT source, content_hash, chunking, bytes FROM memory_documents WHERE {owner} ORDER BY source",  # noqa: S608
                params,
            ).fetchall()
            embedding = conn.execute(
                f"SELECT model FROM memory_embeddings WHERE {owner}",  # noqa: S608 - constants only
                params,
            ).fetchone()
        model = embedding[0] if embedding else None
        for source, content_hash, chunking, size in heads:
            with self.memory.transaction(self.tenant_id) as conn:
                rows = conn.execute(
                    "SELECT c.id, c.position, c.content_hash, c.content, v.embedding::text"  # noqa: S608
                    f" FROM memory_chunks c LEFT JOIN memory_vectors v ON v.chunk = c.pk AND v.model = %s"
                    f" WHERE {chunk_owner} AND c.source = %s ORDER BY c.position",
                    (model, *params, source),
                ).fetchall()
            chunks = tuple(
                Chunk(i, position, digest, content, None if vector is None else _values(vector))
                for i, position, digest, content, vector in rows
            )
            embedded = any(chunk.vector is not None for chunk in chunks)
            yield Document(source, content_hash, chunking, int(size), chunks, model if embedded else None)

    def put(self, document: Document) -> bool:
        """Store ``document`` as it is (ids, chunks and the vectors the owner takes); False when this version
        is already stored."""
        with self.memory.transaction(self.tenant_id) as conn:
            if self._stored_version(conn, document.source) == (document.content_hash, document.chunking):
                return False
            self._write(conn, document)
        return True


def _literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector, bound as a parameter and cast to ``vector``."""
    return "[" + ",".join(map(str, map(float, vector))) + "]"


def _values(literal: str) -> tuple[float, ...]:
    """A vector's values from pgvector's text form."""
    return tuple(map(float, literal.strip("[]").split(",")))

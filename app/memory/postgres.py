"""The shared memory backend: every replica reads and writes one PostgreSQL database (full text, pgvector).

Chunks of every component and owner live in one table, ``tenant`` NULL for the shared store. Each
transaction names its tenant (``set_config('contexis.tenant', ..., true)``) and row-level security,
forced on the table owner too, lets it read only that tenant's and the shared rows and write only its
own: a query that forgot its filter still cannot reach another tenant. The schema is versioned and
created or upgraded by ``ctx memory migrate`` only; serving never migrates.

Connections come from one ``psycopg_pool`` pool per process and URL, opened on first use, so a forked
gunicorn worker opens its own. Every wait is bounded by ``CMP_MEMORY_TIMEOUT`` (pool checkout, connect,
statement timeout): a database that is down or slow is ``MemoryUnavailable`` (503), never a hung thread,
and the pool reconnects by itself when it is back.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from app.config import Settings
from app.errors import DocumentError, MemoryUnavailable
from app.memory.config import load_config
from app.memory.sqlite import query_terms
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

SCHEMA_VERSION = 1
# The vector column's size: the embedding model of hybrid retrieval must produce this many dimensions.
EMBEDDING_DIMENSIONS = 384
# Text search configuration of the generated tsvector and of queries: English stemming and stop words.
TS_CONFIG = "english"

# Tenant rules shared by the policies: the transaction's tenant ('' or unset: the shared owner).
_OWNER = "tenant IS NOT DISTINCT FROM nullif(current_setting('contexis.tenant', true), '')"
_VISIBLE = (
    "tenant IS NULL OR tenant = current_setting('contexis.tenant', true)"
    " OR current_setting('contexis.all_tenants', true) = 'on'"
)

# MIGRATIONS[n] brings the schema from version n to n + 1; released entries never change.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE memory_documents (
        tenant       text,
        component    text NOT NULL,
        source       text NOT NULL,
        content_hash text NOT NULL,
        chunking     text NOT NULL,
        bytes        bigint NOT NULL,
        chunks       integer NOT NULL,
        ingested_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE NULLS NOT DISTINCT (component, tenant, source)
    );
    CREATE TABLE memory_chunks (
        pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant       text,
        component    text NOT NULL,
        source       text NOT NULL,
        position     integer NOT NULL,
        id           text NOT NULL,
        content_hash text NOT NULL,
        content      text NOT NULL,
        tsv          tsvector GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', content)) STORED,
        embedding    vector({EMBEDDING_DIMENSIONS}),
        UNIQUE NULLS NOT DISTINCT (component, tenant, source, position)
    );
    CREATE INDEX memory_chunks_tsv ON memory_chunks USING gin (tsv);
    CREATE INDEX memory_chunks_embedding ON memory_chunks USING hnsw (embedding vector_cosine_ops);
    ALTER TABLE memory_documents ENABLE ROW LEVEL SECURITY;
    ALTER TABLE memory_documents FORCE ROW LEVEL SECURITY;
    ALTER TABLE memory_chunks ENABLE ROW LEVEL SECURITY;
    ALTER TABLE memory_chunks FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_reads ON memory_documents FOR SELECT USING ({_VISIBLE});
    CREATE POLICY owner_writes ON memory_documents USING ({_OWNER}) WITH CHECK ({_OWNER});
    CREATE POLICY tenant_reads ON memory_chunks FOR SELECT USING ({_VISIBLE});
    CREATE POLICY owner_writes ON memory_chunks USING ({_OWNER}) WITH CHECK ({_OWNER});
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

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

# Under row-level security PostgreSQL uses an index only for leakproof operators, and the text match
# operator (tsvector @@ tsquery, function ts_match_vq) is not marked so by default: without this, every
# search reads the whole table. Only a superuser may mark it; `migrate` does when it runs as one.
LEAKPROOF_MATCH = "ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF"

_pools: dict[tuple[int, str, int, float], ConnectionPool] = {}
_pools_lock = threading.Lock()


def _close_pools() -> None:
    """At exit, close this process's pools only: a forked child must not close its parent's sockets."""
    for key, pool in list(_pools.items()):
        if key[0] == os.getpid():
            pool.close(timeout=1)


atexit.register(_close_pools)


def _pool(url: str, size: int, timeout: float) -> ConnectionPool:
    """This process's pool for ``url``, opened on first use (after gunicorn's fork), filled in the background."""
    key = (os.getpid(), url, size, timeout)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            limit_ms = max(1, int(timeout * 1000))
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=size,
                timeout=timeout,
                # A connection that died with the server is found at checkout, not by the request.
                check=ConnectionPool.check_connection,
                kwargs={
                    "connect_timeout": max(1, math.ceil(timeout)),
                    # A host that stops answering (no reset, no ACK) drops the connection instead of
                    # holding a thread until the kernel gives up, minutes later. TCP only.
                    "tcp_user_timeout": limit_ms,
                    "options": f"-c statement_timeout={limit_ms} -c idle_in_transaction_session_timeout={limit_ms * 5}",
                    "application_name": "contexis-runtime",
                },
                # A failed connection attempt is dropped at once instead of retried in the background: the
                # next checkout tries again, so a request waits at most `timeout` and the first one after
                # the database is back reconnects.
                reconnect_timeout=0,
                name="contexis-memory",
                open=False,
            )
            pool.open(wait=False)
            _pools[key] = pool
    return pool


def describe_url(url: str) -> str:
    """A database URL for humans: host, port and database, never the user's password."""
    parts = conninfo_to_dict(url)
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{host}{port}/{parts.get('dbname') or ''}"


class PostgresMemory:
    """Memory in one PostgreSQL database shared by every replica; the project root names sources only."""

    system = "postgresql"

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.root = Path(settings.project_root)
        self.embedder = embedder
        self.url = settings.memory_url
        self.timeout = settings.memory_timeout
        self.pool_size = settings.memory_pool_size or settings.threads
        self.where = describe_url(self.url)

    @contextmanager
    def transaction(
        self, tenant_id: str | None, *, all_tenants: bool = False, search: bool = False
    ) -> Iterator[psycopg.Connection]:
        """One transaction acting for ``tenant_id`` (None: the shared owner); every database failure,
        timeout or a schema not yet migrated is ``MemoryUnavailable``, without the URL or its password.

        ``search`` keeps the planner on the text index: for common words it would otherwise read the
        table in order until the budget is filled, paying the tenant and text filters on every row
        (about 20 % slower at the median at 40,000 chunks, docs/benchmarks.md).
        """
        try:
            with _pool(self.url, self.pool_size, self.timeout).connection() as conn:
                conn.execute(
                    "SELECT set_config('contexis.tenant', %s, true), set_config('contexis.all_tenants', %s, true),"
                    " set_config('enable_seqscan', CASE WHEN %s THEN 'off' ELSE current_setting('enable_seqscan')"
                    " END, true)",
                    (tenant_id or "", "on" if all_tenants else "off", search),
                )
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise MemoryUnavailable(f"memory schema missing in {self.where}: run `ctx memory migrate`") from exc
        except PoolTimeout as exc:
            raise MemoryUnavailable(f"memory database {self.where} unavailable: no connection in time") from exc
        except psycopg.errors.QueryCanceled as exc:
            raise MemoryUnavailable(f"memory database {self.where} too slow: statement timeout") from exc
        except psycopg.OperationalError as exc:
            raise MemoryUnavailable(f"memory database {self.where} unavailable: connection failed") from exc

    def store(self, component: str, tenant_id: str | None = None) -> MemoryStore:
        return PostgresStore(self, component, tenant_id)

    def stores(self) -> list[MemoryStore]:
        with self.transaction(None, all_tenants=True) as conn:
            owners = conn.execute(
                "SELECT DISTINCT component, tenant FROM memory_documents ORDER BY component, tenant NULLS FIRST"
            ).fetchall()
        return [PostgresStore(self, component, tenant) for component, tenant in owners]

    def analyze(self) -> None:
        """Refresh the planner's statistics after a bulk write. Without them (a table filled faster than
        autovacuum looks) the planner scans every chunk of the component instead of using the text index."""
        with self.transaction(None) as conn:
            conn.execute("ANALYZE memory_documents, memory_chunks")

    def schema_version(self) -> int:
        """The schema version the database holds; 0 before the first migration."""
        with self.transaction(None) as conn:
            exists = conn.execute("SELECT to_regclass('memory_schema') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return 0
            row = conn.execute("SELECT max(version) FROM memory_schema").fetchone()
        return int(row[0] or 0) if row else 0

    def problem(self) -> str | None:
        """Why memory cannot serve (database away, slow, schema behind), naming the backend."""
        try:
            version = self.schema_version()
        except MemoryUnavailable as exc:
            return exc.message
        if version != SCHEMA_VERSION:
            expected = f"expected {SCHEMA_VERSION}: run `ctx memory migrate`"
            return f"memory schema in {self.where} is version {version}, {expected}"
        return None

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema, one transaction under an advisory lock; (version before, after)."""
        with self.transaction(None) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('contexis.memory_schema'))")
            conn.execute("CREATE TABLE IF NOT EXISTS memory_schema (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) FROM memory_schema").fetchone()
            before = int(row[0] or 0) if row else 0
            for version in range(before, SCHEMA_VERSION):
                conn.execute(MIGRATIONS[version])  # constants, several statements at once (no parameters)
                conn.execute("INSERT INTO memory_schema (version) VALUES (%s)", (version + 1,))
            if self._superuser(conn):
                conn.execute(LEAKPROOF_MATCH)
        return before, max(before, SCHEMA_VERSION)

    @staticmethod
    def _superuser(conn: psycopg.Connection) -> bool:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        return bool(row and row[0])

    def index_usable(self) -> bool:
        """Whether searches can use the full-text index under row-level security (see ``LEAKPROOF_MATCH``)."""
        with self.transaction(None) as conn:
            row = conn.execute("SELECT proleakproof FROM pg_proc WHERE oid = 'ts_match_vq'::regproc").fetchone()
        return bool(row and row[0])


class PostgresStore:
    """One component's memory in PostgreSQL as one owner sees it (``tenant_id`` None: the shared store)."""

    def __init__(self, memory: PostgresMemory, component: str, tenant_id: str | None = None) -> None:
        self.memory = memory
        self.component = check_name("component", component)
        self.tenant_id = check_name("tenant", tenant_id) if tenant_id else None
        self.config = load_config(memory.root / "memory" / component)
        self.embedder = memory.embedder

    @property
    def location(self) -> str:
        owner = f"tenant {self.tenant_id}" if self.tenant_id else "shared"
        return f"{self.memory.where} ({self.component}, {owner})"

    def _owner(self) -> tuple[str, tuple[str, ...]]:
        """The owner's rows as a condition the unique index serves (``IS NOT DISTINCT FROM`` would scan)."""
        if self.tenant_id is None:
            return "component = %s AND tenant IS NULL", (self.component,)
        return "component = %s AND tenant = %s", (self.component, self.tenant_id)

    # -- ingest ------------------------------------------------------------

    def ingest(
        self, paths: Iterable[Path], progress: Progress | None = None, embed_progress: Progress | None = None
    ) -> IngestReport:
        """Add files and directories, one transaction per document; unchanged files are skipped."""
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
        if report.ingested:
            self.memory.analyze()
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

        The commit does not wait for the WAL flush (like SQLite's ``synchronous=NORMAL``): a crash may
        lose the last documents written, never half of one, and a re-ingest adds them again.
        """
        conn.execute("SET LOCAL synchronous_commit = off")
        owner, params = self._owner()
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

    # -- search ------------------------------------------------------------

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None) -> Retrieval:
        """The ``top_k`` best chunks for an untrusted query, best first; ``top_k`` 0/None: the default."""
        if top_k is None or top_k == 0:
            top_k = self.config.top_k
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        return Retrieval(self.keyword_ranking(query, top_k), "keyword")

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[SearchResult]:
        return self.retrieve(query, top_k, mode).results

    def keyword_ranking(self, query: str, top_k: int) -> list[SearchResult]:
        """The ``top_k`` best chunks of the tenant's and the shared rows, by ``ts_rank`` (higher is better)."""
        terms = query_terms(query)
        if not terms:
            return []
        params = {
            "any": " or ".join(terms),
            "all": " ".join(terms),
            "component": self.component,
            "tenant": self.tenant_id,
            "budget": SCORE_BUDGET,
            "top_k": top_k,
        }
        with self.memory.transaction(self.tenant_id, search=True) as conn:
            rows = conn.execute(_SEARCH_SQL, params).fetchall()
        return [SearchResult(id=i, content=content, score=float(score), source=src) for i, content, score, src in rows]

    # -- maintenance -------------------------------------------------------

    def delete(self, source: str | None = None) -> int:
        """Remove one document (by stored name or path) or, with None, all of the owner's; documents removed."""
        where, params = self._owner()
        if source is not None:
            where += " AND source IN (%s, %s)"
            params += (source, source_name(self.memory.root, Path(source)))
        with self.memory.transaction(self.tenant_id) as conn:
            conn.execute(f"DELETE FROM memory_chunks WHERE {where}", params)  # noqa: S608 - constants only
            return conn.execute(f"DELETE FROM memory_documents WHERE {where}", params).rowcount  # noqa: S608

    def stats(self) -> StoreStats:
        """Documents, chunks and sizes of the owner's rows (``db_bytes``: their size in the tables)."""
        owner, params = self._owner()
        with self.memory.transaction(self.tenant_id) as conn:
            totals = "count(*), coalesce(sum(chunks), 0), coalesce(sum(bytes), 0)"
            documents, chunks, source_bytes = conn.execute(
                f"SELECT {totals} FROM memory_documents WHERE {owner}",  # noqa: S608 - constants only
                params,
            ).fetchone() or (0, 0, 0)
            row = conn.execute(
                f"SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM memory_chunks c WHERE {owner}",  # noqa: S608
                params,
            ).fetchone()
        return StoreStats(
            component=self.component,
            tenant_id=self.tenant_id,
            location=self.location,
            documents=int(documents),
            chunks=int(chunks),
            source_bytes=int(source_bytes),
            db_bytes=int(row[0]) if row else 0,
        )

    def documents(self) -> Iterator[Document]:
        """Every document of the owner with its chunks, in source order."""
        owner, params = self._owner()
        with self.memory.transaction(self.tenant_id) as conn:
            heads = conn.execute(
                f"SELECT source, content_hash, chunking, bytes FROM memory_documents WHERE {owner} ORDER BY source",  # noqa: S608
                params,
            ).fetchall()
        for source, content_hash, chunking, size in heads:
            with self.memory.transaction(self.tenant_id) as conn:
                columns = "id, position, content_hash, content"
                chunks = conn.execute(
                    f"SELECT {columns} FROM memory_chunks WHERE {owner} AND source = %s ORDER BY position",  # noqa: S608
                    (*params, source),
                ).fetchall()
            yield Document(source, content_hash, chunking, int(size), tuple(Chunk(*chunk) for chunk in chunks))

    def put(self, document: Document) -> bool:
        """Store ``document`` as it is (ids and chunks kept); False when this version is already stored."""
        with self.memory.transaction(self.tenant_id) as conn:
            if self._stored_version(conn, document.source) == (document.content_hash, document.chunking):
                return False
            self._write(conn, document)
        return True

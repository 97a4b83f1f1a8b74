"""The shared memory backend: every replica reads and writes one PostgreSQL database (full text, pgvector).

Chunks of every component and owner live in one table, ``tenant`` NULL for the shared store. Each
transaction names its tenant (``set_config('contexis.tenant', ..., true)``) and row-level security,
forced on the table owner too, lets it read only that tenant's and the shared rows and write only its
own: a query that forgot its filter still cannot reach another tenant. The schema is versioned and
created or upgraded by ``ctx memory migrate`` only; serving never migrates.

Vectors (``memory_vectors``, one per chunk with the model that made it, of any dimension) are deleted
with their chunk by the foreign key; ``memory_embeddings`` records each owner's model and dimension.
Nearest neighbours come from an HNSW index per dimension (``prepare_searches`` builds it after the
ingest that stores the dimension's first vectors), or from an exact scan of the owner's and the shared
vectors where the index cannot serve (see ``PostgresStore.vector_ranking``); docs/retrieval.md has figures.

Connections come from one ``psycopg_pool`` pool per process and URL, opened on first use, so a forked
gunicorn worker opens its own. Every wait is bounded by ``CMP_MEMORY_TIMEOUT`` (pool checkout, connect,
statement timeout): a database that is down or slow is ``MemoryUnavailable`` (503), never a hung thread,
and the pool reconnects by itself when it is back. The server's timeouts need a server that runs, and TCP's
a peer that resets: a database that is stopped (SIGSTOP, a frozen VM) or a socket that goes silent answers
neither, so the client bounds each transaction too (``_BoundedConnection``), and a connection that missed its
deadline is closed, so the pool replaces it.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from app.config import Settings
from app.errors import DocumentError, MemoryUnavailable
from app.memory.config import load_config
from app.memory.hybrid import PendingChunk, check_batch, copied_dimension, embed_pending, retrieve
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

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Migration 1's vector column (never written: vectors came with migration 2) had this size.
EMBEDDING_DIMENSIONS = 384
# pgvector indexes `vector` values of at most this many dimensions with HNSW; larger ones are ranked exactly.
HNSW_MAX_DIMENSIONS = 2000
# Candidates an HNSW search keeps (pgvector's hnsw.ef_search, 40 by default; at least the limit asked for):
# more is slower and nearer the exact ranking. docs/retrieval.md has the figures that chose it.
EF_SEARCH = 100
# Building an HNSW index holds its graph in maintenance_work_mem; one that does not fit is built on disk,
# 4x slower here. A build raises it to the graph's estimated size (per vector: its floats and ~600 bytes of
# links), up to this cap, and never lowers the server's setting.
INDEX_BUILD_MEMORY_CAP = 2 * 1024**3
# Text search configuration of the generated tsvector and of queries: English stemming and stop words.
TS_CONFIG = "english"

# Tenant rules shared by the policies: the transaction's tenant ('' or unset: the shared owner).
_OWNER = "tenant IS NOT DISTINCT FROM nullif(current_setting('contexis.tenant', true), '')"
_VISIBLE = (
    "tenant IS NULL OR tenant = current_setting('contexis.tenant', true)"
    " OR current_setting('contexis.all_tenants', true) = 'on'"
)



def _row_security(table: str, write_check: str = _OWNER) -> str:
    """Row-level security as every memory table has it: forced (the owning role too), reads of the
    transaction's tenant's and the shared rows, writes of its own (and whatever `write_check` adds)."""
    return f"""
    ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
    ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_reads ON {table} FOR SELECT USING ({_VISIBLE});
    CREATE POLICY owner_writes ON {table} USING ({_OWNER}) WITH CHECK ({write_check});
    """


# A vector belongs to its chunk's owner: no one attaches vectors to chunks of another owner.
_VECTOR_WRITES = f"""{_OWNER} AND EXISTS (
    SELECT 1 FROM memory_chunks c WHERE c.pk = memory_vectors.chunk
    AND c.component = memory_vectors.component AND c.tenant IS NOT DISTINCT FROM memory_vectors.tenant
)"""  # noqa: S608 - constants only

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
    """
    -- Vectors of any dimension in a table of their own; migration 1's vector(384) column was never written.
    ALTER TABLE memory_chunks DROP COLUMN embedding;
    -- Each owner's embedding model, and the dimension of its vectors once it has some.
    CREATE TABLE memory_embeddings (
        tenant     text,
        component  text NOT NULL,
        model      text,
        dimension  integer,
        UNIQUE NULLS NOT DISTINCT (component, tenant)
    );
    CREATE TABLE memory_vectors (
        chunk      bigint PRIMARY KEY REFERENCES memory_chunks (pk) ON DELETE CASCADE,
        tenant     text,
        component  text NOT NULL,
        model      text NOT NULL,
        embedding  vector NOT NULL,
        dimension  integer NOT NULL GENERATED ALWAYS AS (vector_dims(embedding)) STORED
    );
    CREATE INDEX memory_vectors_owner ON memory_vectors (component, tenant, model);
    """
    + _row_security("memory_embeddings")
    + _row_security("memory_vectors", _VECTOR_WRITES),
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

# Under row-level security PostgreSQL uses an index only for leakproof operators, and the text match
# operator (tsvector @@ tsquery, function ts_match_vq) is not marked so by default: without this, every
# search reads the whole table. Only a superuser may mark it; `migrate` does when it runs as one.
LEAKPROOF_MATCH = "ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF"

# The calling thread's bounds: `at`, the monotonic time by which its transaction must end, and `each`, the
# most one wait on the server may take (unset or None: no bound).
_deadline = threading.local()


class DeadlineMissed(psycopg.OperationalError):
    """The database did not answer by the transaction's deadline; the connection was closed."""


class _BoundedConnection(psycopg.Connection[Any]):
    """A connection whose every wait on the server (statements, commit, the pool's check at checkout)
    ends by the calling thread's deadline, whatever the server or the network do.

    Past it the connection is in the middle of an exchange, so it is closed: the pool drops a closed
    connection when it comes back, and the next checkout gets a fresh one.
    """

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bounds = [timeout, getattr(_deadline, "each", None)]
        deadline: float | None = getattr(_deadline, "at", None)
        if deadline is not None:
            bounds.append(max(deadline - time.monotonic(), 0.001))
        timeout = min((bound for bound in bounds if bound is not None), default=None)
        try:
            return super().wait(gen, interval, timeout)
        except psycopg.errors._WaitTimeout as exc:  # psycopg's own: its wait timed out
            self.pgconn.finish()
            raise DeadlineMissed("no answer by the deadline") from exc


@contextmanager
def _bounded(whole: float | None, each: float | None) -> Iterator[float | None]:
    """Until the block ends, this thread's memory waits end ``whole`` seconds from now, and each one after
    ``each`` seconds (None: no such bound); the deadline, if any."""
    previous = getattr(_deadline, "at", None), getattr(_deadline, "each", None)
    _deadline.at = None if whole is None else time.monotonic() + whole
    _deadline.each = each
    try:
        yield _deadline.at
    finally:
        _deadline.at, _deadline.each = previous


_pools: dict[tuple[int, str, int, float], ConnectionPool[_BoundedConnection]] = {}
_pools_lock = threading.Lock()


def _close_pools() -> None:
    """At exit, close this process's pools only: a forked child must not close its parent's sockets."""
    for key, pool in list(_pools.items()):
        if key[0] == os.getpid():
            pool.close(timeout=1)


atexit.register(_close_pools)


def _pool(url: str, size: int, timeout: float) -> ConnectionPool[_BoundedConnection]:
    """This process's pool for ``url``, opened on first use (after gunicorn's fork), filled in the background."""
    key = (os.getpid(), url, size, timeout)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            limit_ms = max(1, int(timeout * 1000))
            # The server cancels a slow statement a little before the client's deadline: a running server
            # answers "statement timeout" and keeps the connection; the deadline is for one that cannot.
            statement_ms = max(1, int(timeout * 800))
            pool = ConnectionPool(
                url,
                connection_class=_BoundedConnection,
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
                    # An idle pooled connection whose peer vanished is found by keepalives, not by a request.
                    "keepalives": 1,
                    "keepalives_idle": max(1, math.ceil(timeout)),
                    "keepalives_interval": 1,
                    "keepalives_count": 3,
                    "options": f"-c statement_timeout={statement_ms}"
                    f" -c idle_in_transaction_session_timeout={limit_ms * 5}",
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
        self,
        tenant_id: str | None,
        *,
        all_tenants: bool = False,
        search: bool = False,
        ef_search: int = 0,
        bulk: bool = False,
        unbounded: bool = False,
    ) -> Iterator[psycopg.Connection]:
        """One transaction acting for ``tenant_id`` (None: the shared owner); every database failure,
        timeout or a schema not yet migrated is ``MemoryUnavailable``, without the URL or its password.

        The whole transaction (checkout, statements, commit) ends within ``CMP_MEMORY_TIMEOUT``. A ``bulk``
        one (writing a document, a batch of vectors: ingest and copies, not requests) may take longer in all,
        but each of its waits on the server ends within the timeout, as each statement does on the server;
        ``unbounded`` is for an index build, which may take minutes, from the CLI only.

        ``search`` keeps the planner on the indexes: for common words it would otherwise read the table
        in order until the budget is filled, paying the tenant and text filters on every row (about 20 %
        slower at the median at 40,000 chunks, docs/benchmarks.md). ``ef_search`` sets the candidates of
        an HNSW search.
        """
        settings = {"contexis.tenant": tenant_id or "", "contexis.all_tenants": "on" if all_tenants else "off"}
        if search:
            settings["enable_seqscan"] = "off"
        if ef_search:
            settings["hnsw.ef_search"] = str(ef_search)
        try:
            whole = None if bulk or unbounded else self.timeout
            with _bounded(whole, None if unbounded else self.timeout) as deadline:
                wait = self.timeout if deadline is None else deadline - time.monotonic()
                with _pool(self.url, self.pool_size, self.timeout).connection(timeout=wait) as conn:
                    calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
                    conn.execute(f"SELECT {calls}", [value for pair in settings.items() for value in pair])
                    yield conn
        except DeadlineMissed as exc:
            raise MemoryUnavailable(f"memory database {self.where} did not answer in time") from exc
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

    def prepare_searches(self) -> None:
        """After a bulk write: an HNSW index for each dimension of stored vectors that has none yet, then
        fresh planner statistics. Without them (a table filled faster than autovacuum looks) the planner
        scans every chunk of the component instead of using the text index.

        Both need the tables' owner; run by another role, searches stay correct and scan instead.
        """
        with self.transaction(None, all_tenants=True) as conn:
            dimensions = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT dimension FROM memory_embeddings WHERE dimension <= %s"
                    " AND to_regclass(format('memory_vectors_hnsw_%%s', dimension)) IS NULL ORDER BY 1",
                    (HNSW_MAX_DIMENSIONS,),
                )
            ]
        for dimension in dimensions:
            try:
                self._build_index(dimension)
            except psycopg.errors.InsufficientPrivilege:
                log.warning(
                    "cannot index the memory vectors: only the tables' owner can; searches scan them instead",
                    extra={"fields": {"dimension": dimension}},
                )
        with self.transaction(None, bulk=True) as conn:
            conn.execute("ANALYZE memory_documents, memory_chunks, memory_vectors")

    def _build_index(self, dimension: int) -> None:
        """The HNSW index (cosine) of the ``dimension``-dimensional vectors: an expression index, as the
        column has no fixed dimension, and partial, so each dimension has its own.

        Built once, after the ingest that stored the first vectors (a build is much faster than as many
        inserts); PostgreSQL keeps it current after. Searches go on meanwhile; other writers of vectors
        wait for it, so the build has no statement timeout.
        """
        with self.transaction(None, all_tenants=True, unbounded=True) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('contexis.memory_vectors_index'))")
            count = conn.execute("SELECT count(*) FROM memory_vectors WHERE dimension = %s", (dimension,)).fetchone()
            graph = min((count[0] if count else 0) * (4 * dimension + 600), INDEX_BUILD_MEMORY_CAP)
            conn.execute(
                "SELECT set_config('statement_timeout', '0', true), set_config('maintenance_work_mem',"
                " greatest(pg_size_bytes(current_setting('maintenance_work_mem')), %s::bigint) / 1024 || 'kB', true)",
                (graph,),
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS memory_vectors_hnsw_{dimension} ON memory_vectors"
                f" USING hnsw ((embedding::vector({dimension})) vector_cosine_ops) WHERE dimension = {dimension}"
            )

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
        with self.transaction(None, bulk=True) as conn:
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
        with self.memory.transaction(self.tenant_id, bulk=True) as conn:
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
        with self.memory.transaction(self.tenant_id, bulk=True) as conn:
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
        with self.memory.transaction(self.tenant_id, bulk=True) as conn:
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

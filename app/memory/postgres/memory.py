"""``PostgresMemory``: the backend's entry point, one per process and URL, handing out transactions and stores."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg_pool import PoolTimeout

from app.config import Settings, describe_url
from app.errors import MemoryUnavailable
from app.memory.postgres import schema
from app.memory.postgres.pool import DeadlineMissed, bounded_waits, connection_pool
from app.memory.postgres.store import PostgresStore
from app.memory.store import Embedder, MemoryStore

log = logging.getLogger("app.memory.postgres")


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
        bounded: bool = True,
    ) -> Iterator[psycopg.Connection]:
        """One transaction acting for ``tenant_id`` (None: the shared owner); every database failure,
        timeout or a schema not yet migrated is ``MemoryUnavailable``, without the URL or its password.

        The whole transaction (checkout, statements, commit) ends within ``CMP_MEMORY_TIMEOUT``, unless
        ``bounded`` is False (an index build, which may take minutes, from the CLI only).

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
            with bounded_waits(self.timeout if bounded else None) as deadline:
                wait = self.timeout if deadline is None else deadline - time.monotonic()
                with connection_pool(self.url, self.pool_size, self.timeout).connection(timeout=wait) as conn:
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
            dimensions = schema.unindexed_dimensions(conn)
        for dimension in dimensions:
            try:
                # An index build may take minutes: its transaction is not bounded by CMP_MEMORY_TIMEOUT.
                with self.transaction(None, all_tenants=True, bounded=False) as conn:
                    schema.build_index(conn, dimension)
            except psycopg.errors.InsufficientPrivilege:
                log.warning(
                    "cannot index the memory vectors: only the tables' owner can; searches scan them instead",
                    extra={"fields": {"dimension": dimension}},
                )
        with self.transaction(None) as conn:
            conn.execute("ANALYZE memory_documents, memory_chunks, memory_vectors")

    def schema_version(self) -> int:
        """The schema version the database holds; 0 before the first migration."""
        with self.transaction(None) as conn:
            return schema.schema_version(conn)

    def problem(self) -> str | None:
        """Why memory cannot serve (database away, slow, schema behind), naming the backend."""
        try:
            version = self.schema_version()
        except MemoryUnavailable as exc:
            return exc.message
        if version != schema.SCHEMA_VERSION:
            expected = f"expected {schema.SCHEMA_VERSION}: run `ctx memory migrate`"
            return f"memory schema in {self.where} is version {version}, {expected}"
        return None

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema, one transaction under an advisory lock; (version before, after)."""
        with self.transaction(None) as conn:
            return schema.apply_migrations(conn)

    def index_usable(self) -> bool:
        """Whether searches can use the full-text index under row-level security (see ``LEAKPROOF_MATCH``)."""
        with self.transaction(None) as conn:
            return schema.index_usable(conn)

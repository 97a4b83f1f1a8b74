"""The PostgreSQL memory schema: tables, row-level security, versioned migrations and the vector indexes.

``MIGRATIONS[n]`` brings the schema from version n to n + 1; released entries never change. Only
``ctx memory migrate`` applies them (``apply_migrations``); serving checks the version (``schema_version``).
"""

from __future__ import annotations

import psycopg

SCHEMA_VERSION = 2
# Migration 1's vector column (never written: vectors came with migration 2) had this size.
EMBEDDING_DIMENSIONS = 384
# pgvector indexes `vector` values of at most this many dimensions with HNSW; larger ones are ranked exactly.
HNSW_MAX_DIMENSIONS = 2000
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

# Under row-level security PostgreSQL uses an index only for leakproof operators, and the text match
# operator (tsvector @@ tsquery, function ts_match_vq) is not marked so by default: without this, every
# search reads the whole table. Only a superuser may mark it; `migrate` does when it runs as one.
LEAKPROOF_MATCH = "ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF"


def schema_version(conn: psycopg.Connection) -> int:
    """The schema version the database holds; 0 before the first migration."""
    exists = conn.execute("SELECT to_regclass('memory_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM memory_schema").fetchone()
    return int(row[0] or 0) if row else 0


def apply_migrations(conn: psycopg.Connection) -> tuple[int, int]:
    """Create or upgrade the schema in this transaction, under an advisory lock; (version before, after)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('contexis.memory_schema'))")
    conn.execute("CREATE TABLE IF NOT EXISTS memory_schema (version integer NOT NULL)")
    row = conn.execute("SELECT max(version) FROM memory_schema").fetchone()
    before = int(row[0] or 0) if row else 0
    for version in range(before, SCHEMA_VERSION):
        conn.execute(MIGRATIONS[version])  # constants, several statements at once (no parameters)
        conn.execute("INSERT INTO memory_schema (version) VALUES (%s)", (version + 1,))
    if _superuser(conn):
        conn.execute(LEAKPROOF_MATCH)
    return before, max(before, SCHEMA_VERSION)


def _superuser(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def index_usable(conn: psycopg.Connection) -> bool:
    """Whether searches can use the full-text index under row-level security (see ``LEAKPROOF_MATCH``)."""
    row = conn.execute("SELECT proleakproof FROM pg_proc WHERE oid = 'ts_match_vq'::regproc").fetchone()
    return bool(row and row[0])


def unindexed_dimensions(conn: psycopg.Connection) -> list[int]:
    """The dimensions of stored vectors that HNSW can index and that have no index yet."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT dimension FROM memory_embeddings WHERE dimension <= %s"
            " AND to_regclass(format('memory_vectors_hnsw_%%s', dimension)) IS NULL ORDER BY 1",
            (HNSW_MAX_DIMENSIONS,),
        )
    ]


def build_index(conn: psycopg.Connection, dimension: int) -> None:
    """The HNSW index (cosine) of the ``dimension``-dimensional vectors: an expression index, as the
    column has no fixed dimension, and partial, so each dimension has its own.

    Built once, after the ingest that stored the first vectors (a build is much faster than as many
    inserts); PostgreSQL keeps it current after. Searches go on meanwhile; other writers of vectors
    wait for it, so the build has no statement timeout (the caller's transaction must not bound it either).
    """
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

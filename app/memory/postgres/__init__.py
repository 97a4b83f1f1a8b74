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
neither, so the client bounds each transaction too (``pool.BoundedConnection``), and a connection that missed its
deadline is closed, so the pool replaces it.

The package: ``schema`` (tables, policies, migrations, vector indexes), ``pool`` (bounded connections),
``memory`` (``PostgresMemory``), ``store`` (``PostgresStore``).
"""

from app.memory.postgres.memory import PostgresMemory
from app.memory.postgres.schema import LEAKPROOF_MATCH, MIGRATIONS, SCHEMA_VERSION
from app.memory.postgres.store import PostgresStore

__all__ = ["LEAKPROOF_MATCH", "MIGRATIONS", "SCHEMA_VERSION", "PostgresMemory", "PostgresStore"]

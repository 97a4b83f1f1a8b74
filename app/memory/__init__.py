"""Component memory: documents chunked, stored per owner and searched for the prompt.

store.py     the `MemoryStore` and `Embedder` interfaces and the types every backend returns
sqlite.py    the embedded backend (FTS5 BM25, vectors in the same file)
hybrid.py    what every backend shares: embedding at ingest, hybrid retrieval, falling back to keywords
fusion.py    reciprocal rank fusion
config.py    `memory_config.yaml`
extract.py   a document's searchable text
chunking.py  text into chunks

`open_store` and `list_stores` pick the backend; nothing above this package names one.
"""

from __future__ import annotations

from pathlib import Path

from app.memory.config import SEARCH_MODES
from app.memory.store import (
    DEGRADED_KEYWORDS_ONLY,
    Embedder,
    IngestReport,
    MemoryStore,
    Progress,
    Retrieval,
    SearchResult,
    StoreStats,
)

__all__ = [
    "DEGRADED_KEYWORDS_ONLY",
    "SEARCH_MODES",
    "Embedder",
    "IngestReport",
    "MemoryStore",
    "Progress",
    "Retrieval",
    "SearchResult",
    "StoreStats",
    "list_stores",
    "open_store",
]


def open_store(
    root: Path, component: str, tenant_id: str | None = None, embedder: Embedder | None = None
) -> MemoryStore:
    """The store of `component` for `tenant_id` (None or "": the shared store) under the project `root`.

    With an `embedder`, ingest also stores vectors and searches use them (`memory_config.yaml`'s search_mode).
    """
    from app.memory.sqlite import SqliteStore

    return SqliteStore(root, component, tenant_id, embedder)


def list_stores(root: Path) -> list[MemoryStore]:
    """Every store that holds data, shared before tenants, for `ctx memory stats`."""
    from app.memory.sqlite import list_sqlite_stores

    return list(list_sqlite_stores(root))

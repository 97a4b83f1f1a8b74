"""Component memory: documents chunked, stored per owner and searched for the prompt.

store.py     the `MemoryStore`, `Memory` and `Embedder` interfaces and the types every backend returns
sqlite.py    the embedded backend (FTS5 BM25, vectors in the same file), one file per component and owner
postgres/    the shared backend (PostgreSQL full text, pgvector), one database for every replica
hybrid.py    what every backend shares: embedding at ingest, hybrid retrieval, falling back to keywords
query.py     what both backends search for: a query's distinct non-stop words
fusion.py    reciprocal rank fusion
config.py    `memory_config.yaml`
extract.py   a document's searchable text
chunking.py  text into chunks

`open_memory` picks the backend from the settings; nothing above this package names one.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.memory.config import SEARCH_MODES
from app.memory.store import (
    DEGRADED_KEYWORDS_ONLY,
    Document,
    Embedder,
    IngestReport,
    Memory,
    MemoryStore,
    Progress,
    Retrieval,
    SearchResult,
    StoreStats,
)

__all__ = [
    "DEGRADED_KEYWORDS_ONLY",
    "SEARCH_MODES",
    "CopyReport",
    "Document",
    "Embedder",
    "IngestReport",
    "Memory",
    "MemoryStore",
    "Progress",
    "Retrieval",
    "SearchResult",
    "StoreStats",
    "copy_memory",
    "open_memory",
]


def open_memory(settings: Settings, embedder: Embedder | None = None) -> Memory:
    """`CMP_MEMORY_URL` unset: SQLite files under the project root; a PostgreSQL URL: that database.

    With an `embedder`, ingest also stores vectors and searches use them (`memory_config.yaml`'s search_mode).
    """
    if settings.memory_url:
        from app.memory.postgres import PostgresMemory

        return PostgresMemory(settings, embedder)
    from app.memory.sqlite import SqliteMemory

    return SqliteMemory(settings.project_root, embedder)


@dataclass
class CopyReport:
    """What `copy_memory` moved."""

    stores: int = 0
    copied: int = 0
    unchanged: int = 0
    chunks: int = 0


def copy_memory(source: Memory, target: Memory) -> CopyReport:
    """Every store's documents, chunks as stored (nothing re-chunked), into the same owner of `target`;
    a document already there in the same version is skipped, so a copy can be repeated."""
    report = CopyReport()
    for store in source.stores():
        report.stores += 1
        destination = target.store(store.component, store.tenant_id)
        for document in store.documents():
            if destination.put(document):
                report.copied += 1
                report.chunks += len(document.chunks)
            else:
                report.unchanged += 1
    return report

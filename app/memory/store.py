"""The memory store interface the runtime and the CLI use, and the types every backend returns.

A backend (`sqlite`, `postgres`) stores a component's chunks per owner (shared, or one
tenant's) and searches the caller's own and the shared chunks, never another
tenant's. `app.memory.open_memory` picks the backend; nothing above this package names one.
With an `Embedder`, a backend also stores one vector per chunk and ranks by them;
`app.memory.hybrid` holds what every backend shares (embedding at ingest, fusion, degradation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.errors import InvalidNameError, MemoryStoreError
from app.memory.chunking import chunk_text
from app.memory.config import MemoryConfig
from app.memory.extract import SUPPORTED_SUFFIXES, extract_text
from app.names import is_safe_name

Progress = Callable[[int, int, str], None]
# The value of the `X-Contexis-Degraded` answer header when the query could not be embedded.
DEGRADED_KEYWORDS_ONLY = "memory-keywords-only"


class Embedder(Protocol):
    """Texts to unit vectors of one dimension per model; `app.providers` builds one, memory only calls it."""

    model_id: str
    batch_size: int  # texts per `embed` call at ingest

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order (a batch of chunks at ingest); a `ProviderError` otherwise."""
        ...

    def embed_query(self, text: str) -> list[float]:
        """A search query's vector, within a short deadline and cached per process; a `ProviderError` otherwise."""
        ...


@dataclass(frozen=True)
class SearchResult:
    """One ranked chunk; a higher score is a better match."""

    id: str
    content: str
    score: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The mapping templates and JSON answers use."""
        return asdict(self)


@dataclass(frozen=True)
class Retrieval:
    """A search's results, the mode that produced them and, when it fell back to keywords, why."""

    results: list[SearchResult]
    mode: str
    degraded: str = ""


@dataclass
class IngestReport:
    """What one ``ingest()`` call did, for the command's summary line."""

    ingested: int = 0
    unchanged: int = 0
    unsupported: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_embedded: int = 0
    embed_error: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return asdict(self)


@dataclass(frozen=True)
class StoreStats:
    """Size of one store; ``db_bytes`` is what its rows take (SQLite: the database with its WAL file)."""

    component: str
    tenant_id: str | None
    location: str
    documents: int
    chunks: int
    source_bytes: int
    db_bytes: int
    embed_model: str | None = None
    embed_dimension: int | None = None
    chunks_with_vectors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a document; ``id`` derives from the source and position, so it is stable.

    ``vector`` is its embedding by the document's ``embed_model``, when it has one (read for copies).
    """

    id: str
    position: int
    content_hash: str
    content: str
    vector: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Document:
    """A document as every backend stores it: what ``ingest`` writes and ``ctx memory copy`` moves.

    ``embed_model`` names the model of its chunks' vectors (None: they have none), so a copy moves
    them without embedding again.
    """

    source: str
    content_hash: str
    chunking: str
    bytes: int
    chunks: tuple[Chunk, ...]
    embed_model: str | None = None


def fingerprint(text: str) -> str:
    """A stable short fingerprint for ids and change detection (not a security boundary)."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def file_digest(data: bytes) -> str:
    """What decides whether a file changed since it was ingested."""
    return hashlib.sha256(data).hexdigest()


def build_document(file: Path, data: bytes, source: str, config: MemoryConfig) -> Document:
    """The chunks of a file's bytes, with the ids and hashes every backend stores."""
    chunks = chunk_text(extract_text(file, data), config.chunk_size, config.chunk_overlap)
    prefix = fingerprint(source)[:12]
    return Document(
        source=source,
        content_hash=file_digest(data),
        chunking=config.chunking,
        bytes=len(data),
        chunks=tuple(
            Chunk(f"{prefix}-{position}", position, fingerprint(chunk)[:16], chunk)
            for position, chunk in enumerate(chunks)
        ),
    )


def source_name(root: Path, path: Path) -> str:
    """How a file is named in a store: relative to the project root when under it, else absolute.

    The same file gets the same name however it was given (file or directory, any cwd), which is
    what makes re-ingest replace instead of duplicate.
    """
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def check_name(kind: str, name: str) -> str:
    """`name`, when it can safely become a path segment; `InvalidNameError` otherwise."""
    if not is_safe_name(name):
        raise InvalidNameError(f"{kind} {name!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not '.' or '..')")
    return name


def collect_files(paths: Iterable[Path], report: IngestReport) -> list[Path]:
    """The supported files among `paths` (directories recursively, hidden entries skipped); others are counted."""
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            candidates = sorted(
                p
                for p in given.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
        elif given.is_file():
            candidates = [given]
        else:
            raise MemoryStoreError(f"{given}: no such file or directory")
        for candidate in candidates:
            if candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                files.append(candidate)
            else:
                report.unsupported += 1
    return files


class MemoryStore(Protocol):
    """One component's memory as one owner sees it: writes go to the owner's store; searches read its own
    and the shared one."""

    component: str
    tenant_id: str | None
    config: MemoryConfig
    embedder: Embedder | None

    @property
    def location(self) -> str:
        """Where the owner's chunks live, for humans (a file, or a database without credentials)."""
        ...

    def ingest(
        self, paths: Iterable[Path], progress: Progress | None = None, embed_progress: Progress | None = None
    ) -> IngestReport:
        """Add files and directories; unchanged files are skipped, changed ones replaced, one transaction each.

        With an embedder, then embed every chunk without a vector of its model (`hybrid.embed_pending`).
        """
        ...

    def retrieve(self, query: str, top_k: int | None = None, mode: str | None = None) -> Retrieval:
        """The `top_k` best chunks for an untrusted query, best first (`hybrid.retrieve`); 0/None: the default."""
        ...

    def search(self, query: str, top_k: int | None = None, mode: str | None = None) -> list[SearchResult]:
        """`retrieve(...).results`."""
        ...

    def delete(self, source: str | None = None) -> int:
        """Remove one document (by stored name or path) or, with None, all; the number of documents removed."""
        ...

    def stats(self) -> StoreStats:
        """Documents, chunks and sizes of the owner's store."""
        ...

    def documents(self) -> Iterator[Document]:
        """Every document of the owner's store with its chunks and their vectors, for ``ctx memory copy``."""
        ...

    def put(self, document: Document) -> bool:
        """Store a document as it is (no re-chunking), its vectors too when the store takes them
        (`hybrid.copied_dimension`); False when the same version is already stored."""
        ...


class Memory(Protocol):
    """A memory backend for one project root: the stores of every component and owner."""

    system: str  # OpenTelemetry's db.system: "sqlite" or "postgresql"

    def store(self, component: str, tenant_id: str | None = None) -> MemoryStore:
        """The store of `component` for `tenant_id` (None or "": the shared store)."""
        ...

    def stores(self) -> list[MemoryStore]:
        """Every store that holds data, shared before tenants, for `ctx memory stats` and copies."""
        ...

    def problem(self) -> str | None:
        """Why memory cannot serve now (for `/readyz`), or None."""
        ...

"""What every backend shares to search by meaning: embedding chunks at ingest, and hybrid retrieval.

A backend stores vectors and ranks by them (`VectorBackend`); this module decides what to embed,
when to fall back to keywords, and how rankings are fused (`fusion`), so a second backend
(PostgreSQL) behaves exactly as the embedded one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.errors import MemoryStoreError, ProviderError
from app.memory.config import MemoryConfig
from app.memory.fusion import reciprocal_rank_fusion
from app.memory.store import (
    DEGRADED_KEYWORDS_ONLY,
    Document,
    Embedder,
    IngestReport,
    Progress,
    Retrieval,
    SearchResult,
)

log = logging.getLogger(__name__)

# Each ranking fused offers this many candidates per requested result (at least MIN_CANDIDATES).
CANDIDATES_PER_RESULT = 4
MIN_CANDIDATES = 20


@dataclass(frozen=True)
class PendingChunk:
    """A chunk without a vector of the current model; `key` increases, so batches resume after the last one."""

    key: int
    content_hash: str
    text: str


class VectorBackend(Protocol):
    """What a backend implements so that `embed_pending` and `retrieve` work on it."""

    def keyword_ranking(self, query: str, limit: int) -> list[SearchResult]:
        """The best chunks by keywords (BM25), best first, from the owner's and the shared store."""
        ...

    def vector_ranking(self, vector: Sequence[float], model_id: str, limit: int) -> list[SearchResult]:
        """The chunks nearest `vector` (cosine) among those embedded by `model_id`, from the same stores."""
        ...

    def start_embedding(self, model_id: str) -> int:
        """Prepare the owner's store for `model_id` (another model's vectors are dropped); chunks left to embed."""
        ...

    def pending_chunks(self, after: int, limit: int) -> list[PendingChunk]:
        """Up to `limit` chunks of the owner's store without a vector, with keys above `after`, in key order."""
        ...

    def store_vectors(self, model_id: str, vectors: Sequence[tuple[PendingChunk, list[float]]]) -> int:
        """Save the vectors of chunks still unchanged, in one transaction; how many were saved."""
        ...


def embed_pending(
    backend: VectorBackend, embedder: Embedder, report: IngestReport, progress: Progress | None = None
) -> None:
    """Embed every chunk of the owner's store that lacks a vector of the embedder's model, a batch at a time.

    Each batch is saved as it arrives (`report.chunks_embedded`), so an interrupted run keeps what it
    finished and the next run embeds only the rest; a failure stops it and is told in `report.embed_error`.
    """
    try:
        total = backend.start_embedding(embedder.model_id)
        done = 0
        after = -1
        while pending := backend.pending_chunks(after, embedder.batch_size):
            vectors = embedder.embed([chunk.text for chunk in pending])
            report.chunks_embedded += backend.store_vectors(embedder.model_id, list(zip(pending, vectors, strict=True)))
            after = pending[-1].key
            done += len(pending)
            if progress is not None:
                progress(done, max(total, done), embedder.model_id)
    except (ProviderError, MemoryStoreError) as exc:
        report.embed_error = f"{exc.code}: {exc.message}"


def check_batch(
    location: str, held_model: str | None, held_dimension: int | None, model_id: str, dimension: int
) -> None:
    """Refuse to save vectors of `model_id` into a store that holds another model's, or another dimension.

    Another model means a concurrent ingest switched the store; another dimension under the same name
    means another model answers under it, and mixing the two would rank nonsense.
    """
    if held_model != model_id:
        raise MemoryStoreError(f"{location}: another ingest switched the embedding model meanwhile")
    if held_dimension is not None and held_dimension != dimension:
        raise MemoryStoreError(
            f"{model_id!r} now gives {dimension}-dimensional vectors where the store holds "
            f"{held_dimension}-dimensional ones: another model answers under that name; "
            "delete the store's documents (ctx memory delete) and ingest them again"
        )


def copied_dimension(document: Document, held_model: str | None, held_dimension: int | None) -> int | None:
    """The dimension of a copied `document`'s vectors when the store takes them, else None.

    A store takes them when it holds no model yet (it adopts the document's) or the same model and
    dimension; otherwise the chunks are stored without vectors and the next ingest embeds them.
    """
    vectors = [chunk.vector for chunk in document.chunks if chunk.vector is not None]
    if document.embed_model is None or not vectors:
        return None
    dimension = len(vectors[0])
    if held_model not in (None, document.embed_model) or held_dimension not in (None, dimension):
        return None
    return dimension


def resolve_mode(config: MemoryConfig, embedder: Embedder | None, mode: str | None) -> str:
    """The mode a search runs in: asked for, else the component's, else hybrid; keyword without an embedder."""
    if embedder is None:
        return "keyword"
    return mode or config.search_mode or "hybrid"


def retrieve(
    backend: VectorBackend,
    embedder: Embedder | None,
    config: MemoryConfig,
    query: str,
    top_k: int | None,
    mode: str | None,
) -> Retrieval:
    """The `top_k` best chunks for an untrusted `query` in the resolved mode, best first.

    `top_k` 0 or None is the component's default; an empty query finds nothing (and embeds nothing).
    Hybrid fuses the keyword and the vector rankings with reciprocal rank fusion. When the query cannot
    be embedded (the embedder is down, slow or answers nonsense) the search falls back to keywords and
    says so in `degraded`: the answer is worse, but it is still an answer, within the query's deadline.
    """
    if top_k is None or top_k == 0:
        top_k = config.top_k
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not query.strip():
        return Retrieval([], "keyword")
    mode = resolve_mode(config, embedder, mode)
    if embedder is None or mode == "keyword":
        return Retrieval(backend.keyword_ranking(query, top_k), "keyword")
    try:
        vector = embedder.embed_query(query)
    except ProviderError as exc:
        # The provider's telemetry has counted it (cmp_hf_embed_errors_total); the message holds no secret.
        log.warning(
            "query embedding failed, searching keywords only",
            extra={"fields": {"code": exc.code, "error_code": exc.metric_code, "error": exc.message}},
        )
        return Retrieval(backend.keyword_ranking(query, top_k), "keyword", degraded=DEGRADED_KEYWORDS_ONLY)
    if mode == "vector":
        return Retrieval(backend.vector_ranking(vector, embedder.model_id, top_k), "vector")
    depth = max(top_k * CANDIDATES_PER_RESULT, MIN_CANDIDATES)
    rankings = [backend.keyword_ranking(query, depth), backend.vector_ranking(vector, embedder.model_id, depth)]
    return Retrieval(reciprocal_rank_fusion(rankings, top_k), "hybrid")

"""Reciprocal rank fusion: one ranking out of several whose scores cannot be compared (BM25 and cosine).

Each list votes ``1 / (k + rank)`` for every chunk it holds (Cormack, Clarke and Büttcher, 2009), so a
chunk ranked well by both keywords and meaning beats one ranked first by either alone, and no score
needs calibrating. ``k = 60`` is the paper's value and the default of OpenSearch, Elasticsearch and Haystack.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.memory.store import SearchResult

RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[SearchResult]], top_k: int, k: int = RRF_K
) -> list[SearchResult]:
    """The ``top_k`` best chunks of all `rankings` (each best first), scored by their summed reciprocal ranks.

    A chunk is known by its id; ties keep the order in which chunks were first seen (keywords first).
    """
    scores: dict[str, float] = {}
    first: dict[str, SearchResult] = {}
    for ranking in rankings:
        for rank, result in enumerate(ranking, 1):
            scores[result.id] = scores.get(result.id, 0.0) + 1.0 / (k + rank)
            first.setdefault(result.id, result)
    best = sorted(scores, key=lambda chunk_id: scores[chunk_id], reverse=True)[:top_k]
    return [SearchResult(id=i, content=first[i].content, score=scores[i], source=first[i].source) for i in best]

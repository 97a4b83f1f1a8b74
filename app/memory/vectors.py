"""Nearest neighbours in memory for a backend without a vector index of its own (the embedded SQLite one).

Vectors are stored as float16 (half the bytes, ranking unchanged at retrieval's precision, as pgvector's
``halfvec``) and held per process as one float32 matrix. Up to ``EXACT_LIMIT`` vectors a query is one
matrix product. Above it, reading 150 MB per query (100,000 x 384) would be bound by memory bandwidth,
so a first pass ranks by the Hamming distance of the vectors' sign bits (48 bytes each at 384
dimensions) and the best ``OVERSAMPLING`` x candidates are ranked exactly; docs/retrieval.md has figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STORED_DTYPE = np.float16
EXACT_LIMIT = 20_000
OVERSAMPLING = 50
MIN_CANDIDATES = 1000


def to_blob(vector: Sequence[float]) -> bytes:
    """How one vector is stored."""
    return np.asarray(vector, dtype=STORED_DTYPE).tobytes()


def from_blob(blob: bytes) -> tuple[float, ...]:
    """A stored vector's values, for a copy into another store."""
    return tuple(np.frombuffer(blob, dtype=STORED_DTYPE).astype(np.float32).tolist())


class VectorIndex:
    """One store's vectors, searchable by cosine similarity (the vectors are unit length)."""

    def __init__(self, keys: Sequence[int], blobs: Sequence[bytes], dimension: int) -> None:
        self.keys = np.fromiter(keys, dtype=np.int64, count=len(keys))
        stored = np.frombuffer(b"".join(blobs), dtype=STORED_DTYPE).reshape(len(blobs), dimension)
        self.vectors = stored.astype(np.float32)
        # Sign bits, one row per 64-bit word, so the distance is a few vectorised passes over the rows.
        self.bits = np.ascontiguousarray(_sign_words(self.vectors).T) if len(keys) > EXACT_LIMIT else None

    def __len__(self) -> int:
        return len(self.keys)

    def nearest(self, query: Sequence[float], limit: int) -> list[tuple[int, float]]:
        """``(key, cosine)`` of the ``limit`` vectors nearest ``query``, best first."""
        if not len(self.keys) or limit <= 0:
            return []
        q = np.asarray(query, dtype=np.float32)
        if self.bits is None:
            rows = np.arange(len(self.keys))
            scores = self.vectors @ q
        else:
            rows = self._candidates(q, max(limit * OVERSAMPLING, MIN_CANDIDATES))
            scores = self.vectors[rows] @ q
        count = min(limit, len(rows))
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(self.keys[rows[i]]), float(scores[i])) for i in best]

    def _candidates(self, q: np.ndarray, count: int) -> np.ndarray:
        assert self.bits is not None
        words = _sign_words(q[np.newaxis, :])[0]
        distance = np.bitwise_count(self.bits[0] ^ words[0]).astype(np.uint16)
        for row, word in zip(self.bits[1:], words[1:], strict=True):
            distance += np.bitwise_count(row ^ word)
        count = min(count, len(distance))
        return np.argpartition(distance, count - 1)[:count]


def _sign_words(vectors: np.ndarray) -> np.ndarray:
    """Each row's sign bits packed into 64-bit words (padded with zero bits to a multiple of 64)."""
    packed = np.packbits(vectors > 0, axis=1)
    padding = -packed.shape[1] % 8
    if padding:
        packed = np.pad(packed, ((0, 0), (0, padding)))
    return packed.view(np.uint64)

"""How alike two answers are: cosine of embeddings when an embedder is configured, difflib's ratio otherwise."""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Sequence
from typing import Protocol


class Embedder(Protocol):
    """Turns texts into vectors; any embedding provider with this method can back `similar_to` and drift."""

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 when either vector is all zeros (nothing to compare)."""
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


def text_ratio(a: str, b: str) -> float:
    """difflib's ratio of the two texts, case-folded and with whitespace runs collapsed, so reflowing is no change."""
    return difflib.SequenceMatcher(None, " ".join(a.casefold().split()), " ".join(b.casefold().split())).ratio()


class Embeddings:
    """An embedder shared by concurrent cases, embedding each distinct text once per run."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def of(self, text: str) -> list[float]:
        with self._lock:
            cached = self._cache.get(text)
        if cached is None:
            cached = self._embedder.embed([text])[0]
            with self._lock:
                self._cache[text] = cached
        return cached

"""What every cache backend offers the response cache: the `CacheStore` interface and the types it stores.

A backend keeps opaque answers under a digest, within one (tenant, context) so `ctx cache stats|clear` can name
them, and for semantic lookups each answer's question vector within its scope (everything of the key but the
prompt and the question). Backends never import each other; `app.cache` picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

# At most this many answers of one scope, the most recently used, are compared with a question: a semantic lookup
# stays bounded on every backend (Redis keeps no more in a scope's index).
SEMANTIC_CANDIDATES = 1000
T = TypeVar("T")


class CacheUnavailable(Exception):
    """The backend cannot be read or written now (down, hung past its timeout, locked): the request goes on
    as a miss, and its answer is not stored."""


@dataclass(frozen=True)
class Entry:
    """One cached answer: where it belongs, its digest, its encoded answer, when it expires, its question's vector."""

    tenant: str
    context: str
    digest: str
    value: bytes
    ttl: float
    scope: str = ""  # the semantic scope's digest; "" when the answer is only reusable exactly
    vector: bytes = b""  # float32 unit vector of the question (`pack`)

    @property
    def size(self) -> int:
        """What the entry weighs against a store's bound: its answer and its vector."""
        return len(self.value) + len(self.vector)


@dataclass(frozen=True)
class CacheStats:
    """What `ctx cache stats` shows for one (tenant, context)."""

    tenant: str
    context: str
    entries: int
    bytes: int
    hits: int


class CacheStore(Protocol):
    """A place for cached answers, shared by the processes that open the same location; every method raises
    `CacheUnavailable` when the backend fails."""

    location: str  # for `ctx cache stats`: never a password

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        """The answer stored under `digest`, unless absent or expired (a hit refreshes its place in the LRU)."""
        ...

    def put(self, entry: Entry) -> None:
        """Store `entry` (replacing one of the same digest), evicting the least recently used past the bound; an entry
        bigger than the whole bound is not kept."""
        ...

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        """The unexpired answer of `scope` whose question is the most similar to `vector`, if at `threshold` or more,
        among the scope's `SEMANTIC_CANDIDATES` most recently used (a hit refreshes its place)."""
        ...

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        """Entries, bytes and hits per (tenant, context), optionally only one tenant's or context's."""
        ...

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        """Remove the answers of a tenant, a context, both or all; how many were removed."""
        ...

    def close(self) -> None: ...


def pack(vector: Sequence[float]) -> bytes:
    """A vector as a float32 unit vector's bytes, so a similarity is a dot product."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return (array / norm if norm else array).tobytes()


def best(candidates: Sequence[tuple[bytes, T]], vector: bytes, threshold: float) -> T | None:
    """Among (vector, what) pairs, the one whose vector is nearest `vector`, if its cosine reaches `threshold`."""
    query = np.frombuffer(vector, dtype=np.float32)
    found: T | None = None
    score = threshold
    for packed, value in candidates:
        other = np.frombuffer(packed, dtype=np.float32)
        if other.shape != query.shape:
            continue  # another embedding model's vector
        similarity = float(np.dot(query, other))
        if similarity >= score:
            found, score = value, similarity
    return found

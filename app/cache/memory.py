"""`CMP_CACHE_URL=memory://`: a per-worker LRU, for a single process or where no file may be shared.

Each semantic scope keeps its answers' digests in LRU order too, so a lookup compares at most
`SEMANTIC_CANDIDATES` of them, however many answers the worker holds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice

from app.cache.store import SEMANTIC_CANDIDATES, CacheStats, Entry, best


@dataclass
class _Held:
    entry: Entry
    expires: float
    hits: int = 0


class MemoryCache:
    """Answers in this process, at most `max_bytes` of them, least recently used evicted first."""

    location = "memory://"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._scopes: dict[tuple[str, str, str], OrderedDict[str, None]] = {}  # (tenant, context, scope) → digests
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        with self._lock:
            held = self._live(digest)
            if held is None or (held.entry.tenant, held.entry.context) != (tenant, context):
                return None
            return self._hit(digest, held)

    def _live(self, digest: str) -> _Held | None:
        held = self._held.get(digest)
        if held is not None and held.expires <= time.monotonic():
            self._drop(digest)
            return None
        return held

    def _hit(self, digest: str, held: _Held) -> bytes:
        held.hits += 1
        self._held.move_to_end(digest)
        if held.entry.scope:
            self._scopes[_scope(held.entry)].move_to_end(digest)
        return held.entry.value

    def _drop(self, digest: str) -> None:
        held = self._held.pop(digest)
        self._bytes -= held.entry.size
        if held.entry.scope:
            scope = self._scopes[_scope(held.entry)]
            del scope[digest]
            if not scope:
                del self._scopes[_scope(held.entry)]

    def put(self, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:  # it would evict every other answer, then itself
            return
        with self._lock:
            if entry.digest in self._held:
                self._drop(entry.digest)
            self._held[entry.digest] = _Held(entry, time.monotonic() + entry.ttl)
            if entry.scope:
                self._scopes.setdefault(_scope(entry), OrderedDict())[entry.digest] = None
            self._bytes += size
            while self._bytes > self.max_bytes and self._held:
                self._drop(next(iter(self._held)))

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        with self._lock:
            digests = list(islice(reversed(self._scopes.get((tenant, context, scope), {})), SEMANTIC_CANDIDATES))
            candidates = [(held.entry.vector, digest) for digest in digests if (held := self._live(digest))]
            found = best(candidates, vector, threshold)
            return None if found is None else self._hit(found, self._held[found])

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        totals: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            now = time.monotonic()
            for held in self._held.values():
                owner = (held.entry.tenant, held.entry.context)
                if held.expires > now and tenant in (None, owner[0]) and context in (None, owner[1]):
                    total = totals.setdefault(owner, [0, 0, 0])
                    total[0] += 1
                    total[1] += held.entry.size
                    total[2] += held.hits
        return [CacheStats(t, c, *counts) for (t, c), counts in sorted(totals.items())]

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        with self._lock:
            gone = [
                digest
                for digest, held in self._held.items()
                if tenant in (None, held.entry.tenant) and context in (None, held.entry.context)
            ]
            for digest in gone:
                self._drop(digest)
        return len(gone)

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            self._scopes.clear()
            self._bytes = 0


def _scope(entry: Entry) -> tuple[str, str, str]:
    return entry.tenant, entry.context, entry.scope

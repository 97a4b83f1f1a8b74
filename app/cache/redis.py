"""`CMP_CACHE_URL=redis://...`: answers shared by every worker and replica, bounded by Redis's own maxmemory.

Calls are bounded by 0.5 s timeouts (the URL's own `socket_timeout`/`socket_connect_timeout` win) and fail
open: a Redis that is down or hung raises `CacheUnavailable` (the request is a miss, counted), and is not asked
again for `RETRY_SECONDS`, so an outage costs one timeout per worker every few seconds rather than per request.

Keys: `cmp:cache:a:<tenant>:<context>:<digest>` (a hash: the answer and its hits, expiring with its TTL) and,
for semantic lookups, `cmp:cache:s:<tenant>:<context>:<scope>` (a hash: digest → question vector). Tenant and
context names hold no `:` (`app.names`), so a key says whose it is. Set `maxmemory-policy allkeys-lru` on the
Redis to bound it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

from app.cache.store import SEMANTIC_CANDIDATES, CacheStats, CacheUnavailable, Entry, best
from app.config import REDIS_TIMEOUTS

RETRY_SECONDS = 5.0
PREFIX = "cmp:cache:"
T = TypeVar("T")


class RedisCache:
    """Answers in the Redis at `url`."""

    location = "redis"

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, **REDIS_TIMEOUTS)  # the URL's own options win
        self._down_until = 0.0

    def _call(self, work: Callable[[redis.Redis], T]) -> T:
        if self._down_until > time.monotonic():
            raise CacheUnavailable("redis was unreachable moments ago")
        try:
            return work(self.client)
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + RETRY_SECONDS
            raise CacheUnavailable(type(exc).__name__) from None

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        key = f"{PREFIX}a:{tenant}:{context}:{digest}"

        def read(client: redis.Redis) -> Any:
            value = client.hget(key, "value")
            if value is not None:
                client.hincrby(key, "hits", 1)
            return value

        return self._call(read)

    def put(self, entry: Entry) -> None:
        key = f"{PREFIX}a:{entry.tenant}:{entry.context}:{entry.digest}"
        ttl = max(1, int(entry.ttl))

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.delete(key)
            pipe.hset(key, mapping={"value": entry.value, "hits": 0})
            pipe.expire(key, ttl)
            if entry.scope:
                scope = f"{PREFIX}s:{entry.tenant}:{entry.context}:{entry.scope}"
                pipe.hset(scope, mapping={entry.digest: entry.vector})
                pipe.expire(scope, ttl)
            pipe.execute()

        self._call(write)

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        scope_key = f"{PREFIX}s:{tenant}:{context}:{scope}"

        def search(client: redis.Redis) -> bytes | None:
            candidates: list[tuple[bytes, str]] = []
            for digest, packed in client.hscan_iter(scope_key, count=SEMANTIC_CANDIDATES):
                candidates.append((packed, digest.decode()))
                if len(candidates) >= SEMANTIC_CANDIDATES:
                    break
            found = best(candidates, vector, threshold)
            if found is None:
                return None
            value = self.get(tenant, context, found)
            if value is None:  # expired since: forget its vector
                client.hdel(scope_key, found)
            return value

        return self._call(search)

    def _keys(self, tenant: str | None, context: str | None) -> list[tuple[str, str, str]]:
        pattern = f"{PREFIX}a:{'*' if tenant is None else tenant}:{'*' if context is None else context}:*"

        def scan(client: redis.Redis) -> list[tuple[str, str, str]]:
            found = []
            for raw in client.scan_iter(match=pattern, count=1000):
                key = raw.decode()
                _, _, _, owner, name, _ = key.split(":")
                if tenant in (None, owner) and context in (None, name):
                    found.append((key, owner, name))
            return found

        return self._call(scan)

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        keys = self._keys(tenant, context)

        def read(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for key, _, _ in keys:
                pipe.hstrlen(key, "value")
                pipe.hget(key, "hits")
            return pipe.execute()

        values = self._call(read) if keys else []
        totals: dict[tuple[str, str], list[int]] = {}
        for index, (_, owner, name) in enumerate(keys):
            size, hits = values[2 * index], values[2 * index + 1]
            if size:
                total = totals.setdefault((owner, name), [0, 0, 0])
                total[0] += 1
                total[1] += int(size)
                total[2] += int(hits or 0)
        return [CacheStats(t, c, *counts) for (t, c), counts in sorted(totals.items())]

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        keys = [key for key, _, _ in self._keys(tenant, context)]
        scopes = f"{PREFIX}s:{'*' if tenant is None else tenant}:{'*' if context is None else context}:*"

        def remove(client: redis.Redis) -> int:
            removed = cast(int, client.delete(*keys)) if keys else 0
            for key in client.scan_iter(match=scopes, count=1000):
                _, _, _, owner, name, _ = key.decode().split(":")
                if tenant in (None, owner) and context in (None, name):
                    client.delete(key)
            return removed

        return self._call(remove)

    def close(self) -> None:
        self.client.close()

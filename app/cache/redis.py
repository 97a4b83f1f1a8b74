"""`CMP_CACHE_URL=redis://...`: answers shared by every worker and replica, every key expiring with its answer.

Calls are bounded by 0.5 s timeouts (the URL's own `socket_timeout`/`socket_connect_timeout` win) and fail
open: a Redis that is down or hung raises `CacheUnavailable` (the request is a miss, counted), and is not asked
again for `RETRY_SECONDS`, so an outage costs one timeout per worker every few seconds rather than per request. A
Redis that answers but refuses a command (out of memory under `noeviction`) fails that call only.

Keys, every one with a TTL so the cache never outlives its answers:
- `cmp:cache:a:<tenant>:<context>:<digest>`: a hash, the answer (`value`), its `hits`, and for a semantic
  answer its question's `vector` and `index` (its scope's key); it expires with the answer's TTL.
- `cmp:cache:i:<tenant>:<context>:<scope>`: the scope's semantic index, a sorted set of digests by last use,
  trimmed to `SEMANTIC_CANDIDATES` (the least recently used out) whenever an answer joins it, and expiring with
  its newest answer. A member whose answer has expired, been evicted or cleared is dropped by the next lookup that
  meets it, so a lookup reads at most `SEMANTIC_CANDIDATES` vectors.

Tenant and context names hold no `:` (`app.names`), so a key says whose it is. Bound the Redis with `maxmemory`
and an eviction policy (`allkeys-lru`, or `volatile-lru`: every key has a TTL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar, cast

import redis

from app.cache.store import SEMANTIC_CANDIDATES, CacheStats, CacheUnavailable, Entry, best
from app.config import REDIS_TIMEOUTS

RETRY_SECONDS = 5.0
PREFIX = "cmp:cache:"
BATCH = 1000  # keys per command when stats or clear walk the cache: no call holds Redis (or its timeout) long
T = TypeVar("T")

# A hit, atomically: the answer if it is there, its hit counted and its place in its scope's index refreshed (XX:
# a member trimmed out stays out). Never creating a key, so a hit racing its expiry or a clear leaves no key
# without a TTL; the counters go through pcall, so a Redis out of memory still serves what it holds (uncounted).
# KEYS[1] the answer, KEYS[2] its index or ""; ARGV[1] now, ARGV[2] the digest.
_HIT = """
local found = redis.call('HMGET', KEYS[1], 'value', 'index')
if not found[1] then
  if KEYS[2] ~= '' then redis.call('ZREM', KEYS[2], ARGV[2]) end
  return false
end
redis.pcall('HINCRBY', KEYS[1], 'hits', 1)
if found[2] then redis.pcall('ZADD', found[2], 'XX', ARGV[1], ARGV[2]) end
return found[1]
"""

# A scope's candidates, atomically: the vectors of its `ARGV[2]` most recently used members, and the members whose
# answer is gone removed. KEYS[1] the index; ARGV[1] the answers' key prefix; returns digest, vector, digest, ...
_CANDIDATES = """
local members = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local found = {}
for _, digest in ipairs(members) do
  local vector = redis.call('HGET', ARGV[1] .. digest, 'vector')
  if vector then
    found[#found + 1] = digest
    found[#found + 1] = vector
  else
    redis.call('ZREM', KEYS[1], digest)
  end
end
return found
"""


class RedisCache:
    """Answers in the Redis at `url`."""

    location = "redis"

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, **REDIS_TIMEOUTS)  # the URL's own options win
        self._hit = self.client.register_script(_HIT)
        self._candidates = self.client.register_script(_CANDIDATES)
        self._down_until = 0.0

    def _call(self, work: Callable[[redis.Redis], T]) -> T:
        if self._down_until > time.monotonic():
            raise CacheUnavailable("redis was unreachable moments ago")
        try:
            return work(self.client)
        except redis.ResponseError as exc:  # Redis is there but refused this command: only this call fails
            # The class says what (OutOfMemoryError, ReadOnlyError), never the message: it quotes the command.
            raise CacheUnavailable(f"redis refused: {type(exc).__name__}") from None
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + RETRY_SECONDS
            raise CacheUnavailable(type(exc).__name__) from None

    def get(self, tenant: str, context: str, digest: str) -> bytes | None:
        key = _answer(tenant, context, digest)
        return self._call(lambda client: self._hit(keys=[key, ""], args=[time.time(), digest], client=client))

    def put(self, entry: Entry) -> None:
        key = _answer(entry.tenant, entry.context, entry.digest)
        ttl = max(1, int(entry.ttl))

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=True)  # MULTI: an answer is never written without its TTL
            pipe.delete(key)
            mapping: dict[str, Any] = {"value": entry.value, "hits": 0}
            if entry.scope:
                index = _index(entry.tenant, entry.context, entry.scope)
                mapping.update(vector=entry.vector, index=index)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, ttl)
            if entry.scope:
                pipe.zadd(index, {entry.digest: time.time()})
                pipe.zremrangebyrank(index, 0, -SEMANTIC_CANDIDATES - 1)
                pipe.expire(index, ttl)  # one TTL per scope (it is in the context's version): the newest's
            pipe.execute()

        self._call(write)

    def nearest(self, tenant: str, context: str, scope: str, vector: bytes, threshold: float) -> bytes | None:
        index = _index(tenant, context, scope)

        def search(client: redis.Redis) -> bytes | None:
            prefix = _answer(tenant, context, "")
            found = self._candidates(keys=[index], args=[prefix, SEMANTIC_CANDIDATES], client=client)
            pairs = [(found[i + 1], found[i].decode()) for i in range(0, len(found), 2)]
            nearest = best(pairs, vector, threshold)
            if nearest is None:
                return None
            key = _answer(tenant, context, nearest)
            return self._hit(keys=[key, index], args=[time.time(), nearest], client=client)

        return self._call(search)

    def _owned(self, client: redis.Redis, kind: str, tenant: str | None, context: str | None) -> Iterator[list[str]]:
        """The keys of one kind (`a` answers, `i` indexes) of a tenant, a context, both or all, a batch at a time."""
        pattern = f"{PREFIX}{kind}:{'*' if tenant is None else tenant}:{'*' if context is None else context}:*"
        keys = (raw.decode() for raw in client.scan_iter(match=pattern, count=BATCH))
        for batch in _batches(keys, BATCH):
            yield [key for key in batch if _owner(key, tenant, context)]

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        def read(client: redis.Redis) -> list[CacheStats]:
            totals: dict[tuple[str, str], list[int]] = {}
            for keys in self._owned(client, "a", tenant, context):
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.hstrlen(key, "value")
                    pipe.hstrlen(key, "vector")
                    pipe.hget(key, "hits")
                values = pipe.execute()
                for index, key in enumerate(keys):
                    size, vector, hits = values[3 * index : 3 * index + 3]
                    if size:  # not expired since the scan
                        _, _, _, owner, name, _ = key.split(":")
                        total = totals.setdefault((owner, name), [0, 0, 0])
                        total[0] += 1
                        total[1] += int(size) + int(vector)
                        total[2] += int(hits or 0)
            return [CacheStats(t, c, *counts) for (t, c), counts in sorted(totals.items())]

        return self._call(read)

    def clear(self, tenant: str | None = None, context: str | None = None) -> int:
        def remove(client: redis.Redis) -> int:
            removed = 0
            for keys in self._owned(client, "a", tenant, context):
                removed += cast(int, client.unlink(*keys)) if keys else 0  # UNLINK: freed off Redis's main thread
            for keys in self._owned(client, "i", tenant, context):
                if keys:
                    client.unlink(*keys)
            return removed

        return self._call(remove)

    def close(self) -> None:
        self.client.close()


def _answer(tenant: str, context: str, digest: str) -> str:
    return f"{PREFIX}a:{tenant}:{context}:{digest}"


def _index(tenant: str, context: str, scope: str) -> str:
    return f"{PREFIX}i:{tenant}:{context}:{scope}"


def _owner(key: str, tenant: str | None, context: str | None) -> bool:
    """Whether `key` is of `tenant` and `context` (None: any): the glob matched, and nothing else did."""
    parts = key.split(":")
    return len(parts) == 6 and tenant in (None, parts[3]) and context in (None, parts[4])


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch

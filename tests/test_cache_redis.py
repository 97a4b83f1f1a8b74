"""The Redis backend of the response cache on Debian's real redis-server: every key expires, the semantic index is
bounded (expired, evicted and cleared answers leave it; a busy scope keeps its most recently used), a full Redis
still serves, `ctx cache stats|clear` work, and a Redis hung (SIGSTOP) or killed at the lookup or at the put is a
counted miss within its 0.5 s timeouts, on both APIs, whole and streamed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from fake_hf import Reply, Stream, chat_events, completion
from helpers import Redis, metric, run, sse_events
from helpers_cache import CONTEXT, USAGE, ask, openai

from app.cache.redis import RedisCache
from app.cache.store import SEMANTIC_CANDIDATES, CacheUnavailable, Entry, pack

INDEX = f"cmp:cache:i:acme:{CONTEXT}:scope"
NEAR = pack([1.0, 0.0, 0.0])


def semantic(digest: str, vector: bytes = NEAR, ttl: float = 60) -> Entry:
    return Entry("acme", CONTEXT, digest, f"answer {digest}".encode(), ttl, "scope", vector)


def members(redis_server: Redis) -> list[str]:
    return [raw.decode() for raw in redis_server.client().zrange(INDEX, 0, -1)]


def test_answers_that_expired_were_evicted_or_cleared_leave_the_semantic_index(redis_server):
    cache = RedisCache(redis_server.url)
    cache.put(semantic("expiring", ttl=1))
    for digest in ("kept", "evicted"):  # the index expires with the newest answer of its scope (one TTL per scope)
        cache.put(semantic(digest))
    assert sorted(members(redis_server)) == ["evicted", "expiring", "kept"]
    redis_server.client().delete(f"cmp:cache:a:acme:{CONTEXT}:evicted")  # as maxmemory's eviction does
    time.sleep(1.1)
    assert cache.nearest("acme", CONTEXT, "scope", NEAR, 0.99) == b"answer kept"
    assert members(redis_server) == ["kept"]  # the lookup that met the others dropped them
    assert cache.clear("acme") == 1
    assert redis_server.client().keys("cmp:cache:*") == []


def test_a_busy_scope_keeps_its_most_recently_used_answers_only(redis_server):
    cache = RedisCache(redis_server.url)
    far = pack([0.0, 1.0, 0.0])
    cache.put(semantic("first", far))  # the only answer near `far`
    cache.put(semantic("second", far))
    for n in range(SEMANTIC_CANDIDATES - 1):
        cache.put(semantic(f"n{n}"))
    assert cache.get("acme", CONTEXT, "second") == b"answer second"  # a hit: now the most recently used
    cache.put(semantic("last"))  # one over the cap: the least recently used leaves the index
    index = members(redis_server)
    assert len(index) == SEMANTIC_CANDIDATES
    assert "first" not in index and {"second", "last"} <= set(index)
    assert cache.nearest("acme", CONTEXT, "scope", far, 0.99) == b"answer second"
    assert cache.get("acme", CONTEXT, "first") == b"answer first"  # still an exact hit until its TTL


def test_every_key_expires_even_when_a_hit_races_the_answers_expiry(redis_server):
    # A hit that counted itself on an answer gone since it was read (expired, evicted, cleared) would write a
    # key without a TTL: Redis's memory would grow for ever. An answer expiring within a millisecond of each hit
    # makes that race happen many times over.
    cache = RedisCache(redis_server.url)
    client = redis_server.client()
    for n in range(500):
        for entry in (Entry("acme", CONTEXT, f"a{n}", b"exact", 60), semantic(f"s{n}")):
            cache.put(entry)
            client.pexpire(f"cmp:cache:a:acme:{CONTEXT}:{entry.digest}", 1)
            while cache.get("acme", CONTEXT, entry.digest) is not None:
                pass
        cache.nearest("acme", CONTEXT, "scope", NEAR, 0.5)
    keys = client.keys("cmp:cache:*")
    assert {key: client.ttl(key) for key in keys if client.ttl(key) < 0} == {}


def test_a_full_redis_serves_what_it_holds_and_refuses_only_what_it_cannot_store(tmp_path):
    full = Redis(str(tmp_path), "--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    try:
        cache = RedisCache(full.url)
        cache.put(semantic("kept"))
        with pytest.raises(CacheUnavailable, match="OutOfMemoryError"):
            for n in itertools.count():
                cache.put(Entry("acme", CONTEXT, f"big{n}", b"x" * 50_000, 60))
        # Redis answers: a refused put is no outage, lookups go on at once (their hits uncounted while it is full).
        assert cache.get("acme", CONTEXT, "kept") == b"answer kept"
        assert cache.nearest("acme", CONTEXT, "scope", NEAR, 0.99) == b"answer kept"
    finally:
        full.stop()


def test_ctx_cache_stats_and_clear_on_redis(cached, project, redis_server):
    _, app = cached(cache_url=redis_server.url)
    client = app.test_client()
    for tenant in ("acme", "acme", "globex"):
        ask(client, tenant_id=tenant)
    env = {"CMP_CACHE_URL": redis_server.url}
    stats = run("cache", "stats", "--root", str(project), env=env)
    assert stats.returncode == 0, stats.stderr
    rows = [line.split() for line in stats.stdout.splitlines()[1:-1]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("acme", CONTEXT, "1", "1"), ("globex", CONTEXT, "1", "0")]
    assert stats.stdout.splitlines()[-1] == "2 answers in redis"
    cleared = run("cache", "clear", "--root", str(project), "--tenant", "acme", env=env)
    assert (cleared.returncode, cleared.stdout) == (0, "removed 1 cached answers from redis\n")
    assert ask(client, tenant_id="acme").headers["X-Contexis-Cache"] == "miss"
    assert ask(client, tenant_id="globex").headers["X-Contexis-Cache"] == "hit"


def test_clear_removes_more_answers_than_one_batch(redis_server):
    cache = RedisCache(redis_server.url)
    pipe = redis_server.client().pipeline(transaction=False)
    for n in range(2500):
        pipe.hset(f"cmp:cache:a:acme:{CONTEXT}:d{n}", mapping={"value": b"v", "hits": 0})
        pipe.expire(f"cmp:cache:a:acme:{CONTEXT}:d{n}", 60)
    pipe.execute()
    assert sum(s.entries for s in cache.stats()) == 2500
    assert cache.clear(context=CONTEXT) == 2500
    assert redis_server.client().keys("cmp:cache:*") == []


def answers(stream: bool, before: list[Callable[[], None]]) -> Reply | Stream:
    """A model whose every answer is new; it first runs what `before` holds (Redis failing while it answers)."""
    counter = itertools.count(1)

    def text() -> str:
        while before:
            before.pop()()
        return f"answer {next(counter)}"

    if stream:
        return Stream(lambda request: chat_events([text()], USAGE))
    return Reply(body=lambda request: completion(text(), USAGE))


def send(client: Any, api: str, stream: bool, question: str) -> tuple[int, str, str]:
    """(status, X-Contexis-Cache, the answer's text) of `question` through `api`, whole or streamed."""
    if api == "native":
        answer = ask(client, data={"user_input": question}, stream=stream)
        if not stream:
            return answer.status_code, answer.headers["X-Contexis-Cache"], answer.json["rendered"]
        text = "".join(data.get("delta", "") for _, data in sse_events(answer))
    else:
        answer = openai(client, question, stream=stream)
        if not stream:
            content = answer.json["choices"][0]["message"]["content"]
            return answer.status_code, answer.headers["X-Contexis-Cache"], content
        events = sse_events(answer.get_data(as_text=True).replace("data: [DONE]\n\n", ""))
        text = "".join(e["choices"][0]["delta"].get("content", "") for _, e in events if e["choices"])
    return answer.status_code, answer.headers["X-Contexis-Cache"], text


@pytest.mark.parametrize("outage", ["hung", "killed"])
@pytest.mark.parametrize(("api", "stream"), [("native", False), ("native", True), ("openai", False), ("openai", True)])
def test_redis_failing_at_the_put_or_the_lookup_is_a_counted_miss_within_its_timeouts(
    cached, redis_server, outage, api, stream
):
    fail = redis_server.pause if outage == "hung" else redis_server.stop
    before: list[Callable[[], None]] = []
    _, app = cached(answers(stream, before), cache_url=redis_server.url)
    client = app.test_client()
    assert [send(client, api, stream, "hello")[1:] for _ in range(2)] == [("miss", "answer 1"), ("hit", "answer 1")]
    # At the put: Redis fails while the model answers, after a lookup that worked.
    before.append(fail)
    started = time.monotonic()
    assert send(client, api, stream, "where is my parcel") == (200, "miss", "answer 2")
    assert time.monotonic() - started < 2.5  # one 0.5 s timeout at most, not a hang
    assert metric(app, "cmp_cache_storage_errors_total") == 1
    # At the lookup: another worker (its own connections) finds Redis failing; it answers, and asks Redis no more.
    _, other = cached(answers(stream, []), cache_url=redis_server.url)
    started = time.monotonic()
    results = [send(other.test_client(), api, stream, question) for question in ("hello", "hello", "hi")]
    assert time.monotonic() - started < 2.5
    assert results == [(200, "miss", "answer 1"), (200, "miss", "answer 2"), (200, "miss", "answer 3")]
    assert metric(other, "cmp_cache_storage_errors_total") == 3  # one failed, then skipped while it is down
    assert metric(other, "cmp_cache_requests_total", context=CONTEXT, result="miss") == 3

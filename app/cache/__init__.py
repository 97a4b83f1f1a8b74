"""The response cache: an answer paid for once is served again to the same question, per tenant and context version.

A context opts in (`cache: {ttl, semantic, max_temperature}`, [cache.md](../../docs/cache.md)). The runtime asks
`ResponseCache.lookup` once memory is searched, before the prompt is rendered (the key holds what renders the prompt
— its templates' version and the variables they read, or its text when only that tells — and memory's results, so
a template, memory or context change is a miss by construction) and before the model chain; `keep` (or a stream
`recording`) stores what the model answered when it may be reused. A context without `cache:` costs one dict read.

Where answers live is `CMP_CACHE_URL`: SQLite under the state directory by default (`sqlite.py`), `redis://` for
every replica (`redis.py`), `memory://` per worker (`memory.py`); they share the interface of `store.py` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
from opentelemetry import trace

from app.cache.store import CacheStats, CacheStore, CacheUnavailable, Entry, pack
from app.config import Settings
from app.errors import ProviderError
from app.memory import Embedder, SearchResult
from app.observability import RuntimeMetrics
from app.providers.base import (
    ChoiceDelta,
    Finish,
    GenerationParams,
    ServedBy,
    StreamPiece,
    TokenStream,
    ToolCallDelta,
    Turn,
    Usage,
)
from app.usage import record_cache_hit
from app.validation import ChatRequest

log = logging.getLogger(__name__)

HIT, MISS, SEMANTIC_HIT, BYPASS = "hit", "miss", "semantic-hit", "bypass"
DEFAULT_MAX_TEMPERATURE = 0.5
OFF = "off"  # CMP_CACHE_URL=off: no store, every caching context's requests are bypasses
KEY_VERSION = "4"  # bumped when what a key holds changes, so old answers are never read as new ones

# Every field of the sampling and OpenAI parameters is in the key, read shallowly (asdict's deep copy costs a hit
# more than its render).
# `deadline_at` is when one call must end, not what it asks.
_params_of = operator.attrgetter(*(field.name for field in fields(GenerationParams) if field.name != "deadline_at"))
_NONE: frozenset[str] = frozenset()
_DECODED, _DECODED_BYTES = 256, 16 * 1024  # answers kept decoded, each at most this long as stored


def open_store(settings: Settings) -> CacheStore:
    """The backend `CMP_CACHE_URL` names: SQLite under the state directory when unset (never called for `off`)."""
    url = settings.cache_url
    if url == OFF:
        raise CacheUnavailable("the response cache is off (CMP_CACHE_URL=off)")
    if url == "memory://":
        from app.cache.memory import MemoryCache

        return MemoryCache(settings.cache_max_bytes)
    if url:
        from app.cache.redis import RedisCache

        return RedisCache(url)
    from app.cache.sqlite import SqliteCache

    return SqliteCache(settings.state_path / "cache.sqlite3", settings.cache_max_bytes)


@dataclass(frozen=True)
class CachePolicy:
    """A context's `cache:` section."""

    ttl: float
    semantic: float | None  # the cosine at or above which a similar single-turn question's answer is reused
    max_temperature: float
    side_effects: bool  # the context has tools that change something (http tools other than GET)

    @classmethod
    def of(cls, context: dict[str, Any]) -> CachePolicy | None:
        """The context's policy; None when it does not cache (no section, or `ttl` 0)."""
        section = context.get("cache")
        if not section or not section.get("ttl"):
            return None
        tools = context.get("tools") or []
        side_effects = any(
            isinstance(tool, dict)
            and isinstance(tool.get("http"), dict)
            and str(tool["http"].get("method", "GET")).upper() != "GET"
            for tool in tools
        )
        return cls(
            section["ttl"],
            section.get("semantic"),
            section.get("max_temperature", DEFAULT_MAX_TEMPERATURE),
            side_effects,
        )


@dataclass(frozen=True)
class CachedAnswer:
    """What a hit answers with: the model's text, who served it, why it ended, what it cites, what it cost."""

    text: str
    model: str | None
    served: str | None
    finish_reason: str
    sources: list[dict[str, Any]]
    completion_tokens: int  # what a hit saves (with the prompt's)
    prompt_tokens: int

    def encode(self) -> bytes:
        return _canonical(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """The answer `raw` holds; None when it cannot be read (damaged, or written by a version whose answers had
        other fields, as a rolling deploy sharing one Redis meets them)."""
        try:
            try:
                return cls(**orjson.loads(raw))
            except orjson.JSONDecodeError:  # an answer holding a lone surrogate, written by the standard library
                return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def stream(self) -> TokenStream:
        """The answer replayed as a stream: its text in one delta, usage zero (nothing was generated)."""
        pieces: list[StreamPiece | Usage | Finish] = [self.text, Usage(0, 0), Finish(self.finish_reason)]
        return TokenStream(iter(pieces), model=self.model)


@dataclass
class Lookup:
    """One request's way through the cache: what it found (`result`), and where its answer would be kept."""

    result: str
    found: CachedAnswer | None = None
    tenant: str = ""
    context: str = ""
    digest: str = ""
    scope: str = ""
    vector: bytes = b""
    ttl: float = 0.0
    stale: bool = False  # the prompt changed while it was rendered: the answer is given, not kept under this key

    @property
    def storable(self) -> bool:
        return self.result == MISS and not self.stale


class ResponseCache:
    """The cache of one runtime; its store is opened on first use, so a project that caches nothing opens none."""

    def __init__(
        self, settings: Settings, metrics: RuntimeMetrics, embedder: Embedder | None, lock_hash: str = ""
    ) -> None:
        self.settings = settings
        self.lock_hash = lock_hash  # the project's `ctx lock` hash, when it has one (every source it serves)
        self.metrics = metrics
        self.embedder = embedder
        self._store: CacheStore | None = None
        self._versions: dict[int, _Version] = {}
        self._answers: dict[bytes, CachedAnswer] = {}  # answers decoded lately, by what the store holds

    @property
    def store(self) -> CacheStore:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def caches(self, context: dict[str, Any]) -> bool:
        """Whether requests to `context` may be answered from the cache (its file has `cache.ttl`)."""
        return self._version(context).policy is not None

    def similar(self, context: dict[str, Any], request: ChatRequest) -> bool:
        """Whether `request` may get the answer of a similar question: `cache.semantic`, an embedder, a single turn."""
        policy = self._version(context).policy
        return bool(policy and policy.semantic and self.embedder and _question(request))

    def lookup(
        self,
        request: ChatRequest,
        context: dict[str, Any],
        prompt: str,
        results: Sequence[SearchResult],
        params: GenerationParams,
        model: str,
        guardrails: str = "",
        shown: Mapping[str, Any] | None = None,
    ) -> Lookup | None:
        """The cached answer for this request if there is one; None when its context does not cache.

        `prompt` is the text the model would get or, with `shown`, what renders it: its templates' version, `shown`
        the values of the variables they read that the key does not hold by itself (the request's messages, the
        memory matches, the tenant and the context are in it anyway). `guardrails` names the policy the answer is
        checked under: it defaults to the environment's, so an answer kept before the operator changed it
        (redaction turned on) must not be served after."""
        held = self._version(context)
        policy = held.policy
        if policy is None:
            return None
        name = context["name"]
        directives = _directives(request.cache_control) if request.cache_control else _NONE
        reusable = not (
            "no-store" in directives
            or policy.side_effects
            or params.temperature > policy.max_temperature
            or params.n != 1  # one answer per entry: n answers and logprobs cannot be replayed
            or params.logprobs
        )
        if not reusable or self.settings.cache_url == OFF:
            return self._counted(Lookup(BYPASS), name)
        # The context's version: the lock's hash when the project has one, and always the resolved context's
        # digest (a context edited without `ctx lock` is still a miss).
        parts = [KEY_VERSION, request.tenant_id, name, self.lock_hash, held.digest, request.component]
        # The chat system message is the context's (in its version); the prompt and history are the request's.
        parts += [request.prompt_file, _canonical(_params_of(params)), model, guardrails]
        question = _question(request)
        # A template's version is in the scope too: an edited template is a miss for similar questions as well.
        semantic = [*parts, prompt] if shown is not None else parts
        scope = _digest([*semantic, "semantic"]) if policy.semantic and self.embedder and question else ""
        found_in = [(r.id, r.source, r.content, r.score) for r in results]  # all a template may show of them
        exact = [*parts, prompt, _canonical((found_in, request.messages, request.after, shown))]
        lookup = Lookup(MISS, None, request.tenant_id, name, _digest(exact), scope, b"", policy.ttl)
        if "no-cache" in directives:  # refresh: answer anew, and keep that answer
            return self._counted(self._vector(lookup, question), name)
        try:
            raw = self.store.get(lookup.tenant, name, lookup.digest)
            if raw is None and scope:
                lookup = self._vector(lookup, question)
                if lookup.vector and policy.semantic is not None:
                    raw = self.store.nearest(lookup.tenant, name, scope, lookup.vector, float(policy.semantic))
                    lookup.result = SEMANTIC_HIT if raw is not None else MISS
            elif raw is not None:
                lookup.result = HIT
        except CacheUnavailable as exc:
            self._unavailable(exc)
            return self._counted(Lookup(MISS), name)  # not stored either: the store is down
        found = lookup.found = None if raw is None else self._decoded(raw)
        if raw is not None and found is None:  # answered anew, and the new answer replaces it
            self._unavailable(CacheUnavailable("a cached answer could not be read"))
            lookup.result = MISS
        if found is not None:
            tokens = found.prompt_tokens + found.completion_tokens
            self.metrics.child(self.metrics.cache_saved_tokens, name).inc(tokens)
            model = found.model or ""
            usd = record_cache_hit(model, found.served, found.prompt_tokens, found.completion_tokens, request.stream)
            if usd:
                self.metrics.child(self.metrics.cache_saved_usd, name).inc(usd)
        return self._counted(lookup, name)

    def keep(
        self,
        lookup: Lookup,
        text: str,
        model: str | None,
        served: str | None,
        finish_reason: str,
        sources: list[dict[str, Any]],
        usage: Usage | None,
        tool_calls: Sequence[Turn] = (),
    ) -> None:
        """Store a model's answer for the next identical (or similar) request, unless it must not be reused."""
        if not lookup.storable or not lookup.digest or tool_calls or finish_reason == "tool_calls":
            return
        usage = usage or Usage()
        answer = CachedAnswer(
            text, model, served, finish_reason, sources, usage.completion_tokens or 0, usage.prompt_tokens or 0
        )
        entry = Entry(
            lookup.tenant, lookup.context, lookup.digest, answer.encode(), lookup.ttl, lookup.scope, lookup.vector
        )
        try:
            self.store.put(entry)
        except CacheUnavailable as exc:
            self._unavailable(exc)

    def recording(
        self, lookup: Lookup, stream: TokenStream, sources: list[dict[str, Any]], served: str | None
    ) -> TokenStream:
        """`stream` as it is, kept once it has ended whole and with text only (no tool calls, no other choices)."""

        def pieces() -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
            texts: list[str] = []
            plain = True
            try:
                for piece in stream:
                    if isinstance(piece, str):
                        texts.append(piece)
                    elif isinstance(piece, ToolCallDelta | ChoiceDelta):
                        plain = False
                    yield piece
            finally:
                stream.close()
            if stream.usage:
                yield stream.usage
            if stream.response_model:
                yield ServedBy(stream.response_model)
            finish = stream.finish_reason or "stop"
            yield Finish(finish)
            if plain:
                self.keep(lookup, "".join(texts), stream.model, served, finish, sources, stream.usage)

        return TokenStream(pieces(), model=stream.model)

    def _vector(self, lookup: Lookup, question: str) -> Lookup:
        """The lookup with its question's vector for a semantic scope; without one (the embedder failed), exact only."""
        if not lookup.scope or self.embedder is None:
            return lookup
        try:
            lookup.vector = pack(self.embedder.embed_query(question))
        except ProviderError:  # counted by the embedder's telemetry; the question is matched exactly
            lookup.scope = ""
        return lookup

    def _version(self, context: dict[str, Any]) -> _Version:
        """The context's policy and, when it caches, the digest of the resolved context (with everything it extends
        or includes): once per loaded context."""
        held = self._versions.get(id(context))
        if held is not None and held.context is context:
            return held
        policy = CachePolicy.of(context)
        # The standard library's JSON, once per loaded context: it writes .inf and .nan, which orjson writes as null.
        held = _Version(context, policy, _digest([json.dumps(context, default=str)]) if policy else "")
        if len(self._versions) > 1024:
            self._versions.clear()
        self._versions[id(context)] = held
        return held

    def _decoded(self, raw: bytes) -> CachedAnswer | None:
        """The answer `raw` holds, decoded once while it is asked for (a hot answer is the same bytes each hit).
        The same answer, `sources` included, goes to every request that meets it: nothing may change it."""
        small = len(raw) <= _DECODED_BYTES
        found = self._answers.get(raw) if small else None
        if found is None:
            found = CachedAnswer.decode(raw)
            if found is not None and small:
                if len(self._answers) >= _DECODED:
                    self._answers.clear()
                self._answers[raw] = found
        return found

    def _counted(self, lookup: Lookup, context: str) -> Lookup:
        self.metrics.child(self.metrics.cache_requests, context, lookup.result).inc()
        trace.get_current_span().set_attribute("contexis.cache", lookup.result)
        return lookup

    def _unavailable(self, exc: CacheUnavailable) -> None:
        self.metrics.cache_storage_errors.inc()
        log.warning("Response cache unavailable (%s): answering without it", exc)

    def stats(self, tenant: str | None = None, context: str | None = None) -> list[CacheStats]:
        return self.store.stats(tenant, context)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@dataclass(frozen=True)
class _Version:
    """What the cache knows of one loaded context: its policy, and the digest of what it resolved to."""

    context: dict[str, Any]  # held, so its id is not another's while it is known
    policy: CachePolicy | None
    digest: str


def _question(request: ChatRequest) -> str:
    """What a semantic lookup compares: the question of a single-turn request ("" for a conversation)."""
    if request.messages or request.after:
        return ""
    return request.query or str(request.data.get("user_input", ""))


def _directives(cache_control: str) -> frozenset[str]:
    """The request's `Cache-Control` directives (no-store, no-cache), lowercase."""
    return frozenset(part.strip().lower() for part in cache_control.split(","))


def _canonical(value: Any) -> str:
    """`value` as one JSON text, its keys in their order (a template shows a mapping in its order: another order is
    another prompt); the standard library writes what orjson refuses (a lone surrogate a client sent)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, default=str)


def _digest(parts: Sequence[str]) -> str:
    """One digest of `parts`; each is JSON or a name, so a NUL cannot occur in one unescaped."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()

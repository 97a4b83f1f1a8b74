"""Embeddings from Hugging Face or any compatible server, over the same transport as generation.

Two wire formats: the router's feature extraction (`POST {endpoint}/{model}/pipeline/feature-extraction`
with `{"inputs": [...]}`, answered with a list of vectors, as huggingface_hub calls it) and the
OpenAI-compatible `POST {endpoint}/embeddings` of TEI, vLLM, llama.cpp and infinity. Retries, the
deadline, the size cap, typed errors and token hygiene are the transport's, as for generation.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from app.config import Settings
from app.observability import RuntimeMetrics
from app.providers.huggingface.errors import (
    HFBadRequest,
    HFBadResponse,
    HFConnectionError,
    HFError,
    HFModelNotFound,
    HFTimeout,
    bad_response,
)
from app.providers.huggingface.telemetry import observe_embedding, precreate_embed_series
from app.providers.huggingface.transport import Transport

# A query's meaning is in its first words; a 32k-character query must not cost a 32k-token embedding.
MAX_QUERY_CHARS = 2000
QUERY_CACHE_SIZE = 1024
# What to fix when an embedding call fails; the other classes' hints (token, rate limits) hold as they are.
EMBED_HINTS: dict[type[HFError], str] = {
    HFModelNotFound: "Check HF_EMBED_MODEL_ID spelling and access.",
    HFBadRequest: "The embedding server rejected the input: lower HF_EMBED_BATCH or the component's chunk_size.",
    HFBadResponse: (
        "The endpoint answered something that is not embeddings: check HF_EMBED_ENDPOINT, HF_EMBED_API and "
        "HF_EMBED_MODEL_ID."
    ),
    HFConnectionError: "Check HF_EMBED_ENDPOINT and that the endpoint is reachable from the runtime.",
    HFTimeout: "A search waits HF_EMBED_QUERY_TIMEOUT for its query's embedding, an ingest HF_TIMEOUT per batch.",
}


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(x, int | float) for x in value)


class FeatureExtraction:
    """`{"inputs": [texts]}` → `[[float, ...], ...]`; token-level answers (`[[[...]]]`) are mean-pooled."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"{settings.hf_embed_endpoint}/{settings.hf_embed_model_id}/pipeline/feature-extraction"

    def payload(self, texts: Sequence[str]) -> dict[str, Any]:
        return {"inputs": list(texts)}

    def parse(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise bad_response("feature extraction with something other than a list of vectors")
        if _numbers(data):  # some servers answer a single input with its bare vector
            data = [data]
        return [_mean(item) if isinstance(item, list) and item and _numbers(item[0]) else item for item in data]


class OpenAIEmbeddings:
    """`{"model", "input": [texts]}` → `{"data": [{"embedding", "index"}, ...]}`."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"{settings.hf_embed_endpoint}/embeddings"
        self.model_id = settings.hf_embed_model_id

    def payload(self, texts: Sequence[str]) -> dict[str, Any]:
        return {"model": self.model_id, "input": list(texts)}

    def parse(self, data: Any) -> list[Any]:
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise bad_response("without a data list of embeddings")
        ordered = sorted(items, key=lambda item: item.get("index", 0) if isinstance(item.get("index"), int) else 0)
        return [item.get("embedding") for item in ordered]


EMBED_FORMATS: dict[str, type[FeatureExtraction | OpenAIEmbeddings]] = {
    "feature-extraction": FeatureExtraction,
    "openai": OpenAIEmbeddings,
}


def _mean(tokens: list[Any]) -> list[float]:
    """Mean pooling of token vectors, for a model served without its sentence-transformers pooling."""
    if not all(_numbers(token) and len(token) == len(tokens[0]) for token in tokens):
        raise bad_response("token vectors of different dimensions")
    return [sum(column) / len(tokens) for column in zip(*tokens, strict=True)]


class HuggingFaceEmbedder:
    """The `app.memory.store.Embedder` of `HF_EMBED_MODEL_ID`: chunk batches at ingest, one query per search.

    A query's embedding has its own, short deadline (`HF_EMBED_QUERY_TIMEOUT`) so a slow embedder costs a
    search that long at most; the last `QUERY_CACHE_SIZE` queries' vectors are kept per process.
    """

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None, pool_size: int | None = None) -> None:
        self.settings = settings
        self.model_id = settings.hf_embed_model_id
        self.batch_size = settings.hf_embed_batch
        self.metrics = metrics
        self.wire = EMBED_FORMATS[settings.hf_embed_wire_api](settings)
        self.transport = Transport(settings, self.wire.url, self.model_id, pool_size)
        quick = settings.hf_embed_query_timeout
        self.query_transport = Transport(
            settings.replace(
                hf_timeout=min(settings.hf_timeout, quick), hf_connect_timeout=min(settings.hf_connect_timeout, quick)
            ),
            self.wire.url,
            self.model_id,
            pool_size,
        )
        self.dimension: int | None = None
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        if metrics:
            precreate_embed_series(metrics, self.model_id)

    def close(self) -> None:
        self.transport.close()
        self.query_transport.close()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors for `texts`, in order, within HF_DEADLINE; an `HFError` subclass otherwise."""
        return self._call(self.transport, texts, self.settings.hf_deadline)

    def embed_query(self, text: str) -> list[float]:
        """The unit vector of a search query, from the cache or within HF_EMBED_QUERY_TIMEOUT."""
        text = text[:MAX_QUERY_CHARS]
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
        vector = self._call(self.query_transport, [text], self.settings.hf_embed_query_timeout)[0]
        with self._lock:
            self._cache[text] = vector
            if len(self._cache) > QUERY_CACHE_SIZE:
                self._cache.popitem(last=False)
        return vector

    def _call(self, transport: Transport, texts: Sequence[str], seconds: float) -> list[list[float]]:
        with observe_embedding(self.metrics, self.model_id, len(texts), seconds):
            try:
                vectors = self.wire.parse(transport.read_json(transport.post(self.wire.payload(texts))))
                return self._checked(vectors, len(texts))
            except HFError as exc:
                raise exc.rehinted(EMBED_HINTS) from None

    def _checked(self, vectors: list[Any], expected: int) -> list[list[float]]:
        """Normalised vectors, one per input, all of the model's one dimension; a changed dimension is an error."""
        if len(vectors) != expected:
            raise bad_response(f"{len(vectors)} embeddings for {expected} inputs")
        unit: list[list[float]] = []
        for vector in vectors:
            if not _numbers(vector):
                raise bad_response("an embedding that is not a list of numbers")
            norm = math.sqrt(math.fsum(x * x for x in vector))
            if not math.isfinite(norm) or norm == 0:
                raise bad_response("an embedding of zero or non-finite length")
            if self.dimension is None:
                self.dimension = len(vector)
            if len(vector) != self.dimension:
                raise bad_response(
                    f"embeddings of {len(vector)} dimensions where {self.model_id!r} gave {self.dimension} before"
                )
            unit.append([x / norm for x in vector])
        return unit

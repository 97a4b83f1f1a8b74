"""Model providers: `build_provider` picks the configured `base.Provider`, `build_embedder` the embedder,
`build_classifier` the prompt injection classifier.

An embedder satisfies `app.memory.store.Embedder` structurally: memory declares what it needs and the layers
keep providers and memory independent of each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.config import Settings
from app.observability import RuntimeMetrics
from app.providers.base import Provider

if TYPE_CHECKING:
    from app.providers.huggingface import HuggingFaceEmbedder
    from app.providers.huggingface.classifier import HuggingFaceClassifier


def build_provider(settings: Settings, metrics: RuntimeMetrics | None = None) -> Provider | None:
    """The provider the settings configure, or None when no model is (render-only)."""
    if not settings.hf_enabled:
        return None
    from app.providers.huggingface import HuggingFaceClient

    return HuggingFaceClient(settings, metrics)


def build_embedder(settings: Settings, metrics: RuntimeMetrics | None = None) -> HuggingFaceEmbedder | None:
    """The embedder the settings configure, or None when no embedding model is (memory searches keywords only)."""
    if not settings.embed_enabled:
        return None
    from app.providers.huggingface import HuggingFaceEmbedder

    return HuggingFaceEmbedder(settings, metrics)


def build_classifier(settings: Settings) -> HuggingFaceClassifier | None:
    """The prompt injection classifier `CMP_PI_MODEL` names, or None (the guardrails' patterns alone)."""
    if not settings.pi_model:
        return None
    from app.providers.huggingface.classifier import HuggingFaceClassifier

    return HuggingFaceClassifier(settings)

"""Model providers behind one protocol (`base.Provider`); `build_provider` picks the configured one."""

from __future__ import annotations

from app.config import Settings
from app.observability import RuntimeMetrics
from app.providers.base import Provider


def build_provider(settings: Settings, metrics: RuntimeMetrics | None = None) -> Provider | None:
    """The provider the settings configure, or None when no model is (render-only)."""
    if not settings.hf_enabled:
        return None
    from app.providers.huggingface import HuggingFaceClient

    return HuggingFaceClient(settings, metrics)

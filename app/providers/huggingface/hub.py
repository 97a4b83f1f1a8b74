"""Which Inference Providers serve a model, from the Hub's model API, for when the router refuses a model.

The router answers 400 or 404 for a model no live provider serves; the Hub knows which ones do
(`inferenceProviderMapping`), so `ctx hf test-model` can tell the user what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from app.config import ROUTER_CHAT_ENDPOINT, Settings

ROUTER_HOST = urlsplit(ROUTER_CHAT_ENDPOINT).hostname
LOOKUP_TIMEOUT = (3.05, 5.0)  # connect, read: a hint must not keep the user waiting


class HubLookupError(Exception):
    """The Hub could not say which providers serve the model (unreachable, an error status, another shape)."""


@dataclass(frozen=True)
class ProviderMapping:
    """One provider's entry for a model: its name, its own id for the model, the task it serves it for."""

    provider: str
    provider_id: str
    task: str
    status: str


def is_router(settings: Settings) -> bool:
    """True when the calls go to Hugging Face's router, the endpoint the Hub's mapping describes."""
    return (urlsplit(settings.hf_endpoint).hostname or "").lower() == ROUTER_HOST


@dataclass(frozen=True)
class HubModel:
    """The Hub's current id for a model (a renamed repository redirects to it) and its live providers."""

    id: str
    providers: list[ProviderMapping]


def live_providers(settings: Settings) -> HubModel:
    """The providers serving HF_MODEL_ID (without its `:provider` suffix) right now, or `HubLookupError`."""
    model = settings.hf_model_id.partition(":")[0]
    url = f"{settings.hf_hub_endpoint}/api/models/{quote(model, safe='/')}"
    try:
        # The token lets the Hub show gated and private models; Hub calls are not billed.
        response = requests.get(
            url,
            params={"expand": "inferenceProviderMapping"},
            headers={"Authorization": f"Bearer {settings.hf_token}"},
            timeout=LOOKUP_TIMEOUT,
        )
    except requests.RequestException as exc:
        raise HubLookupError(f"the Hub is unreachable ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise HubLookupError(f"the Hub answered {response.status_code}")
    try:
        data = response.json()
        mapping = data.get("inferenceProviderMapping")
    except (ValueError, AttributeError):
        raise HubLookupError("the Hub answered something that is not a model") from None
    current = data.get("id") if isinstance(data.get("id"), str) else model
    return HubModel(current, [entry for entry in _entries(mapping) if entry.status == "live"])


def _entries(mapping: Any) -> list[ProviderMapping]:
    """The mapping comes keyed by provider (`{"together": {...}}`) or as a list of `{"provider", ...}`."""
    if isinstance(mapping, dict):
        items = [{**value, "provider": name} for name, value in mapping.items() if isinstance(value, dict)]
    elif isinstance(mapping, list):
        items = [item for item in mapping if isinstance(item, dict)]
    elif mapping is None:
        items = []
    else:
        raise HubLookupError("the Hub's inferenceProviderMapping has an unknown shape")
    return [
        ProviderMapping(
            provider=str(item.get("provider", "")),
            provider_id=str(item.get("providerId", "")),
            task=str(item.get("task", "")),
            status=str(item.get("status", "")),
        )
        for item in items
        if item.get("provider")
    ]

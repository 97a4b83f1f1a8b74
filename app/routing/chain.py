"""A context's model chain: the `model:` section read into entries tried in order, and its sampling defaults.

```yaml
model:
  id: meta-llama/Llama-3.3-70B-Instruct:groq
  fallbacks:
    - meta-llama/Llama-3.3-70B-Instruct:together
    - {id: local-llama, endpoint: "http://tgi.internal:8080/v1", token_env: TGI_TOKEN}
  params: {temperature: 0.2}
```

`app.contexts` validates the section (`MODEL_SCHEMA`); this module only reads what passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from app.config import Settings, public_url

# The `model.params` a chain may set: the guardrails' sampling names, which they replace as defaults.
CHAIN_PARAMS = ("max_tokens", "temperature", "top_p")


@dataclass(frozen=True)
class ChainEntry:
    """One model of a chain: on HF_ENDPOINT (with HF_TOKEN, HF_API) unless it names its own endpoint."""

    id: str
    endpoint: str = ""  # "" is HF_ENDPOINT
    token_env: str = ""  # the variable holding the endpoint's token; no token without one
    api: str = ""  # "" is HF_API

    def settings(self, settings: Settings) -> Settings:
        """The settings a client for this entry runs on: HF_TOKEN and HF_BILL_TO (and CMP_BILL_TO_BY_TENANT's
        organisations) only ever go to HF_ENDPOINT."""
        if not self.endpoint:
            return settings.replace(hf_model_id=self.id, hf_api=self.api or settings.hf_api)
        return settings.replace(
            hf_model_id=self.id,
            hf_endpoint=self.endpoint.rstrip("/"),
            hf_endpoint_retired="",
            hf_token=os.environ.get(self.token_env, "") if self.token_env else "",
            hf_bill_to="",
            bill_to_by_tenant_file="",
            hf_api=self.api or settings.hf_api,
        )

    def endpoint_of(self, settings: Settings) -> str:
        """Where its calls go, as it may be shown (no credentials)."""
        return public_url(self.endpoint or settings.hf_endpoint)

    def token_of(self) -> tuple[str, str]:
        """What identifies the token it sends: a 401 for one entry is a 401 for every entry sharing it."""
        return self.endpoint, self.token_env


@dataclass(frozen=True)
class ModelChain:
    """The entries a context's requests try in order, and its sampling defaults (`model.params`)."""

    entries: tuple[ChainEntry, ...]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def primary(self) -> ChainEntry:
        return self.entries[0]

    def describe(self, settings: Settings) -> list[dict[str, str]]:
        """Each entry and where its calls go, as `/version` shows them (no credentials)."""
        return [{"id": entry.id, "endpoint": entry.endpoint_of(settings)} for entry in self.entries]


def _entry(raw: str | dict[str, Any]) -> ChainEntry:
    if isinstance(raw, str):
        return ChainEntry(raw)
    return ChainEntry(
        id=raw["id"], endpoint=raw.get("endpoint", ""), token_env=raw.get("token_env", ""), api=raw.get("api", "")
    )


def read_chain(section: dict[str, Any]) -> ModelChain:
    """The chain of a validated `model:` section."""
    entries = (_entry(section), *(_entry(raw) for raw in section.get("fallbacks", ())))
    params = {name: section["params"][name] for name in CHAIN_PARAMS if name in section.get("params", {})}
    return ModelChain(entries, params)


# Contexts are cached dicts (the same object until their file changes): a chain is read once per section.
_read: dict[int, tuple[dict[str, Any], ModelChain]] = {}
_MAX_READ = 1024


def chain_of(context: dict[str, Any]) -> ModelChain | None:
    """The context's chain, or None without a `model:` section (one dict look-up: nothing else is paid)."""
    section = context.get("model")
    if section is None:
        return None
    found = _read.get(id(section))
    if found is not None and found[0] is section:
        return found[1]
    chain = read_chain(section)
    if len(_read) >= _MAX_READ:
        _read.clear()
    _read[id(section)] = (section, chain)
    return chain

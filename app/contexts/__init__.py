"""Contexts: the YAML files that give an agent its persona, guardrails and tools.

One discovery rule, shared by the server (chat, `/v1/models`, `/readyz`), `ctx context validate` and
`ctx test`: a context named `Name` lives at `contexts/<Name>/<name>.ctx` (the folder's name in lower case, or
exactly as the folder spells it), and its `name:` is the folder's; a tenant's copy at
`contexts/tenants/<tenant>/<Name>.ctx` (`name: Name`) wins. Any other `.ctx` file is a validation error saying
why it is not served, unless a served context pulls it in: `extends` and `include` pull other files in (maps
deep-merged, the including file wins). Parsed contexts are cached and re-read only when one of their files
changes on disk.

`store.py` finds, merges and caches the files, `schema.py` is their JSON Schema, `checks.py` what a schema
cannot say; callers import from here.
"""

from __future__ import annotations

from app.contexts.checks import ENV_REFERENCE, PLACEHOLDER, tool_entries
from app.contexts.schema import (
    CASE_ASSERTIONS,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_MAX_TOOL_STEPS,
    DEFAULT_TEXT_DRIFT_THRESHOLD,
    DEFAULT_TOOL_TIMEOUT,
    GUARDRAILS,
    PII_ENTITIES,
)
from app.contexts.store import ContextStore, deep_merge

__all__ = [
    "CASE_ASSERTIONS",
    "DEFAULT_DRIFT_THRESHOLD",
    "DEFAULT_MAX_TOOL_STEPS",
    "DEFAULT_TEXT_DRIFT_THRESHOLD",
    "DEFAULT_TOOL_TIMEOUT",
    "ENV_REFERENCE",
    "GUARDRAILS",
    "PII_ENTITIES",
    "PLACEHOLDER",
    "ContextStore",
    "deep_merge",
    "tool_entries",
]

"""Validation of chat requests: types, limits and the names that become paths."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator

from app.errors import BadRequest

# A name that becomes a path segment: no separators, never "." or "..".
# `(?!.*\n)`: `$` also matches before a final newline, which must not slip through.
NAME_PATTERN = r"^(?!\.{1,2}$)(?!.*\n)[A-Za-z0-9_.-]{1,128}$"
_NAME_RE = re.compile(NAME_PATTERN)
# More memory matches than this only dilute a prompt; 0 means the component's default.
MAX_TOP_K = 50
# Empty, or a name. One pattern rather than `anyOf` of two subschemas: the same verdicts for a third
# of jsonschema's work on the hot path. `(?![\s\S])` at `^` matches only the empty string ("$" would
# also accept a lone newline).
OPTIONAL_NAME_PATTERN = r"^(?![\s\S])|" + NAME_PATTERN

CHAT_REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["context"],
    "properties": {
        "tenant_id": {"type": "string", "pattern": OPTIONAL_NAME_PATTERN},
        "context": {"type": "string", "pattern": NAME_PATTERN},
        "component": {"type": "string", "pattern": OPTIONAL_NAME_PATTERN},
        "prompt_file": {"type": "string", "pattern": NAME_PATTERN},
        "query": {"type": "string"},
        "top_k": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_K},
        "data": {"type": "object"},
        "stream": {"type": "boolean"},
    },
}
_validator = Draft202012Validator(CHAT_REQUEST_SCHEMA)


def is_safe_name(name: str) -> bool:
    """True when `name` can be used as one path segment under the project root."""
    return bool(_NAME_RE.match(name))


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat request; unknown keys of the body are dropped."""

    context: str
    component: str
    tenant_id: str = ""
    query: str = ""
    top_k: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    prompt_file: str = "agent_response.md"
    stream: bool = False


def _describe(error) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{where}: {error.instance!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not '.' or '..')"
    return f"{where}: {error.message}"


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body and build the request, or raise `BadRequest` naming the field."""
    errors = sorted(_validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise BadRequest("; ".join(_describe(e) for e in errors), code="invalid_request")
    return ChatRequest(
        context=body["context"],
        component=body.get("component") or body["context"],
        tenant_id=body.get("tenant_id", ""),
        query=body.get("query", ""),
        top_k=int(body.get("top_k", 0)),  # JSON Schema counts 3.0 as an integer; slicing does not
        data=body.get("data", {}),
        prompt_file=body.get("prompt_file", "agent_response.md"),
        stream=body.get("stream", False),
    )

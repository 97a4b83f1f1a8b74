"""Validation of chat requests: types and patterns (JSON Schema), then what a valid body may cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError

from app.config import Settings
from app.errors import BadRequest, PayloadTooDeep, PayloadTooLarge
from app.names import MAX_TOP_K, NAME_PATTERN

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


class SchemaCheck:
    """A JSON Schema checked by a compiled validator on the hot path; jsonschema only explains a rejection.

    jsonschema is the reference: it decides what a rejected instance's errors are, and an instance the
    compiled check rejects but jsonschema accepts is accepted.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self._fast = fastjsonschema.compile(schema)
        self._explain = Draft202012Validator(schema)

    def errors(self, instance: Any) -> list[ValidationError]:
        """Every violation, ordered by where it is; [] when `instance` is valid."""
        try:
            self._fast(instance)
            return []
        except fastjsonschema.JsonSchemaException:
            return sorted(self._explain.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])


_chat_check = SchemaCheck(CHAT_REQUEST_SCHEMA)


def _describe(error: ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{where}: {error.instance!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not '.' or '..')"
    return f"{where}: {error.message}"


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body and build the request, or raise `BadRequest` naming the field."""
    errors = _chat_check.errors(body)
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


def check_payload(chat_request: ChatRequest, settings: Settings) -> None:
    """Raise when `query` or `data` exceeds the configured depth, item count or string length."""
    if len(chat_request.query) > settings.max_string_chars:
        raise PayloadTooLarge(f"query: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars} characters")
    items = 0
    # Iterative walk: a recursive one would let a deep payload exhaust the stack before the check fires.
    stack: list[tuple[Any, str, int]] = [(chat_request.data, "data", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > settings.max_data_depth:
            raise PayloadTooDeep(f"{where}: data nests deeper than CMP_MAX_DATA_DEPTH={settings.max_data_depth}")
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in children:
            items += 1
            if items > settings.max_data_items:
                raise PayloadTooLarge(f"data: more than CMP_MAX_DATA_ITEMS={settings.max_data_items} values")
            if isinstance(name, str) and len(name) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: a key is longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            stack.append((child, f"{where}.{name}", depth + 1))

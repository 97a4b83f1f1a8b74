"""The native chat request (`POST /api/v1/chat` and `/api/v1/render`): its schema, the `ChatRequest` every surface
ends in, and the playground's test run body (`POST /api/v1/test`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.names import MAX_TOP_K, NAME_PATTERN
from app.validation.fields import MESSAGE_SCHEMA, OPTIONAL_NAME_PATTERN, TOOL_FIELDS, _options, _turn, _turn_rules_hold
from app.validation.schema import SchemaCheck, check_body

_NATIVE_MESSAGE = {**MESSAGE_SCHEMA, "required": ["role", "content"]}

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
        "messages": {
            "type": "array",
            "description": "The conversation before this turn, oldest first.",
            "items": _NATIVE_MESSAGE,
        },
        "after": {
            "type": "array",
            "description": "Turns after this request's input, in order: the assistant's tool_calls and the tool "
            "results answering them, or an assistant message for the model to continue.",
            "items": _NATIVE_MESSAGE,
        },
        "stream": {"type": "boolean"},
        **TOOL_FIELDS,
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
    # The conversation before the input, and the turns after it (the assistant's tool calls and the tool results
    # answering them, or an assistant prefill), each in the order sent; OpenAI-shaped (`app.providers.base.Turn`).
    messages: tuple[dict[str, Any], ...] = ()
    after: tuple[dict[str, Any], ...] = ()
    # Sampling the client asked for (max_tokens, temperature, top_p, stop), within the context's guardrails.
    overrides: dict[str, Any] = field(default_factory=dict)
    # The OpenAI fields the client set (tools, response_format, n, ...), named as `GenerationParams` names them.
    options: dict[str, Any] = field(default_factory=dict)
    # The client's `Cache-Control` header: `no-store` (never cached) and `no-cache` (answered anew) are read.
    cache_control: str = ""


_chat_check = SchemaCheck(CHAT_REQUEST_SCHEMA, _turn_rules_hold)
# `POST /api/v1/test`: which context's `testing` cases to run, as which tenant (the chat body's own fields).
TEST_REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["context"],
    "properties": {name: CHAT_REQUEST_SCHEMA["properties"][name] for name in ("context", "tenant_id")},
}
_test_check = SchemaCheck(TEST_REQUEST_SCHEMA)


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body and build the request, or raise `BadRequest` naming the field."""
    check_body(_chat_check, body)
    return ChatRequest(
        context=body["context"],
        component=body.get("component") or body["context"],
        tenant_id=body.get("tenant_id", ""),
        query=body.get("query", ""),
        top_k=int(body.get("top_k", 0)),  # JSON Schema counts 3.0 as an integer; slicing does not
        data=body.get("data", {}),
        prompt_file=body.get("prompt_file", "agent_response.md"),
        stream=body.get("stream", False),
        messages=tuple(_turn(m) for m in body.get("messages", ())),
        after=tuple(_turn(m) for m in body.get("after", ())),
        options=_options(body, TOOL_FIELDS),
    )


def parse_test_request(body: Any) -> tuple[str, str]:
    """The context and tenant of a test run's body, or `BadRequest` naming the field."""
    check_body(_test_check, body)
    return body["context"], body.get("tenant_id", "")

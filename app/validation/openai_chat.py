"""The OpenAI chat-completion request (`POST /v1/chat/completions`, and the Responses API's translation): its
schema, and how a body becomes the same `ChatRequest` as a native one (`model` is the context, the last user
message the input).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.names import NAME_PATTERN
from app.validation.chat import CHAT_REQUEST_SCHEMA, ChatRequest, parse_chat_request
from app.validation.fields import (
    MESSAGE_SCHEMA,
    OPENAI_FIELDS,
    TOOL_FIELDS,
    _options,
    _turn_rules_hold,
    content_text,
)
from app.validation.schema import SchemaCheck, check_body

# The runtime's own fields, accepted at the top level of an OpenAI body (where SDKs put `extra_body`).
RUNTIME_FIELDS = ("tenant_id", "component", "query", "top_k", "data", "prompt_file")
OPENAI_CHAT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "pattern": NAME_PATTERN, "description": "The context to answer as."},
        "messages": {
            "type": "array",
            "minItems": 1,
            # The last user message is the input: a conversation without one has nothing to answer.
            "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]},
            "description": "The conversation; the last user message is the input, the others its history (before "
            "it) and the turns after it (tool calls and results, a prefill), kept in order.",
            "items": MESSAGE_SCHEMA,
        },
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 32768},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 32768},
        "stop": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 4},
                {"type": "null"},
            ]
        },
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        },
        **TOOL_FIELDS,
        **OPENAI_FIELDS,
        **{name: CHAT_REQUEST_SCHEMA["properties"][name] for name in RUNTIME_FIELDS},
    },
}


_openai_check = SchemaCheck(OPENAI_CHAT_SCHEMA, _turn_rules_hold)


def parse_openai_request(body: Any) -> ChatRequest:
    """An OpenAI chat-completion body as a `ChatRequest`: `model` is the context, the last user message the input.

    The input's text is `user_input` for the template (unless `data` sets it) and the memory query (unless
    `query` is given), its other parts (images) go with the prompt; the messages before it are the history,
    those after it (tool calls and results, a prefill) follow the input, each in order.
    Unknown fields are ignored, as OpenAI-compatible servers do.
    """
    check_body(_openai_check, body)
    messages = body["messages"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")  # one at least: the schema says so
    content = messages[last_user].get("content")
    user_input = content_text(content)
    native = {name: body[name] for name in RUNTIME_FIELDS if name in body}
    chat_request = parse_chat_request(
        {
            **native,
            "context": body["model"],
            "query": native.get("query", user_input),
            "data": {"user_input": user_input, **native.get("data", {})},
            "messages": [_with_content(m) for m in messages[:last_user]],
            "after": [_with_content(m) for m in messages[last_user + 1 :]],
            "stream": bool(body.get("stream")),
        }
    )
    options = _options(body, _OPENAI_OPTIONS)
    if isinstance(content, list) and any(part["type"] != "text" for part in content):
        options["input_parts"] = tuple(part for part in content if part["type"] != "text")
    stop = body.get("stop")
    overrides = {
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stop": (stop,) if isinstance(stop, str) else tuple(stop or ()),
    }
    return replace(
        chat_request,
        overrides={name: value for name, value in overrides.items() if value not in (None, ())},
        options=options,
    )


_OPENAI_OPTIONS = {**TOOL_FIELDS, **OPENAI_FIELDS}


def _with_content(message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as the native body takes it: `content` may be left out on `/v1`, not there."""
    return message if "content" in message else {**message, "content": None}

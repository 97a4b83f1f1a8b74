"""Validation of chat requests: types and patterns (JSON Schema), then what a valid body may cost.

Both surfaces end here: `/api/v1/chat` bodies (`parse_chat_request`) and OpenAI chat-completion
bodies (`parse_openai_request`), which become the same `ChatRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
        "messages": {
            "type": "array",
            "description": "The conversation before this turn, oldest first.",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"enum": ["user", "assistant", "system"]}, "content": {"type": "string"}},
            },
        },
        "stream": {"type": "boolean"},
    },
}

# The runtime's own fields, accepted at the top level of an OpenAI body (where SDKs put `extra_body`).
RUNTIME_FIELDS = ("tenant_id", "component", "query", "top_k", "data", "prompt_file")
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
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
            "description": "The conversation; the last user message is the input, the others its history.",
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    # OpenAI's newer name for system instructions; the runtime treats it as `system`.
                    "role": {"enum": ["system", "developer", "user", "assistant"]},
                    "content": {
                        "anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}, {"type": "null"}]
                    },
                },
            },
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
        **{name: CHAT_REQUEST_SCHEMA["properties"][name] for name in RUNTIME_FIELDS},
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
_openai_check = SchemaCheck(OPENAI_CHAT_SCHEMA)


def _describe(error: ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{where}: {error.instance!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not '.' or '..')"
    if error.validator == "contains":
        return f"{where}: no message has the role user (its last one is the input)"
    return f"{where}: {error.message}"


def _check(schema: SchemaCheck, body: Any) -> None:
    """`BadRequest` naming every field `body` gets wrong, the first as OpenAI's `param`."""
    errors = schema.errors(body)
    if errors:
        first = errors[0].absolute_path
        raise BadRequest(
            "; ".join(_describe(e) for e in errors),
            code="invalid_request",
            param=str(first[0]) if first else None,
        )


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded JSON body and build the request, or raise `BadRequest` naming the field."""
    _check(_chat_check, body)
    return ChatRequest(
        context=body["context"],
        component=body.get("component") or body["context"],
        tenant_id=body.get("tenant_id", ""),
        query=body.get("query", ""),
        top_k=int(body.get("top_k", 0)),  # JSON Schema counts 3.0 as an integer; slicing does not
        data=body.get("data", {}),
        prompt_file=body.get("prompt_file", "agent_response.md"),
        stream=body.get("stream", False),
        messages=tuple({"role": m["role"], "content": m["content"]} for m in body.get("messages", [])),
    )


def _text(content: str | list[dict[str, str]] | None) -> str:
    """A message's text: OpenAI's content is a string, a list of text parts, or null."""
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return content or ""


def parse_openai_request(body: Any) -> ChatRequest:
    """An OpenAI chat-completion body as a `ChatRequest`: `model` is the context, the last user message the input.

    The input's text is `user_input` for the template (unless `data` sets it) and the memory query (unless
    `query` is given); every other message is the history, in order.
    Unknown fields are ignored, as OpenAI-compatible servers do.
    """
    _check(_openai_check, body)
    turns = [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": _text(m.get("content"))}
        for m in body["messages"]
    ]
    users = [i for i, turn in enumerate(turns) if turn["role"] == "user"]  # at least one: the schema says so
    user_input = turns.pop(users[-1])["content"]
    native = {name: body[name] for name in RUNTIME_FIELDS if name in body}
    chat_request = parse_chat_request(
        {
            **native,
            "context": body["model"],
            "query": native.get("query", user_input),
            "data": {"user_input": user_input, **native.get("data", {})},
            "messages": turns,
            "stream": bool(body.get("stream")),
        }
    )
    stop = body.get("stop")
    overrides = {
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stop": (stop,) if isinstance(stop, str) else tuple(stop or ()),
    }
    return replace(
        chat_request, overrides={name: value for name, value in overrides.items() if value not in (None, ())}
    )


def check_payload(chat_request: ChatRequest, settings: Settings) -> None:
    """Raise when `query` or `data` exceeds the configured depth, item count or string length."""
    if len(chat_request.query) > settings.max_string_chars:
        raise PayloadTooLarge(f"query: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars} characters")
    _check_messages(chat_request.messages, settings)
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


def _check_messages(messages: tuple[dict[str, Any], ...], settings: Settings) -> None:
    """Raise when the history has too many messages, or one or all of them too many characters."""
    if len(messages) > settings.max_messages:
        raise PayloadTooLarge(
            f"messages: more than CMP_MAX_MESSAGES={settings.max_messages} messages", param="messages"
        )
    total = 0
    for i, message in enumerate(messages):
        size = len(message["content"])
        if size > settings.max_string_chars:
            raise PayloadTooLarge(
                f"messages.{i}.content: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}", param="messages"
            )
        total += size
    if total > settings.max_history_chars:
        raise PayloadTooLarge(
            f"messages: more than CMP_MAX_HISTORY_CHARS={settings.max_history_chars} characters in all",
            param="messages",
        )

"""The pieces of a chat request both surfaces share: names, OpenAI-shaped messages and the rules across their
fields, function tools and structured output, OpenAI's other fields; and how a valid message or field becomes
what the runtime keeps (`_turn`, `_options`, `content_text`).
"""

from __future__ import annotations

from typing import Any

from app.names import NAME_PATTERN

# Empty, or a name. One pattern rather than `anyOf` of two subschemas: the same verdicts for a third
# of jsonschema's work on the hot path. `(?![\s\S])` at `^` matches only the empty string ("$" would
# also accept a lone newline).
OPTIONAL_NAME_PATTERN = r"^(?![\s\S])|" + NAME_PATTERN

# OpenAI's chat messages: roles, content parts, an assistant's tool calls and a tool's result. The runtime
# forwards them as sent (on the chat-completion wire); `app.providers.base.Turn` is their shape past here.
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_IMAGE_PART = {
    "type": "object",
    "required": ["type", "image_url"],
    "properties": {
        "type": {"const": "image_url"},
        "image_url": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string", "minLength": 1}, "detail": {"enum": ["auto", "low", "high"]}},
        },
    },
}
_TOOL_CALL = {
    "type": "object",
    "required": ["id", "type", "function"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}
# A tool's result names the call it answers; only an assistant's turn calls tools. Per message these rules would
# double the compiled check's cost, so it leaves them to `_turn_rules_hold` (the schema keeps them for the
# contract and for jsonschema's explanation); `_describe` reports their last branch's error, which says what
# is missing.
_TOOL_RESULT_RULE: dict[str, Any] = {
    "anyOf": [
        {"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}}},
        {"required": ["tool_call_id", "content"]},
    ]
}
_TOOL_CALLS_RULE: dict[str, Any] = {
    "anyOf": [{"properties": {"tool_calls": False}}, {"properties": {"role": {"const": "assistant"}}}]
}
_TURN_RULES = [_TOOL_RESULT_RULE, _TOOL_CALLS_RULE]
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["role"],
    "properties": {
        # `developer` is OpenAI's newer name for system instructions; the runtime treats it as `system`.
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}},
                {"type": "null"},
            ]
        },
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_call_id": {"type": "string", "minLength": 1},
    },
    "allOf": _TURN_RULES,
}
_NAMED_FUNCTION = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    },
}
# The fields of a request that shape what the model may answer: function tools and structured output.
TOOL_FIELDS: dict[str, Any] = {
    "tools": {
        "type": ["array", "null"],
        "maxItems": 128,
        "items": {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "description": {"type": "string"},
                        "parameters": {"type": "object"},
                        "strict": {"type": ["boolean", "null"]},
                    },
                },
            },
        },
    },
    "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]}, _NAMED_FUNCTION, {"type": "null"}]},
    "parallel_tool_calls": {"type": ["boolean", "null"]},
    "response_format": {
        "anyOf": [
            {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
            {
                "type": "object",
                "required": ["type", "json_schema"],
                "properties": {
                    "type": {"const": "json_schema"},
                    "json_schema": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                            "description": {"type": "string"},
                            "schema": {"type": "object"},
                            "strict": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
            {"type": "null"},
        ]
    },
}
# OpenAI's other per-request fields, passed on as they are.
OPENAI_FIELDS: dict[str, Any] = {
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 16},
    "seed": {"type": ["integer", "null"]},
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "user": {"type": ["string", "null"], "maxLength": 256},
}


def _without_turn_rules(schema: Any) -> Any:
    """A copy of `schema` whose messages lack the per-message rules (`_turn_rules_hold` checks them)."""
    if isinstance(schema, dict):
        return {k: _without_turn_rules(v) for k, v in schema.items() if not (k == "allOf" and v is _TURN_RULES)}
    if isinstance(schema, list):
        return [_without_turn_rules(item) for item in schema]
    return schema


def _turn_rules_hold(body: Any) -> bool:
    """The rules of `_TURN_RULES` for every message of a body the compiled check accepted."""
    for name in ("messages", "after"):
        for message in body.get(name, ()):
            role = message["role"]
            if role == "tool":
                if "tool_call_id" not in message or "content" not in message:
                    return False
            elif role != "assistant" and "tool_calls" in message:
                return False
    return True


def _turn(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the runtime keeps it: its role (`developer` is `system`), content, tool calls and the call a
    tool result answers; any other key is dropped (history never changes the model, endpoint or token)."""
    role = message["role"]
    content = message.get("content")
    if isinstance(content, list) and all(part["type"] == "text" for part in content):
        content = content_text(content)  # text parts alone are one text, as OpenAI reads them
    turn = {"role": "system" if role == "developer" else role, "content": "" if content is None else content}
    if "tool_calls" in message:
        turn["tool_calls"] = message["tool_calls"]
        turn["content"] = content  # null beside tool calls, as the model sent it
    if "tool_call_id" in message:
        turn["tool_call_id"] = message["tool_call_id"]
    return turn


_INTEGER_OPTIONS = frozenset({"n", "seed", "top_logprobs"})


def _options(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI fields of `fields` the body sets, as `GenerationParams` takes them; `response_format`
    `{"type": "text"}` and `n: 1` are the defaults, so they are not options."""
    options = {name: body[name] for name in fields if body.get(name) is not None}
    if not options:
        return options
    if "tools" in options:
        options["tools"] = tuple(options["tools"])
    for name in _INTEGER_OPTIONS & options.keys():
        options[name] = int(options[name])  # JSON Schema counts 2.0 as an integer; range() and upstreams do not
    if options.get("response_format", {}).get("type") == "text":
        del options["response_format"]
    if options.get("n") == 1:
        del options["n"]
    return options


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: OpenAI's content is a string, a list of parts (their text parts' text), or null."""
    if isinstance(content, list):
        return "".join(part["text"] for part in content if part.get("type") == "text")
    return content or ""

"""The Responses API's shapes ⇄ the runtime's: a translation at the edge, so `/v1/responses` runs the one pipeline.

A Responses body becomes a chat-completion body (`chat_body`), which `app.validation.parse_openai_request` turns
into the same `ChatRequest` as `/v1/chat/completions`: input items are messages, `function_call` items an
assistant's `tool_calls`, `function_call_output` items `tool` messages, `instructions` the first system message,
`text.format` the `response_format`, function tools chat tools. Answers go the other way, in `responses_answer`.

Conversations are kept as Responses input items (`input_items`, `output_as_input`): what a stored response
holds, what `previous_response_id` continues and what an `item_reference` names. What is kept of the request is
what the guardrails passed to the model (`item_as_passed`, `echo_as_passed`): under `pii: redact`, no personal data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import BadRequest
from app.names import NAME_PATTERN
from app.validation import OPENAI_CHAT_SCHEMA, RUNTIME_FIELDS, SchemaCheck, check_body

_TEXT_PARTS = ("input_text", "output_text")
# What OpenAI allows as a function's or a JSON schema's name.
_FUNCTION_NAME = "^[A-Za-z0-9_-]{1,64}$"
_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["input_text", "output_text", "refusal", "input_image"]},
        "text": {"type": "string"},
        "refusal": {"type": "string"},
        "image_url": {"type": "string", "minLength": 1},
        "detail": {"enum": ["auto", "low", "high"]},
    },
    "allOf": [
        {"if": {"properties": {"type": {"enum": list(_TEXT_PARTS)}}}, "then": {"required": ["text"]}},
        {"if": {"properties": {"type": {"const": "refusal"}}}, "then": {"required": ["refusal"]}},
        {"if": {"properties": {"type": {"const": "input_image"}}}, "then": {"required": ["image_url"]}},
    ],
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}]}
# A function's output is text on the chat wire: a string, or text parts.
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"enum": list(_TEXT_PARTS)}, "text": {"type": "string"}},
}
_OUTPUT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}


def _when(kind: str, required: list[str]) -> dict[str, Any]:
    return {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]}, "then": {"required": required}}


_ITEM = {
    "type": "object",
    "properties": {
        "type": {"enum": ["message", "function_call", "function_call_output", "item_reference", "reasoning"]},
        "role": {"enum": ["user", "assistant", "system", "developer"]},
        "content": _CONTENT,
        "id": {"type": "string"},
        "call_id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "arguments": {"type": "string"},
        "output": _OUTPUT,
    },
    "allOf": [
        # A message may leave out its type (EasyInputMessage): then it has a role and a content.
        {"if": {"properties": {"type": {"const": "message"}}}, "then": {"required": ["role", "content"]}},
        _when("function_call", ["call_id", "name", "arguments"]),
        _when("function_call_output", ["call_id", "output"]),
        _when("item_reference", ["id"]),
    ],
}
_TOOL = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"const": "function", "description": "Only function tools: the client runs them"},
        "name": {"type": "string", "pattern": _FUNCTION_NAME},
        "description": {"type": ["string", "null"]},
        "parameters": {"type": ["object", "null"]},
        "strict": {"type": ["boolean", "null"]},
    },
    "allOf": [_when("function", ["name"])],
}
_FORMAT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "name": {"type": "string", "pattern": _FUNCTION_NAME},
        "schema": {"type": "object"},
        "strict": {"type": ["boolean", "null"]},
        "description": {"type": "string"},
    },
    "allOf": [_when("json_schema", ["name", "schema"])],
}
_chat = OPENAI_CHAT_SCHEMA["properties"]
_USER_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {"type": {"const": "message"}, "role": {"const": "user"}},
}
_NO_USER = (
    "input: no message has the role user (its last one is the input; with previous_response_id, the stored "
    "conversation counts)"
)
RESPONSES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["model"],
    "$comment": "needs a user message in `input` (its last one is the input), or a `previous_response_id` "
    "whose stored conversation has one",
    "anyOf": [
        {"required": ["previous_response_id"], "properties": {"previous_response_id": {"type": "string"}}},
        {
            "required": ["input"],
            "properties": {"input": {"anyOf": [{"type": "string"}, {"type": "array", "contains": _USER_MESSAGE}]}},
        },
    ],
    "properties": {
        "model": {"type": "string", "pattern": NAME_PATTERN, "description": "The context to answer as."},
        "input": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": _ITEM}],
            "description": "The user's text, or input items: the last user message is the input, the rest history.",
        },
        "instructions": {"type": ["string", "null"], "description": "A system message before the input."},
        "previous_response_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},
        "store": {"type": ["boolean", "null"], "description": "Keep the response for GET and continuations."},
        "stream": {"type": ["boolean", "null"]},
        "max_output_tokens": _chat["max_completion_tokens"],
        "temperature": _chat["temperature"],
        "top_p": _chat["top_p"],
        "tools": {"type": ["array", "null"], "maxItems": 128, "items": _TOOL},
        "tool_choice": {
            "anyOf": [
                {"enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {"type": {"const": "function"}, "name": {"type": "string"}},
                },
                {"type": "null"},
            ]
        },
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "text": {"type": ["object", "null"], "properties": {"format": _FORMAT}},
        "metadata": {
            "type": ["object", "null"],
            "maxProperties": 16,
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
        "user": {"type": ["string", "null"], "maxLength": 256},
        # What the runtime does not do is refused, never ignored: answers are made in the request, and a
        # conversation continues by `previous_response_id`.
        "background": {"enum": [False, None], "description": "Not supported: responses are made in the request"},
        "conversation": {"type": "null", "description": "Not supported: continue by previous_response_id"},
        **{name: _chat[name] for name in RUNTIME_FIELDS},
    },
}
_check = SchemaCheck(RESPONSES_SCHEMA)

# What the response object echoes of the request, with OpenAI's defaults.
_ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "temperature": None,
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "user": None,
}


@dataclass(frozen=True)
class ResponsesCall:
    """A checked Responses body: its echoed fields, its input as items, and what stays at the edge."""

    body: dict[str, Any]
    items: list[dict[str, Any]]  # the input items, `item_reference`s still unresolved
    store: bool
    stream: bool
    previous_response_id: str | None
    echo: dict[str, Any] = field(default_factory=dict)

    @property
    def text_format(self) -> dict[str, Any]:
        return ((self.body.get("text") or {}).get("format")) or {"type": "text"}


def parse_responses_body(body: Any) -> ResponsesCall:
    """Check a decoded body against `RESPONSES_SCHEMA` (`BadRequest` naming the field), and read it."""
    check_body(_check, body)
    raw = body.get("input", [])
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else list(raw)
    echo = {name: default if body.get(name) is None else body[name] for name, default in _ECHOED.items()}
    return ResponsesCall(
        body=body,
        items=items,
        store=body.get("store") is not False,  # OpenAI's default: stored
        stream=bool(body.get("stream")),
        previous_response_id=body.get("previous_response_id"),
        echo=echo,
    )


def input_item(item: dict[str, Any]) -> dict[str, Any]:
    """One input item as stored and continued: only the fields the translation reads, text parts as typed."""
    kind = item.get("type", "message")
    if kind == "function_call":
        return {"type": kind, "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
    if kind == "function_call_output":
        return {"type": kind, "call_id": item["call_id"], "output": item["output"]}
    return {"type": "message", "role": item["role"], "content": item["content"]}


def output_as_input(item: dict[str, Any]) -> dict[str, Any]:
    """An output item of a response as the input item that continues it."""
    if item["type"] == "function_call":
        return input_item(item)
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": _text(item["content"])}],
    }


def item_as_passed(item: dict[str, Any], passed: Callable[[str], str]) -> dict[str, Any]:
    """A conversation's item with each text as the guardrails passed it to the model (`Answer.as_passed`), for a
    stored response: read or continued, it hands back none of the personal data the model never saw."""
    kind = item["type"]
    if kind == "function_call":
        return {**item, "arguments": passed(item["arguments"])}
    if kind == "function_call_output":
        return {**item, "output": _passed_content(item["output"], passed)}
    return {**item, "content": _passed_content(item["content"], passed)}


def _passed_content(content: str | list[dict[str, Any]], passed: Callable[[str], str]) -> str | list[dict[str, Any]]:
    """A content as the chat wire sent it (`_chat_content`) through `passed`: text parts without images went as
    one text, which stays parts when nothing in it changed; with images each text part went on its own."""
    if isinstance(content, str):
        return passed(content)
    if all(part["type"] != "input_image" for part in content):
        text = _text(content)
        redacted = passed(text)
        return content if redacted == text else redacted
    return [
        {**part, "text": passed(part["text"])} if "text" in part else _passed_refusal(part, passed) for part in content
    ]


def _passed_refusal(part: dict[str, Any], passed: Callable[[str], str]) -> dict[str, Any]:
    return {**part, "refusal": passed(part["refusal"])} if "refusal" in part else part


def echo_as_passed(call: ResponsesCall, passed: Callable[[str], str] | None) -> ResponsesCall:
    """The call whose response echoes `instructions` as the model got them (the first system message); the call
    itself when the guardrails pass every text as it is (`passed` None)."""
    instructions = call.echo["instructions"]
    redacted = passed(instructions) if passed and instructions else instructions
    return call if redacted == instructions else replace(call, echo={**call.echo, "instructions": redacted})


def _text(content: str | list[dict[str, Any]]) -> str:
    """The text of a content: a string, or its text and refusal parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", part.get("refusal", "")) for part in content)


def _chat_content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's content on the chat wire: a string, or parts when it carries images."""
    if isinstance(content, str) or all(part["type"] != "input_image" for part in content):
        return _text(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_image":
            image = {"url": part["image_url"], **({"detail": part["detail"]} if "detail" in part else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": _text([part])})
    return parts


def _messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as chat messages, in order: consecutive function calls (and the assistant text just before
    them) are one assistant message with `tool_calls`, as a chat model made them."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])})
        else:
            messages.append({"role": item["role"], "content": _chat_content(item["content"])})
    return messages


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(text_format: dict[str, Any]) -> dict[str, Any] | None:
    if text_format["type"] == "text":
        return None
    if text_format["type"] == "json_object":
        return {"type": "json_object"}
    schema = {name: text_format[name] for name in ("name", "schema", "strict", "description") if name in text_format}
    return {"type": "json_schema", "json_schema": schema}


def chat_body(call: ResponsesCall, items: list[dict[str, Any]], tenant: str) -> dict[str, Any]:
    """The chat-completion body the call means, for `parse_openai_request`: the conversation `items` (stored ones
    first), the sampling and tool fields renamed, the runtime's own fields as they came."""
    body = call.body
    messages = _messages(body.get("instructions"), items)
    if not any(m["role"] == "user" for m in messages):
        raise BadRequest(_NO_USER, code="invalid_request", param="input")
    chat: dict[str, Any] = {
        **{name: body[name] for name in RUNTIME_FIELDS if name in body},
        "tenant_id": tenant,
        "model": body["model"],
        "messages": messages,
        "stream": call.stream,
    }
    renamed = {
        "max_completion_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "user": body.get("user"),
        "response_format": _response_format(call.text_format),
    }
    if body.get("tools"):
        renamed["tools"] = [
            {
                "type": "function",
                "function": {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None},
            }
            for t in body["tools"]
        ]
    if body.get("tool_choice") is not None:
        renamed["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    chat.update({name: value for name, value in renamed.items() if value is not None})
    return chat

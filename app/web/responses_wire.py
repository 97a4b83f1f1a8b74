"""The Responses API's shapes ⇄ the runtime's: a translation at the edge, so `/v1/responses` runs the one pipeline.

A Responses body becomes a chat-completion body (`chat_body`), which `app.validation.parse_openai_request` turns
into the same `ChatRequest` as `/v1/chat/completions`: input items are messages, `function_call` items an
assistant's `tool_calls`, `function_call_output` items `tool` messages, `instructions` the first system message,
`text.format` the `response_format`, function tools chat tools. Answers go the other way: a `response` object
(`response_object`), or the event sequence of OpenAI's streams (`ResponseEvents`), whose every event the SDKs'
stream helpers accumulate by `output_index` and `sequence_number`.

Conversations are kept as Responses input items (`input_items`, `output_as_input`): what a stored response
holds, what `previous_response_id` continues and what an `item_reference` names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.errors import BadRequest, ContexisError
from app.names import NAME_PATTERN
from app.providers.base import TokenStream, ToolCallDelta, Usage
from app.validation import OPENAI_CHAT_SCHEMA, RUNTIME_FIELDS, SchemaCheck, check_body
from app.web.sse import sse_event

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


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """The Responses API's usage; a count the endpoint did not report is 0. None when it reported nothing."""
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _hex(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def message_item(response_id: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message output item; its id names its response, so an `item_reference` can find it."""
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    )
    return {
        "type": "message",
        "id": f"msg_{_hex(response_id)}_{index}",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    response_id: str, index: int, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A function call output item: the client runs the function and answers with a `function_call_output`."""
    return {
        "type": "function_call",
        "id": f"fc_{_hex(response_id)}_{index}",
        "call_id": call_id or f"call_{_hex(response_id)}_{index}",
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def item_response_id(item_id: str) -> str | None:
    """The response an output item id names (`msg_<hex>_<n>`, `fc_<hex>_<n>`), None for another id."""
    kind, _, rest = item_id.partition("_")
    hex_id, _, index = rest.rpartition("_")
    if kind not in ("msg", "fc") or len(hex_id) != 32 or not index.isdigit():
        return None
    return f"resp_{hex_id}"


def answer_output(response_id: str, text: str, tool_calls: tuple[Any, ...], status: str) -> list[dict[str, Any]]:
    """A whole answer's output items: its text as a message (when it has text or calls nothing), then its calls."""
    output = [message_item(response_id, 0, text, status)] if text or not tool_calls else []
    for call in tool_calls:
        function = call["function"]
        output.append(function_call_item(response_id, len(output), call["id"], function["name"], function["arguments"]))
    return output


def status_of(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """The response's status and `incomplete_details`: an answer cut at the token limit is incomplete."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def response_object(
    call: ResponsesCall,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """A `response` object: its state, its output, what the request set, and `usage`, `error`, `sources`..."""
    texts = [part["text"] for item in output if item["type"] == "message" for part in item["content"]]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": call.body["model"],
        "output": output,
        "output_text": "".join(texts),
        **call.echo,
        "store": call.store,
        "text": {"format": call.text_format},
        "truncation": "disabled",
        "usage": None,
        **fields,
    }


class ResponseEvents:
    """A streamed answer as the Responses API's events, each with the next `sequence_number`.

    `response.created` and `response.in_progress`, then per output item `response.output_item.added`, its
    content (`response.content_part.added`, `response.output_text.delta`... for text;
    `response.function_call_arguments.delta` for a call) and, once the model is done, its `.done` events; then
    `response.completed` (`response.incomplete` when cut at the token limit), after `finish` has stored it. A
    failure after the first event is `response.failed` with the output so far (`failed`).
    """

    def __init__(
        self,
        call: ResponsesCall,
        response_id: str,
        stream: TokenStream,
        finish: Callable[[dict[str, Any]], None],
        **fields: Any,
    ) -> None:
        self.call = call
        self.id = response_id
        self.created_at = int(time.time())
        self.stream = stream
        self.finish = finish
        self.fields = fields
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._text: list[str] | None = None  # the open message's text so far
        self._calls: dict[int, int] = {}  # a tool call's index -> its output index

    def _event(self, kind: str, **data: Any) -> str:
        event = sse_event({"type": kind, "sequence_number": self.sequence, **data}, event=kind)
        self.sequence += 1
        return event

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return response_object(self.call, self.id, self.created_at, status, self.output, **{**self.fields, **fields})

    def __iter__(self) -> Iterator[str]:
        yield self._event("response.created", response=self._response("in_progress"))
        yield self._event("response.in_progress", response=self._response("in_progress"))
        for piece in self.stream:
            if isinstance(piece, str):
                yield from self._text_delta(piece)
            elif isinstance(piece, ToolCallDelta):
                if piece.choice == 0:
                    yield from self._call_delta(piece)
            elif piece.choice == 0 and piece.text:
                yield from self._text_delta(piece.text)
        status, incomplete = status_of(self.stream.finish_reason)
        yield from self._close_message(status)
        for index in sorted(self._calls):
            yield from self._close_call(self._calls[index])
        response = self._response(status, incomplete_details=incomplete, usage=usage_object(self.stream.usage))
        self.finish(response)
        yield self._event("response.completed" if status == "completed" else "response.incomplete", response=response)

    def _text_delta(self, delta: str) -> Iterator[str]:
        if self._text is None:
            self._text = []
            item = message_item(self.id, len(self.output), "", "in_progress")
            self.output.append(item)
            yield self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield self._event("response.content_part.added", **self._where(), part=part)
        self._text.append(delta)
        yield self._event("response.output_text.delta", **self._where(), delta=delta, logprobs=[])

    def _where(self) -> dict[str, Any]:
        index = len(self.output) - 1
        return {"item_id": self.output[index]["id"], "output_index": index, "content_index": 0}

    def _close_message(self, status: str) -> Iterator[str]:
        """End the open message: its text done, its part done, the item done (with its status)."""
        if self._text is None:
            return
        text, where = "".join(self._text), self._where()
        self._text = None
        item = message_item(
            self.id, where["output_index"], text, "incomplete" if status == "incomplete" else "completed"
        )
        self.output[where["output_index"]] = item
        yield self._event("response.output_text.done", **where, text=text, logprobs=[])
        yield self._event("response.content_part.done", **where, part=item["content"][0])
        yield self._event("response.output_item.done", output_index=where["output_index"], item=item)

    def _call_delta(self, piece: ToolCallDelta) -> Iterator[str]:
        index = self._calls.get(piece.index)
        if index is None:
            yield from self._close_message("completed")  # a call after text ends the message
            index = self._calls[piece.index] = len(self.output)
            item = function_call_item(self.id, index, piece.id or "", piece.name or "", "", "in_progress")
            self.output.append(item)
            yield self._event("response.output_item.added", output_index=index, item=item)
        item = self.output[index]
        if piece.name and not item["name"]:
            item["name"] = piece.name
        if piece.arguments:
            item["arguments"] += piece.arguments
            yield self._event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece.arguments
            )

    def _close_call(self, index: int) -> Iterator[str]:
        item = {**self.output[index], "status": "completed"}
        self.output[index] = item
        yield self._event(
            "response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=item["arguments"]
        )
        yield self._event("response.output_item.done", output_index=index, item=item)

    def failed(self, exc: ContexisError) -> str:
        """The event that ends a stream the runtime could not finish: `response.failed`, saying why."""
        if self._text is not None:  # the message cut short, with its text so far
            index = len(self.output) - 1
            self.output[index] = message_item(self.id, index, "".join(self._text), "incomplete")
        for index in self._calls.values():
            self.output[index] = {**self.output[index], "status": "incomplete"}
        error = {"code": exc.code, "message": exc.message}
        return self._event("response.failed", response=self._response("failed", error=error))

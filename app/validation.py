"""Validation of chat requests: types and patterns (JSON Schema), then what a valid body may cost.

Both surfaces end here: `/api/v1/chat` bodies (`parse_chat_request`) and OpenAI chat-completion
bodies (`parse_openai_request`), which become the same `ChatRequest`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry

from app.config import Settings
from app.errors import BadRequest, PayloadTooDeep, PayloadTooLarge
from app.names import MAX_TOP_K, NAME_PATTERN, NAME_RULE

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


def local_validator(schema: dict[str, Any]) -> Validator:
    """A validator for a schema someone else wrote (a client's `response_format`, an MCP server's tool), whose
    `$ref`s resolve within it and the meta-schemas only: jsonschema's default registry fetches any URL a `$ref`
    names, which would let a request reach a host the operator did not name."""
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, registry=Registry())


class SchemaCheck:
    """A JSON Schema checked by a compiled validator on the hot path; jsonschema only explains a rejection.

    jsonschema is the reference: it decides what a rejected instance's errors are, and an instance the
    compiled check rejects but jsonschema accepts is accepted.
    """

    def __init__(self, schema: dict[str, Any], rules: Callable[[Any], bool] | None = None) -> None:
        # `rules` checks in Python what the compiled check leaves out (the per-message rules, see above).
        self._fast = fastjsonschema.compile(_without_turn_rules(schema) if rules else schema)
        self._rules = rules
        self._explain = Draft202012Validator(schema)

    def errors(self, instance: Any) -> list[ValidationError]:
        """Every violation, ordered by where it is; [] when `instance` is valid."""
        try:
            self._fast(instance)
            if self._rules is None or self._rules(instance):
                return []
        except fastjsonschema.JsonSchemaException:
            pass
        return sorted(self._explain.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])


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


_chat_check = SchemaCheck(CHAT_REQUEST_SCHEMA, _turn_rules_hold)
_openai_check = SchemaCheck(OPENAI_CHAT_SCHEMA, _turn_rules_hold)
# `POST /api/v1/test`: which context's `testing` cases to run, as which tenant (the chat body's own fields).
TEST_REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["context"],
    "properties": {name: CHAT_REQUEST_SCHEMA["properties"][name] for name in ("context", "tenant_id")},
}
_test_check = SchemaCheck(TEST_REQUEST_SCHEMA)


def unquoted(error: ValidationError) -> str:
    """jsonschema's message for `error` without the value it quotes (`'...' is not of type 'object'`): a client's
    text or a model's answer may hold personal data or a secret, so an error names the field and the rule only."""
    message, quoted = error.message, repr(error.instance)
    if message.startswith(quoted + " "):
        return "the value" + message[len(quoted) :]
    if message.endswith(" " + quoted):  # `False schema does not allow ...`
        return message[: -len(quoted)] + "the value"
    return message


def _describe(error: ValidationError) -> str:
    if error.schema in (_TOOL_RESULT_RULE, _TOOL_CALLS_RULE) and error.context:
        error = error.context[-1]
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{where}: not a valid name ({NAME_RULE})"
    if error.validator == "contains":
        return f"{where}: no message has the role user (its last one is the input)"
    if error.validator == "anyOf":
        explained = error.schema.get("$comment") if isinstance(error.schema, dict) else None
        if explained:  # a rule across fields, explained by the schema itself
            return f"{where}: {explained}"
        if error.context:  # the alternative that got furthest, named where it failed
            return _describe(max(error.context, key=lambda e: len(e.path)))
    return f"{where}: {unquoted(error)}"


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


def check_body(schema: SchemaCheck, body: Any) -> None:
    """`BadRequest` naming every field `body` gets wrong against another surface's schema (the Responses API's)."""
    _check(schema, body)


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
        messages=tuple(_turn(m) for m in body.get("messages", ())),
        after=tuple(_turn(m) for m in body.get("after", ())),
        options=_options(body, TOOL_FIELDS),
    )


def parse_test_request(body: Any) -> tuple[str, str]:
    """The context and tenant of a test run's body, or `BadRequest` naming the field."""
    _check(_test_check, body)
    return body["context"], body.get("tenant_id", "")


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


def parse_openai_request(body: Any) -> ChatRequest:
    """An OpenAI chat-completion body as a `ChatRequest`: `model` is the context, the last user message the input.

    The input's text is `user_input` for the template (unless `data` sets it) and the memory query (unless
    `query` is given), its other parts (images) go with the prompt; the messages before it are the history,
    those after it (tool calls and results, a prefill) follow the input, each in order.
    Unknown fields are ignored, as OpenAI-compatible servers do.
    """
    _check(_openai_check, body)
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


def check_payload(chat_request: ChatRequest, settings: Settings) -> None:
    """Raise when `query` or `data` exceeds the configured depth, item count or string length."""
    if len(chat_request.query) > settings.max_string_chars:
        # The contract gives `query` this maxLength, so a longer one breaks the schema: a 400, as the contract says.
        message = f"query: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars} characters"
        raise BadRequest(message, code="invalid_request", param="query")
    _check_messages(
        (*chat_request.messages, *chat_request.after) if chat_request.after else chat_request.messages, settings
    )
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
    """Raise when the conversation has too many messages, or one or all of them too many characters (text, image
    URLs and tool call arguments count)."""
    if len(messages) > settings.max_messages:
        raise PayloadTooLarge(
            f"messages: more than CMP_MAX_MESSAGES={settings.max_messages} messages", param="messages"
        )
    total = 0
    for i, message in enumerate(messages):
        content, tool_calls = message["content"], message.get("tool_calls")
        size = len(content) if isinstance(content, str) and not tool_calls else _size(content, tool_calls)
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


def _size(content: str | list[dict[str, Any]] | None, tool_calls: list[dict[str, Any]] | None) -> int:
    """The characters of a turn that is not plain text: its parts' text and URLs, its tool calls."""
    if isinstance(content, str):
        return len(content) + _size(None, tool_calls)
    size = 0
    for part in content or ():
        size += len(part["text"]) if part["type"] == "text" else len(part["image_url"]["url"])
    for call in tool_calls or ():
        size += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return size

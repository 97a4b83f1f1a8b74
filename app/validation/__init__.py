"""Validation of chat requests: types and patterns (JSON Schema), then what a valid body may cost.

Both surfaces end here: `/api/v1/chat` bodies (`parse_chat_request`) and OpenAI chat-completion
bodies (`parse_openai_request`), which become the same `ChatRequest`. One module per concern: `fields` (what
both share: names, messages, tools and structured output, OpenAI's other fields), `schema` (the compiled
checks, their messages, and `local_validator` for schemas someone else wrote), `chat` (the native request and
`ChatRequest`), `openai_chat` (the OpenAI request), `payload` (what a valid body may cost).
"""

from app.validation.chat import (
    CHAT_REQUEST_SCHEMA,
    TEST_REQUEST_SCHEMA,
    ChatRequest,
    parse_chat_request,
    parse_test_request,
)
from app.validation.fields import (
    MESSAGE_SCHEMA,
    OPENAI_FIELDS,
    OPTIONAL_NAME_PATTERN,
    TOOL_FIELDS,
    content_text,
)
from app.validation.openai_chat import OPENAI_CHAT_SCHEMA, RUNTIME_FIELDS, parse_openai_request
from app.validation.payload import check_payload
from app.validation.schema import SchemaCheck, check_body, local_validator, unquoted

__all__ = [
    "CHAT_REQUEST_SCHEMA",
    "MESSAGE_SCHEMA",
    "OPENAI_CHAT_SCHEMA",
    "OPENAI_FIELDS",
    "OPTIONAL_NAME_PATTERN",
    "RUNTIME_FIELDS",
    "TEST_REQUEST_SCHEMA",
    "TOOL_FIELDS",
    "ChatRequest",
    "SchemaCheck",
    "check_body",
    "check_payload",
    "content_text",
    "local_validator",
    "parse_chat_request",
    "parse_openai_request",
    "parse_test_request",
    "unquoted",
]

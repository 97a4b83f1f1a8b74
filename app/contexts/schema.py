"""The JSON Schema of a context file, section by section (tools, guardrails, model, cache, testing).

What a schema cannot say (names used twice, a tool URL's arguments, the model chain against its ceilings) is
`app.contexts.checks`; finding and loading the files is `app.contexts.store`.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from app.names import MAX_TOP_K, NAME_PATTERN

# The guardrails a context can set and the personal data types they know (`app.guardrails` enforces them).
GUARDRAILS = ("pii", "prompt_injection", "require_citation", "deny_output")
PII_ENTITIES = ("CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "US_SSN")

DEFAULT_DRIFT_THRESHOLD = 0.85
DEFAULT_TEXT_DRIFT_THRESHOLD = 0.8

_STRINGS = {"type": "array", "items": {"type": "string"}}
_RATIO = {"type": "number", "minimum": 0, "maximum": 1}


def _one_or_more(item: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


# A test case of `testing.cases` (`ctx test`): what it sends through the chat pipeline, what it expects
# of the answer, and the options of those expectations. Unknown keys are errors, so a misspelt assertion
# cannot pass silently.
CASE_REQUEST_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1},
    "description": {"type": "string"},
    "mode": {"enum": ["prompt", "answer", "model"]},
    "input": {"type": "string"},
    "data": {"type": "object"},
    "query": {"type": "string"},
    "top_k": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_K},
    "tenant_id": {"type": "string", "pattern": NAME_PATTERN},
    "component": {"type": "string", "pattern": NAME_PATTERN},
    "prompt_file": {"type": "string", "pattern": NAME_PATTERN},
    "messages": {"type": "array", "items": {"type": "object"}},
}
CASE_ASSERTIONS: dict[str, Any] = {
    "expect_contains": _one_or_more({"type": "string"}),
    "expect_not_contains": _one_or_more({"type": "string"}),
    "expect_regex": _one_or_more({"type": "string", "format": "regex"}),
    "expect_sources": _one_or_more({"type": "string", "minLength": 1}),
    "max_latency_ms": {"type": "number", "exclusiveMinimum": 0},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    # The value must itself be a JSON Schema (checked against the 2020-12 meta-schema, shipped offline).
    "expect_json_schema": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
    "similar_to": {"type": "string", "minLength": 1},
    # The case is refused by this guardrail / its personal data of this type is replaced (docs/security.md).
    "expect_blocked": {"enum": list(GUARDRAILS)},
    "expect_redacted": _one_or_more({"enum": list(PII_ENTITIES)}),
    # The context tools the answer called (by name, in any order, each at least once), or that it called none.
    "expect_tool_calls": _one_or_more({"type": "string", "minLength": 1}),
    "expect_no_tool_calls": {"const": True},
}
CASE_OPTIONS: dict[str, Any] = {"ignore_case": {"type": "boolean"}, "min_similarity": _RATIO}
TESTING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "drift_threshold": _RATIO,
        "text_drift_threshold": _RATIO,
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {**CASE_REQUEST_FIELDS, **CASE_ASSERTIONS, **CASE_OPTIONS},
                "dependentRequired": {"min_similarity": ["similar_to"]},
            },
        },
    },
}
# Tools (`tools:`): a function the runtime calls over HTTP, every tool of an MCP server, or a builtin. A tool's
# name is what the model calls it by, so it follows OpenAI's rule for function names.
BUILTIN_TOOLS = ("memory_search",)
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TOOL_TIMEOUT = 10.0
DEFAULT_MAX_TOOL_STEPS = 5
_TOOL_NAME = {"type": "string", "pattern": TOOL_NAME_PATTERN}
_TOOL_URL = {"type": "string", "pattern": r"^https?://[^/?#\s]+(/[^\s#]*)?$"}
_TOOL_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}
_TOOL_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 300}
HTTP_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "http"],
    "properties": {
        "name": _TOOL_NAME,
        "description": {"type": "string"},
        # The arguments' JSON Schema, as the model is offered it and as its calls are checked against.
        "parameters": {"$ref": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
        "http": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "method": {"enum": list(HTTP_METHODS)},
                "url": _TOOL_URL,
                "headers": _TOOL_HEADERS,
                "timeout": _TOOL_TIMEOUT,
            },
        },
    },
}
MCP_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mcp"],
    "properties": {
        "mcp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": _TOOL_URL,
                "tools": {"type": "array", "items": _TOOL_NAME, "minItems": 1},
                "headers": _TOOL_HEADERS,
                "timeout": _TOOL_TIMEOUT,
            },
        }
    },
}
BUILTIN_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["builtin"],
    "properties": {"builtin": {"enum": list(BUILTIN_TOOLS)}, "description": {"type": "string"}},
}
TOOL_KINDS = {"http": HTTP_TOOL_SCHEMA, "mcp": MCP_TOOL_SCHEMA, "builtin": BUILTIN_TOOL_SCHEMA}
TOOL_SCHEMA: dict[str, Any] = {
    "type": ["object", "string"],
    # Each kind is checked by its own schema, picked by its key, so an error names the field at fault; an
    # object with none of the keys is reported by `checks.check_tools`.
    "allOf": [
        {"if": {"type": "string"}, "then": {"enum": list(BUILTIN_TOOLS)}},
        *({"if": {"type": "object", "required": [kind]}, "then": schema} for kind, schema in TOOL_KINDS.items()),
    ],
}

# A context's model chain (`app.routing.chain`): its model, the fallbacks tried in order, sampling defaults.
_MODEL_ID = {"type": "string", "minLength": 1, "maxLength": 300, "pattern": r"^[^\s]+$"}
_MODEL_ENDPOINT: dict[str, Any] = {
    "endpoint": {"type": "string", "pattern": r"^https?://[^\s/?#]+(/[^\s?#]*)?$"},
    "token_env": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    "api": {"enum": ["text-generation", "chat-completion", "auto"]},
}
# A model id on HF_ENDPOINT, or one on an endpoint of its own (if/then/else, so errors name the field at fault).
_MODEL_ENTRY = {
    "type": ["string", "object"],
    "if": {"type": "string"},
    "then": _MODEL_ID,
    "else": {
        "additionalProperties": False,
        "required": ["id"],
        "properties": {"id": _MODEL_ID, **_MODEL_ENDPOINT},
        "dependentRequired": {"token_env": ["endpoint"], "api": ["endpoint"]},
    },
}
_SAMPLING: dict[str, Any] = {
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
    "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
}
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "properties": {
        "id": _MODEL_ID,
        **_MODEL_ENDPOINT,
        "fallbacks": {"type": "array", "items": _MODEL_ENTRY, "maxItems": 16},
        "params": {"type": "object", "additionalProperties": False, "properties": _SAMPLING},
    },
    "dependentRequired": {"token_env": ["endpoint"], "api": ["endpoint"]},
}
# The response cache (docs/cache.md): seconds an answer is reused, the cosine of a similar question's reuse.
CACHE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ttl": {"type": "number", "minimum": 0, "maximum": 31536000},
        "semantic": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "max_temperature": {"type": "number", "minimum": 0, "maximum": 2},
    },
}
CONTEXT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "version": {"type": ["string", "number"]},
        "description": {"type": "string"},
        "extends": {"type": "string", "minLength": 1},
        "include": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "role": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"persona": {"type": "string"}, "capabilities": _STRINGS, "limitations": _STRINGS},
        },
        "tools": {"type": "array", "items": TOOL_SCHEMA},
        "guardrails": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tone": {"type": "string"},
                "format": {"type": "string"},
                **_SAMPLING,
                # Guardrails that act (docs/security.md); each unset one is the environment's default.
                # YAML reads a bare `off` as false: both mean off.
                "pii": {"enum": ["off", False, "redact", "block"]},
                "pii_entities": {"type": "array", "items": {"enum": list(PII_ENTITIES)}, "minItems": 1},
                "prompt_injection": {"enum": ["off", False, "flag", "block"]},
                "require_citation": {"type": "boolean"},
                "deny_output": {"type": "array", "items": {"type": "string", "minLength": 1, "format": "regex"}},
                # Model calls in one request's tool loop; past them the request fails (`tool_steps_exceeded`).
                "max_tool_steps": {"type": "integer", "minimum": 1, "maximum": 20},
                # The most a client may ask for on the OpenAI surface; without it, up to the bounds above.
                "client_max": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "memory": {"type": "object"},
        "model": MODEL_SCHEMA,
        "testing": TESTING_SCHEMA,
        "cache": CACHE_SCHEMA,
    },
}
file_validator = Draft202012Validator(CONTEXT_SCHEMA, format_checker=FormatChecker())
resolved_validator = Draft202012Validator({"type": "object", "required": ["name"]})

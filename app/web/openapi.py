"""`GET /openapi.json`: the API's OpenAPI 3.1 contract, built from the schema the validator uses.

The chat request schema is `validation.CHAT_REQUEST_SCHEMA` itself (plus the
configured length limit of `query`), so the contract and the validator cannot
drift apart. Security is declared only when `CMP_AUTH_ENABLED` is on, so the
document describes the running app; tests check it against the app's routes
and fuzz the app with it (schemathesis).
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, jsonify

from app.config import Settings
from app.keys import SCOPE_CHAT, SCOPE_METRICS, SCOPE_TEST, SCOPE_USAGE
from app.lock import runtime_version
from app.names import NAME_PATTERN
from app.usage.reports import BY, DEFAULT_SINCE
from app.validation import CHAT_REQUEST_SCHEMA, OPENAI_CHAT_SCHEMA, TEST_REQUEST_SCHEMA
from app.web.responses_wire import RESPONSES_SCHEMA
from app.web.runtime import get_runtime

bp = Blueprint("openapi", __name__)

_ERROR_STATUSES = {
    "400": "The body is not JSON, breaks the schema (a `query` longer than CMP_MAX_STRING_CHARS too), or `data` "
    "nests deeper than CMP_MAX_DATA_DEPTH; a field the wire format cannot carry (`unsupported_by_endpoint`, e.g. "
    "`tools` with HF_API=text-generation) or the model's provider refuses (`unsupported_by_model`, with `param`).",
    "401": "No API key, or one that is not valid (only with CMP_AUTH_ENABLED).",
    "403": "The key lacks the route's scope or may not act for the requested tenant; or, on the chat routes, the "
    "context's prompt_injection guardrail refused the request (`guardrail_blocked`).",
    "404": "The context (model), component or prompt file does not exist, or the key's tenant may not use it.",
    "413": "The body exceeds CMP_MAX_BODY_BYTES, or a string or the number of values in `data` exceed "
    "CMP_MAX_STRING_CHARS or CMP_MAX_DATA_ITEMS, or the history exceeds CMP_MAX_MESSAGES or CMP_MAX_HISTORY_CHARS.",
    "415": "The body is not sent as `application/json`.",
    "422": "The template needs a variable that `data` does not provide, or the render goes past CMP_MAX_PROMPT_CHARS "
    "or CMP_RENDER_TIMEOUT; or a guardrail refused it (`guardrail_blocked`: personal data under `pii: block`; "
    "`citation_missing`: the answer cites no retrieved source).",
    "424": "The context requires citations (`require_citation`) and memory found no source for the request "
    "(`no_sources`).",
    "429": "The key (or client address) exceeded CMP_RATE_LIMIT, or a budget of CMP_BUDGETS is spent "
    "(`budget_exceeded`, with `x-should-retry: false`); `Retry-After` says when to retry.",
    "500": "The project is broken (invalid context, template error, unusable memory store) or the runtime failed.",
    "502": "Hugging Face failed or answered something unusable (codes `hf_*`; `hf_stream_interrupted` for a stream "
    "cut mid-answer), or the answer does not match `response_format` after one more try "
    "(`structured_output_invalid`), or a guardrail withheld the answer (`guardrail_blocked`: personal data under "
    "`pii: block`, a `deny_output` match). `x-should-retry: false` when the runtime has retried already; "
    "`Retry-After` as the upstream's 429 or 503 sent it.",
    "503": "The request has a `query` and the memory database (CMP_MEMORY_URL) is down, unreachable or too slow "
    "(`memory_unavailable`); requests without a query still work. Or every model of the context's chain was "
    "passed over without a call (`models_unavailable`: circuits open, providers down). Or every request thread "
    "stayed busy for GUNICORN_QUEUE_TIMEOUT (`service_unavailable`, with `Retry-After`). Or the prompt injection "
    "classifier did not answer and CMP_PI_MODEL_FAILURE=closed (`guardrail_unavailable`).",
    "504": "Hugging Face did not answer within HF_TIMEOUT.",
}
_REQUEST_ID = {
    "description": "The request's id: the caller's `X-Request-ID` when safe, else a new one.",
    "schema": {"type": "string"},
}


_TOOL_CALL_DELTA = {
    "type": "object",
    "required": ["index", "function"],
    "description": "A call's first piece has `id`, `type` and `function.name`; later ones append `function.arguments`",
    "properties": {
        "index": {"type": "integer"},
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
        },
    },
}


def _json(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID, **headers},
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*statuses: str, shape: str = "Error") -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{shape}"}
    responses = {status: _json(schema, _ERROR_STATUSES[status]) for status in statuses}
    if "401" in responses:
        responses["401"]["headers"]["WWW-Authenticate"] = {
            "description": '`Bearer realm="contexis"`, with `error="invalid_token"` for a wrong key.',
            "schema": {"type": "string"},
            "required": True,
        }
    for status in ("502", "504"):
        if status in responses:
            responses[status]["headers"]["x-should-retry"] = {
                "description": "`false`: the runtime retried already (or retrying cannot help); do not retry.",
                "schema": {"type": "string", "enum": ["false"]},
            }
    if "502" in responses:
        responses["502"]["headers"]["Retry-After"] = {
            "description": "The upstream's own `Retry-After` on a 429 or 503 (seconds or an HTTP date).",
            "schema": {"type": "string"},
        }
    if "429" in responses:
        responses["429"]["headers"]["Retry-After"] = {
            "description": "Seconds until the limit lets this key or address through again.",
            "schema": {"type": "integer", "minimum": 1},
            "required": True,
        }
    return responses


_MODEL_HEADER = {
    "description": "The entry of the context's `model:` chain that answered (docs/models.md); absent for a context "
    "without one.",
    "schema": {"type": "string"},
}

_CACHE_HEADER = {
    "description": "What the response cache did (docs/cache.md): `hit`, `semantic-hit`, `miss` (answered by the model, "
    "`Cache-Control: no-cache` included) or `bypass` (never cached); absent for a context without `cache:`.",
    "schema": {"type": "string", "enum": ["hit", "semantic-hit", "miss", "bypass"]},
}


def _chat_answer() -> dict[str, Any]:
    answer = _json({"$ref": "#/components/schemas/ChatResponse"}, "The model's answer, or the prompt without a model")
    answer["headers"]["X-Contexis-Degraded"] = {
        "description": "`memory-keywords-only` when the query's embedding failed or was too slow "
        "(HF_EMBED_QUERY_TIMEOUT) and memory was searched by keywords alone.",
        "schema": {"type": "string", "enum": ["memory-keywords-only"]},
    }
    answer["headers"]["X-Contexis-Model"] = _MODEL_HEADER
    answer["headers"]["X-Contexis-Cache"] = _CACHE_HEADER
    # As schemathesis reads it, the schema of an event stream describes each event.
    answer["content"]["text/event-stream"] = {
        "schema": {
            "description": 'With `"stream": true`, one event per text delta, then a done event; a failure after '
            "the first event ends the stream with `event: error`.",
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"enum": ["message", "error"]},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            {
                                "type": "object",
                                "required": ["delta"],
                                "properties": {"delta": {"type": "string"}},
                            },
                            {
                                "type": "object",
                                "description": "A piece of a tool call, framed as OpenAI's `delta.tool_calls`",
                                "required": ["tool_calls"],
                                "properties": {"tool_calls": {"type": "array", "items": _TOOL_CALL_DELTA}},
                            },
                            {
                                "type": "object",
                                "required": ["done", "model", "sources", "request_id"],
                                "properties": {
                                    "done": {"const": True},
                                    "model": {"type": ["string", "null"]},
                                    "usage": {"$ref": "#/components/schemas/Usage"},
                                    "sources": {"$ref": "#/components/schemas/Sources"},
                                    "request_id": {"type": "string"},
                                    "tool_calls": {"$ref": "#/components/schemas/ToolCalls"},
                                    "finish_reason": {"type": "string"},
                                },
                            },
                            {"$ref": "#/components/schemas/Error"},
                        ]
                    },
                },
            },
        }
    }
    return answer


def _completion_answer() -> dict[str, Any]:
    answer = _json({"$ref": "#/components/schemas/ChatCompletion"}, "A `chat.completion`, with `sources`")
    answer["headers"]["X-Contexis-Model"] = _MODEL_HEADER
    answer["headers"]["X-Contexis-Cache"] = _CACHE_HEADER
    answer["content"]["text/event-stream"] = {
        "schema": {
            "description": 'With `"stream": true`, `chat.completion.chunk` events (the first with `sources`; text, '
            "tool call pieces and logprobs as OpenAI frames them, choices by `index`), a usage "
            "chunk with `stream_options.include_usage`, then `data: [DONE]`; a failure after the first chunk ends "
            'the stream with a `{"error": ...}` chunk, which OpenAI\'s SDKs raise as an APIError (also when the '
            "answer does not match `response_format`, checked at the end).",
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
        }
    }
    return answer


def _openai_schemas(max_string_chars: int) -> dict[str, Any]:
    """The OpenAI surface's own shapes: its request (the validator's schema), answers and errors."""
    request_schema = copy.deepcopy(OPENAI_CHAT_SCHEMA)
    request_schema.pop("$schema", None)
    request_schema["properties"]["query"]["maxLength"] = max_string_chars
    usage = {
        "type": ["object", "null"],
        "description": "Token counts; a count the endpoint did not report is 0, null when it reported none",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
    }
    return {
        "ChatCompletionRequest": request_schema,
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "created", "model", "choices", "usage", "sources"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string", "description": "The context that answered"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "message", "finish_reason"],
                        "properties": {
                            "index": {"type": "integer"},
                            "message": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"const": "assistant"},
                                    "content": {"type": ["string", "null"], "description": "null beside tool_calls"},
                                    "tool_calls": {"$ref": "#/components/schemas/ToolCalls"},
                                },
                            },
                            "logprobs": {"type": ["object", "null"], "description": "As the upstream reported it"},
                            "finish_reason": {"type": "string", "description": "stop, length or tool_calls"},
                        },
                    },
                },
                "usage": usage,
                "sources": {"$ref": "#/components/schemas/Sources"},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string", "description": "A context name"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string", "description": "The tenant of an override, else contexis"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": "string"},
                    },
                }
            },
        },
    }


_RENDER_RESPONSE = {
    "type": "object",
    "required": ["prompt", "context", "tenant_id", "sources", "mode", "degraded", "models", "request_id"],
    "properties": {
        "prompt": {"type": "string", "description": "The rendered prompt, as `/api/v1/chat` would send it"},
        "context": {"type": "string"},
        "tenant_id": {"type": "string", "description": "The tenant it was rendered for (a bound key's own)"},
        "sources": {"$ref": "#/components/schemas/Sources"},
        "mode": {"type": "string", "description": "How memory searched: hybrid, vector or keyword"},
        "degraded": {"type": ["string", "null"], "description": "Why memory searched keywords only, when it had to"},
        "models": {
            "type": "array",
            "description": "The models a chat request would ask, in the order they are tried; [] without a model",
            "items": {
                "type": "object",
                "required": ["id", "endpoint"],
                "properties": {"id": {"type": "string"}, "endpoint": {"type": "string"}},
            },
        },
        "request_id": {"type": "string"},
    },
}

_TEST_REPORT = {
    "type": "object",
    "description": "As `ctx test --json` writes it (docs/playground.md)",
    "required": ["summary", "cases", "request_id"],
    "properties": {
        "summary": {
            "type": "object",
            "required": ["cases", "passed", "failed", "errors", "skipped", "seconds"],
            "properties": {
                **{name: {"type": "integer"} for name in ("cases", "passed", "failed", "errors", "skipped")},
                "seconds": {"type": "number"},
            },
        },
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["context", "case", "mode", "status", "failures", "skipped", "error"],
                "properties": {
                    "context": {"type": "string"},
                    "case": {"type": "string"},
                    "mode": {"type": "string", "enum": ["prompt", "answer", "model"]},
                    "status": {"type": "string", "enum": ["passed", "failed", "error", "skipped"]},
                    "failures": {
                        "type": "array",
                        "description": "Each assertion that did not hold, with why",
                        "items": {
                            "type": "object",
                            "required": ["assertion", "message"],
                            "properties": {"assertion": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                    "skipped": {"type": "array", "items": {"type": "string"}},
                    "error": {"type": ["string", "null"]},
                    "answer": {"type": ["string", "null"]},
                    "latency_ms": {"type": ["number", "null"]},
                },
            },
        },
        "request_id": {"type": "string"},
    },
}


def _render_path(security: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "Render: the prompt and memory matches a chat request would use, without calling the model",
            "operationId": "render",
            **security,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
            },
            "responses": {
                "200": _json({"$ref": "#/components/schemas/RenderResponse"}, "The rendered prompt and its sources"),
                **_errors(*errors),
            },
        }
    }


def _playground_paths(security: dict[str, Any], errors: list[str], limited: bool) -> dict[str, Any]:
    """The page, its two files and the test run: with CMP_PLAYGROUND only."""

    def static(summary: str, mimetype: str) -> dict[str, Any]:
        served = {"description": "OK", "content": {mimetype: {"schema": {"type": "string"}}}}
        served["headers"] = {"Content-Security-Policy": {"schema": {"type": "string"}, "required": True}}
        return {
            "get": {
                "summary": summary,
                "operationId": "playground_" + summary.split()[0].lower(),
                "responses": {"200": served, **_errors(*(["429"] if limited else []), "500")},
            }
        }

    return {
        "/playground": static("Page: the playground (docs/playground.md)", "text/html"),
        "/playground/playground.js": static("Script of the playground's page", "text/javascript"),
        "/playground/playground.css": static("Style sheet of the playground's page", "text/css"),
        "/api/v1/test": {
            "post": {
                "summary": "Test: run a context's `testing` cases, a verdict per case (CMP_PLAYGROUND only)",
                "operationId": "test",
                **security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TestRequest"}}},
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/TestReport"}, "Every case's verdict"),
                    **_errors(*errors),
                },
            }
        },
    }


_RESPONSE_ID = {
    "name": "response_id",
    "in": "path",
    "required": True,
    "description": "A stored response's id (`resp_...`)",
    "schema": {"type": "string"},
}
_TENANT_QUERY = {
    "name": "tenant_id",
    "in": "query",
    "required": False,
    "description": "The tenant whose response it is (by default a tenant-bound key's own)",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}


def _responses_paths(
    secured: dict[str, Any], chat_errors: list[str], gate: list[str], max_string_chars: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Responses API's paths and schemas: its request (the validator's schema), the response object, errors."""
    request_schema = copy.deepcopy(RESPONSES_SCHEMA)
    request_schema.pop("$schema", None)
    request_schema["properties"]["query"]["maxLength"] = max_string_chars
    created = _json({"$ref": "#/components/schemas/Response"}, "A `response` object, with `sources`")
    created["content"]["text/event-stream"] = {
        "schema": {
            "description": 'With `"stream": true`, the Responses API\'s events (`event:` names them, `data` carries '
            "`type` and `sequence_number`): `response.created`, `response.in_progress`, per output item "
            "`response.output_item.added`, its content events and `response.output_item.done`, then "
            "`response.completed` (`response.incomplete` when cut at max_output_tokens); a failure after the first "
            "event ends the stream with `response.failed`.",
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        }
    }
    errors = _errors(*chat_errors, shape="OpenAIError")
    errors["404"]["description"] += " Or `previous_response_id`, an `item_reference`, is not the tenant's."
    errors["503"]["description"] += " Or the response store (CMP_USAGE_URL, CMP_MEMORY_URL or SQLite) is."
    stored_errors = _errors("400", *gate, "404", "500", "503", shape="OpenAIError")
    stored_errors["404"]["description"] = "The tenant has no unexpired stored response by that id."
    stored_errors["503"]["description"] = "The response store is down, unreachable or too slow."
    parameters = [_RESPONSE_ID, _TENANT_QUERY]
    paths = {
        "/v1/responses": {
            "post": {
                "summary": "OpenAI Responses: `model` names a context, the last user message of `input` is the input",
                "operationId": "create_response",
                **secured,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseRequest"}}},
                },
                "responses": {"200": created, **errors},
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "A stored response of the caller's tenant",
                "operationId": "get_response",
                **secured,
                "parameters": parameters,
                "responses": {"200": _json({"$ref": "#/components/schemas/Response"}, "As answered"), **stored_errors},
            },
            "delete": {
                "summary": "Delete a stored response of the caller's tenant",
                "operationId": "delete_response",
                **secured,
                "parameters": parameters,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "object", "deleted"],
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"const": "response.deleted"},
                                "deleted": {"const": True},
                            },
                        },
                        "Deleted",
                    ),
                    **stored_errors,
                },
            },
        },
    }
    item = {"type": "object", "required": ["type", "id"], "properties": {"type": {"type": "string"}}}
    schemas = {
        "ResponseRequest": request_schema,
        "Response": {
            "type": "object",
            "required": ["id", "object", "created_at", "status", "model", "output", "output_text", "usage", "error"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "created_at": {"type": "integer"},
                "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                "model": {"type": "string", "description": "The context that answered"},
                "output": {"type": "array", "items": item, "description": "`message` and `function_call` items"},
                "output_text": {"type": "string", "description": "The text of every message, joined"},
                "usage": {
                    "type": ["object", "null"],
                    "required": ["input_tokens", "output_tokens", "total_tokens"],
                    "properties": {
                        name: {"type": "integer"} for name in ("input_tokens", "output_tokens", "total_tokens")
                    },
                },
                "error": {"type": ["object", "null"]},
                "previous_response_id": {"type": ["string", "null"]},
                "store": {"type": "boolean"},
                "sources": {"$ref": "#/components/schemas/Sources"},
            },
        },
    }
    return paths, schemas


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}  # fmt: skip


def _usage_report_schema() -> dict[str, Any]:
    counts = {
        name: {"type": "integer", "minimum": 0}
        for name in (
            "requests",
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "unpriced_calls",
            "estimated_calls",
            "errors",
        )
    }
    group = {
        "type": "object",
        "required": ["group", *counts, "cost_usd"],
        "properties": {
            "group": {"type": "string"},
            **counts,
            "cost_usd": {"type": ["number", "null"], "description": "null when no call of the group had a price"},
        },
    }
    total = {**group, "required": [*counts, "cost_usd"]}
    return {
        "type": "object",
        "required": ["since", "until", "by", "tenant", "groups", "total"],
        "properties": {
            "since": {"type": "string"},
            "until": {"type": "string"},
            "by": {"type": "string", "enum": list(BY)},
            "tenant": {"type": ["string", "null"]},
            "groups": {"type": "array", "items": group},
            "total": total,
        },
    }


def build_document(settings: Settings, version: str) -> dict[str, Any]:
    """The contract of an app built with `settings`."""
    auth = settings.auth_enabled
    limited = bool(settings.rate_limit)
    request_schema = copy.deepcopy(CHAT_REQUEST_SCHEMA)
    request_schema.pop("$schema", None)
    request_schema["properties"]["query"]["maxLength"] = settings.max_string_chars
    request_schema["properties"]["data"]["description"] = (
        f"Template variables: at most {settings.max_data_depth} levels deep and {settings.max_data_items} values, "
        f"strings of at most {settings.max_string_chars} characters."
    )
    gate = (["401", "403"] if auth else []) + (["429"] if limited else [])
    spent = ["429"] if settings.budgets_file and not limited else []
    # 403 on the chat routes with auth off too: the prompt_injection guardrail's refusal.
    chat_gate = [*(["401"] if auth else []), "403", *(["429"] if limited else []), *spent]
    chat_errors = ["400", *chat_gate, "404", "413", "415", "422", "424", "500", "502", "503", "504"]

    def secured(scope: str) -> dict[str, Any]:
        return {"security": [{"bearerAuth": [scope]}]} if auth else {}

    def public(summary: str, schema: dict[str, Any], **extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "operationId": summary.split(":")[0].lower().replace(" ", "_"),
                "responses": {"200": _json(schema, "OK"), **extra, **_errors(*(["429"] if limited else []), "500")},
            }
        }

    status_ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    responses_paths, responses_schemas = _responses_paths(
        secured(SCOPE_CHAT), chat_errors, gate, settings.max_string_chars
    )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Contexis Runtime",
            "version": version,
            "description": "Contexts, prompt templates and memory served over HTTP, with Hugging Face inference.",
        },
        "paths": {
            "/api/v1/chat": {
                "post": {
                    "summary": "Render a context's prompt and, when a model is configured, answer it",
                    "operationId": "chat",
                    **secured(SCOPE_CHAT),
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
                    },
                    "responses": {
                        "200": _chat_answer(),
                        **_errors(*chat_errors),
                    },
                }
            },
            "/v1/chat/completions": {
                "post": {
                    "summary": "OpenAI chat completions: `model` names a context, the last user message is the input",
                    "operationId": "chat_completions",
                    **secured(SCOPE_CHAT),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
                        },
                    },
                    "responses": {"200": _completion_answer(), **_errors(*chat_errors, shape="OpenAIError")},
                }
            },
            **responses_paths,
            "/v1/models": {
                "get": {
                    "summary": "OpenAI models: the contexts the caller's tenant may use",
                    "operationId": "models",
                    **secured(SCOPE_CHAT),
                    "parameters": [
                        {
                            "name": "tenant_id",
                            "in": "query",
                            "required": False,
                            "description": "The tenant whose overrides to list (by default a tenant-bound key's own)",
                            "schema": {"type": "string", "pattern": NAME_PATTERN},
                        }
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/ModelList"}, "The contexts, as OpenAI's list"),
                        **_errors("400", *gate, "500", shape="OpenAIError"),
                    },
                }
            },
            "/v1/models/{model_id}": {
                "get": {
                    "summary": "OpenAI model: one context, when the caller's tenant may use it",
                    "operationId": "model",
                    **secured(SCOPE_CHAT),
                    "parameters": [
                        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {
                            "name": "tenant_id",
                            "in": "query",
                            "required": False,
                            "description": "The tenant whose overrides apply (by default a tenant-bound key's own)",
                            "schema": {"type": "string", "pattern": NAME_PATTERN},
                        },
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Model"}, "The context, as OpenAI's model"),
                        **_errors("400", *gate, "404", "500", shape="OpenAIError"),
                    },
                }
            },
            "/api/v1/usage": {
                "get": {
                    "summary": "Usage: requests, calls, tokens, cost and errors per group, from the ledger",
                    "operationId": "usage",
                    **secured(SCOPE_USAGE),
                    "parameters": [
                        _query("since", f"From when: 7d, 12h, 30m ago, or a date or time (default {DEFAULT_SINCE})"),
                        _query("until", "Until when, as `since` (default now)"),
                        _query("by", "How to group the calls", {"type": "string", "enum": list(BY)}),
                        _query(
                            "tenant",
                            "Only this tenant (a tenant-bound key: its own, always)",
                            {"type": "string", "pattern": NAME_PATTERN},
                        ),
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/UsageReport"}, "The report"),
                        **_errors("400", *gate, "500"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "operationId": "healthz",
                    "responses": {"200": _json(status_ok, "Alive"), **_errors("500")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the project root is readable, every context is valid and memory answers",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json(status_ok, "Ready"),
                        "503": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "unavailable"}, "reason": {"type": "string"}},
                            },
                            "Not ready: the reason names the broken files or the unavailable memory backend; with"
                            " CMP_AUTH_ENABLED it is given to a key with metrics:read only",
                        ),
                        **_errors("500"),
                    },
                }
            },
            "/version": public(
                "Version: what is running",
                {
                    "type": "object",
                    "required": ["name", "version", "model", "hf_endpoint", "hf_api", "hf_url", "lock"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "model": {"type": ["string", "null"]},
                        "hf_endpoint": {"type": ["string", "null"]},
                        "hf_api": {"type": ["string", "null"], "enum": ["text-generation", "chat-completion", None]},
                        "hf_url": {"type": ["string", "null"]},
                        "lock": {
                            "type": ["string", "null"],
                            "description": "sha256 of the project's context.lock.json when the server started",
                        },
                        "chains": {
                            "description": "Each context's models in the order they are tried",
                            "type": "object",
                            "additionalProperties": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["id", "endpoint"],
                                    "properties": {"id": {"type": "string"}, "endpoint": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics" + (" (scope metrics:read)" if auth else ""),
                    "operationId": "metrics",
                    **secured(SCOPE_METRICS),
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(*(["401", "403"] if auth else []), "500"),
                    },
                }
            },
            "/openapi.json": public("OpenAPI: this document", {"type": "object", "required": ["openapi", "paths"]}),
        },
        "components": {
            "schemas": {
                **_openai_schemas(settings.max_string_chars),
                **responses_schemas,
                "ChatRequest": request_schema,
                "ChatResponse": {
                    "type": "object",
                    "required": ["rendered", "model", "sources", "request_id"],
                    "properties": {
                        "rendered": {"type": "string", "description": "The model's text, or the rendered prompt"},
                        "model": {"type": ["string", "null"], "description": "HF_MODEL_ID, null without a model"},
                        "sources": {"$ref": "#/components/schemas/Sources"},
                        "usage": {"$ref": "#/components/schemas/Usage"},
                        "request_id": {"type": "string"},
                        "tool_calls": {"$ref": "#/components/schemas/ToolCalls"},
                        "finish_reason": {"type": "string", "description": "`tool_calls`, beside them"},
                        "tools": {
                            "type": "array",
                            "description": "The context's own tools the runtime called, as each ended (a context "
                            "with tools only; docs/tools.md)",
                            "items": {
                                "type": "object",
                                "required": ["name", "ok", "ms"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "ok": {"type": "boolean"},
                                    "ms": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
                "ToolCalls": {
                    "type": "array",
                    "description": "The tools the model asks the client to call, OpenAI-shaped",
                    "items": {
                        "type": "object",
                        "required": ["id", "type", "function"],
                        "properties": {
                            "id": {"type": "string"},
                            "type": {"const": "function"},
                            "function": {
                                "type": "object",
                                "required": ["name", "arguments"],
                                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                            },
                        },
                    },
                },
                "Sources": {
                    "type": "array",
                    "description": "The memory matches the prompt was given, best first",
                    "items": {
                        "type": "object",
                        "required": ["id", "source", "score"],
                        "properties": {
                            "id": {"type": "string"},
                            "source": {"type": "string"},
                            "score": {"type": "number"},
                        },
                    },
                },
                "Usage": {
                    "type": "object",
                    "description": "Token counts, when the endpoint reports them",
                    "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}},
                },
                "UsageReport": _usage_report_schema(),
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
        },
    }
    render_errors = ["400", *gate, "404", "413", "415", "422", "500", "503"]
    document["paths"]["/api/v1/render"] = _render_path(secured(SCOPE_CHAT), render_errors)
    document["components"]["schemas"]["RenderResponse"] = _RENDER_RESPONSE
    if settings.playground:
        test_errors = ["400", *gate, "404", "413", "415", "500"]
        document["paths"].update(_playground_paths(secured(SCOPE_TEST), test_errors, limited))
        test_request = copy.deepcopy(TEST_REQUEST_SCHEMA)
        test_request.pop("$schema", None)
        document["components"]["schemas"].update(TestRequest=test_request, TestReport=_TEST_REPORT)
    if auth:
        document["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key from CMP_API_KEYS"}
        }
    return document


@bp.get("/openapi.json")
def document():
    """The contract of this app, as its settings make it."""
    runtime = get_runtime()
    return jsonify(build_document(runtime.settings, runtime_version()))

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
from app.validation import CHAT_REQUEST_SCHEMA, TEST_REQUEST_SCHEMA
from app.web.openapi_chat import (
    RENDER_RESPONSE,
    TEST_REPORT,
    chat_answer,
    playground_paths,
    render_path,
    usage_report_schema,
)
from app.web.openapi_openai import completion_answer, openai_schemas, responses_api
from app.web.openapi_shapes import error_responses, json_response, query_parameter
from app.web.runtime import get_runtime

bp = Blueprint("openapi", __name__)


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
                "responses": {
                    "200": json_response(schema, "OK"),
                    **extra,
                    **error_responses(*(["429"] if limited else []), "500"),
                },
            }
        }

    status_ok = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
    responses_paths, responses_schemas = responses_api(
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
                        "200": chat_answer(),
                        **error_responses(*chat_errors),
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
                    "responses": {"200": completion_answer(), **error_responses(*chat_errors, shape="OpenAIError")},
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
                        "200": json_response(
                            {"$ref": "#/components/schemas/ModelList"}, "The contexts, as OpenAI's list"
                        ),
                        **error_responses("400", *gate, "500", shape="OpenAIError"),
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
                        "200": json_response({"$ref": "#/components/schemas/Model"}, "The context, as OpenAI's model"),
                        **error_responses("400", *gate, "404", "500", shape="OpenAIError"),
                    },
                }
            },
            "/api/v1/usage": {
                "get": {
                    "summary": "Usage: requests, calls, tokens, cost and errors per group, from the ledger",
                    "operationId": "usage",
                    **secured(SCOPE_USAGE),
                    "parameters": [
                        query_parameter(
                            "since", f"From when: 7d, 12h, 30m ago, or a date or time (default {DEFAULT_SINCE})"
                        ),
                        query_parameter("until", "Until when, as `since` (default now)"),
                        query_parameter("by", "How to group the calls", {"type": "string", "enum": list(BY)}),
                        query_parameter(
                            "tenant",
                            "Only this tenant (a tenant-bound key: its own, always)",
                            {"type": "string", "pattern": NAME_PATTERN},
                        ),
                    ],
                    "responses": {
                        "200": json_response({"$ref": "#/components/schemas/UsageReport"}, "The report"),
                        **error_responses("400", *gate, "500"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "operationId": "healthz",
                    "responses": {"200": json_response(status_ok, "Alive"), **error_responses("500")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the project root is readable, every context is valid and memory answers",
                    "operationId": "readyz",
                    "responses": {
                        "200": json_response(status_ok, "Ready"),
                        "503": json_response(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "unavailable"}, "reason": {"type": "string"}},
                            },
                            "Not ready: the reason names the broken files or the unavailable memory backend; with"
                            " CMP_AUTH_ENABLED it is given to a key with metrics:read only",
                        ),
                        **error_responses("500"),
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
                        **error_responses(*(["401", "403"] if auth else []), "500"),
                    },
                }
            },
            "/openapi.json": public("OpenAPI: this document", {"type": "object", "required": ["openapi", "paths"]}),
        },
        "components": {
            "schemas": {
                **openai_schemas(settings.max_string_chars),
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
                "UsageReport": usage_report_schema(),
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
    document["paths"]["/api/v1/render"] = render_path(secured(SCOPE_CHAT), render_errors)
    document["components"]["schemas"]["RenderResponse"] = RENDER_RESPONSE
    if settings.playground:
        test_errors = ["400", *gate, "404", "413", "415", "500"]
        document["paths"].update(playground_paths(secured(SCOPE_TEST), test_errors, limited))
        test_request = copy.deepcopy(TEST_REQUEST_SCHEMA)
        test_request.pop("$schema", None)
        document["components"]["schemas"].update(TestRequest=test_request, TestReport=TEST_REPORT)
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

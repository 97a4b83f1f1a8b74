"""The OpenAPI document's native API: the chat answer, `/api/v1/render`, the playground's routes, usage reports."""

from __future__ import annotations

from typing import Any

from app.usage.reports import BY, COUNTED
from app.web.openapi_shapes import CACHE_HEADER, MODEL_HEADER, TOOL_CALL_DELTA, error_responses, json_response


def chat_answer() -> dict[str, Any]:
    answer = json_response(
        {"$ref": "#/components/schemas/ChatResponse"}, "The model's answer, or the prompt without a model"
    )
    answer["headers"]["X-Contexis-Degraded"] = {
        "description": "`memory-keywords-only` when the query's embedding failed or was too slow "
        "(HF_EMBED_QUERY_TIMEOUT) and memory was searched by keywords alone.",
        "schema": {"type": "string", "enum": ["memory-keywords-only"]},
    }
    answer["headers"]["X-Contexis-Model"] = MODEL_HEADER
    answer["headers"]["X-Contexis-Cache"] = CACHE_HEADER
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
                                "properties": {"tool_calls": {"type": "array", "items": TOOL_CALL_DELTA}},
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


RENDER_RESPONSE = {
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

TEST_REPORT = {
    "type": "object",
    "description": "As `ctx test --json` writes it (docs/playground.md)",
    "required": ["summary", "cut", "cases", "request_id"],
    "properties": {
        "cut": {
            "type": "boolean",
            "description": "The run's deadline (CMP_TEST_DEADLINE) passed: the cases not judged by then are errors",
        },
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


def render_path(security: dict[str, Any], errors: list[str]) -> dict[str, Any]:
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
                "200": json_response(
                    {"$ref": "#/components/schemas/RenderResponse"}, "The rendered prompt and its sources"
                ),
                **error_responses(*errors),
            },
        }
    }


def playground_paths(security: dict[str, Any], errors: list[str], limited: bool) -> dict[str, Any]:
    """The page, its two files and the test run: with CMP_PLAYGROUND only."""

    def static(summary: str, mimetype: str) -> dict[str, Any]:
        served = {"description": "OK", "content": {mimetype: {"schema": {"type": "string"}}}}
        served["headers"] = {"Content-Security-Policy": {"schema": {"type": "string"}, "required": True}}
        return {
            "get": {
                "summary": summary,
                "operationId": "playground_" + summary.split()[0].lower(),
                "responses": {"200": served, **error_responses(*(["429"] if limited else []), "500")},
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
                    "200": json_response({"$ref": "#/components/schemas/TestReport"}, "Every case's verdict"),
                    **error_responses(*errors),
                },
            }
        },
    }


def usage_report_schema() -> dict[str, Any]:
    counts = {name: {"type": "integer", "minimum": 0} for name in COUNTED}
    sums = {
        "cost_usd": {"type": ["number", "null"], "description": "null when no call of the group had a price"},
        "saved_usd": {
            "type": ["number", "null"],
            "description": "what the group's cache hits cost when generated; null when none had a price",
        },
    }
    group = {
        "type": "object",
        "required": ["group", *counts, *sums],
        "properties": {"group": {"type": "string"}, **counts, **sums},
    }
    total = {**group, "required": [*counts, *sums]}
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

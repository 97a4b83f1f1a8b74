"""The OpenAPI document's OpenAI surface: chat completions' schemas and answers, the Responses API's paths."""

from __future__ import annotations

import copy
from typing import Any

from app.names import NAME_PATTERN
from app.validation import OPENAI_CHAT_SCHEMA
from app.web.openapi_shapes import CACHE_HEADER, MODEL_HEADER, error_responses, json_response
from app.web.responses_wire import RESPONSES_SCHEMA


def completion_answer() -> dict[str, Any]:
    answer = json_response({"$ref": "#/components/schemas/ChatCompletion"}, "A `chat.completion`, with `sources`")
    answer["headers"]["X-Contexis-Model"] = MODEL_HEADER
    answer["headers"]["X-Contexis-Cache"] = CACHE_HEADER
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


def openai_schemas(max_string_chars: int) -> dict[str, Any]:
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


def responses_api(
    secured: dict[str, Any], chat_errors: list[str], gate: list[str], max_string_chars: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Responses API's paths and schemas: its request (the validator's schema), the response object, errors."""
    request_schema = copy.deepcopy(RESPONSES_SCHEMA)
    request_schema.pop("$schema", None)
    request_schema["properties"]["query"]["maxLength"] = max_string_chars
    created = json_response({"$ref": "#/components/schemas/Response"}, "A `response` object, with `sources`")
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
    errors = error_responses(*chat_errors, shape="OpenAIError")
    errors["404"]["description"] += " Or `previous_response_id`, an `item_reference`, is not the tenant's."
    errors["503"]["description"] += " Or the response store (CMP_USAGE_URL, CMP_MEMORY_URL or SQLite) is."
    stored_errors = error_responses("400", *gate, "404", "500", "503", shape="OpenAIError")
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
                "responses": {
                    "200": json_response({"$ref": "#/components/schemas/Response"}, "As answered"),
                    **stored_errors,
                },
            },
            "delete": {
                "summary": "Delete a stored response of the caller's tenant",
                "operationId": "delete_response",
                **secured,
                "parameters": parameters,
                "responses": {
                    "200": json_response(
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

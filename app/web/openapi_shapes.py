"""The OpenAPI document's shared pieces: a JSON answer with its headers, the error answers by status."""

from __future__ import annotations

from typing import Any

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


TOOL_CALL_DELTA = {
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


def json_response(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": _REQUEST_ID, **headers},
        "content": {"application/json": {"schema": schema}},
    }


def error_responses(*statuses: str, shape: str = "Error") -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{shape}"}
    responses = {status: json_response(schema, _ERROR_STATUSES[status]) for status in statuses}
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


MODEL_HEADER = {
    "description": "The entry of the context's `model:` chain that answered (docs/models.md); absent for a context "
    "without one.",
    "schema": {"type": "string"},
}

CACHE_HEADER = {
    "description": "What the response cache did (docs/cache.md): `hit`, `semantic-hit`, `miss` (answered by the model, "
    "`Cache-Control: no-cache` included) or `bypass` (never cached); absent for a context without `cache:`.",
    "schema": {"type": "string", "enum": ["hit", "semantic-hit", "miss", "bypass"]},
}


def query_parameter(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}  # fmt: skip

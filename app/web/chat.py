"""The chat blueprint: `POST /api/v1/chat`, the route frontends call, and what every chat route shares."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, g, jsonify
from flask.globals import request_ctx

from app.errors import BadRequest, UnsupportedMediaType
from app.runtime import Runtime
from app.usage import bind_caller
from app.validation import ChatRequest, check_payload, parse_chat_request
from app.web.auth import bind_tenant, current_identity
from app.web.runtime import get_runtime
from app.web.sse import sse_response

bp = Blueprint("chat", __name__, url_prefix="/api/v1")
# Set, with the reason, when the answer was built from less than the configured memory search.
DEGRADED_HEADER = "X-Contexis-Degraded"
# The entry of the context's model chain that answered.
MODEL_HEADER = "X-Contexis-Model"
# What the response cache did for a context that caches: hit, semantic-hit, miss or bypass.
CACHE_HEADER = "X-Contexis-Cache"


def json_body() -> Any:
    """The request's decoded JSON body; `UnsupportedMediaType` unless sent as JSON, `BadRequest` when it is not JSON.

    Browsers send text/plain and form types cross-site without a preflight; only JSON may reach the runtime.
    """
    asked = request_ctx.request
    if not asked.is_json:
        raise UnsupportedMediaType("the body must be sent with Content-Type: application/json")
    body = asked.get_json(silent=True)
    if body is None:
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


def admit(chat_request: ChatRequest) -> tuple[Runtime, ChatRequest]:
    """What every chat route does before the pipeline: bind the key's tenant, bound the cost, name it in the log."""
    runtime = get_runtime()
    chat_request = bind_tenant(chat_request)
    check_payload(chat_request, runtime.settings)
    cache_control = request_ctx.request.headers.get("Cache-Control")
    if cache_control:
        chat_request = replace(chat_request, cache_control=cache_control)
    if runtime.meter.enabled:
        identity = current_identity()
        key_id = identity.key.key_id if identity is not None and identity.key is not None else None
        bind_caller(g.request_id, key_id, request_ctx.request.path)
    g.log_fields.update(
        tenant=chat_request.tenant_id or None,
        context=chat_request.context,
        component=chat_request.component,
        model=runtime.provider.model_id if runtime.provider else None,
    )
    return runtime, chat_request


@bp.post("/chat")
def chat():
    """Render the context's prompt for the request and, when configured, ask the model (streamed on request)."""
    runtime, chat_request = admit(parse_chat_request(json_body()))
    if chat_request.stream:
        streamed = runtime.stream(chat_request, g.request_id, progress=True)
        response = sse_response(
            streamed.stream, tools=streamed.tools, sources=streamed.sources, request_id=g.request_id
        )
        mark_model(response, streamed.served)
        mark_cache(response, streamed.cache)
        degraded = streamed.degraded
    else:
        answer = runtime.answer(chat_request, g.request_id)
        extra: dict[str, Any] = {"usage": answer.usage.as_dict()} if answer.usage else {}
        if answer.tool_calls:  # the tools the model asks the client to call, with the finish reason saying so
            extra.update(tool_calls=list(answer.tool_calls), finish_reason=answer.finish_reason)
        if answer.tools is not None:  # the context's own tools the runtime called
            extra["tools"] = answer.tools
        response = jsonify(
            rendered=answer.rendered, model=answer.model, sources=answer.sources, **extra, request_id=g.request_id
        )
        mark_model(response, answer.served)
        mark_cache(response, answer.cache)
        degraded = answer.degraded
    return mark_degraded(response, degraded)


@bp.post("/render")
def render():
    """The prompt and memory matches `/chat` would send for the same body, without calling the model (the API twin
    of `ctx prompt render`)."""
    runtime, chat_request = admit(parse_chat_request(json_body()))
    rendered = runtime.render(chat_request)
    response = jsonify(
        prompt=rendered.prompt,
        context=chat_request.context,
        tenant_id=chat_request.tenant_id,
        sources=rendered.sources(),
        mode=rendered.mode,
        degraded=rendered.degraded or None,
        models=runtime.models(rendered.context),
        request_id=g.request_id,
    )
    return mark_degraded(response, rendered.degraded)


def mark_model(response: Response, served: str | None) -> None:
    """Name the entry of the context's chain that answered, on the response and in the request log (a context
    without a chain pays nothing: its model is HF_MODEL_ID, already logged)."""
    if served:
        response.headers[MODEL_HEADER] = served
        g.log_fields.update(model=served)


def mark_cache(response: Response, result: str) -> None:
    """Say where the answer came from (the cache, or the model) when its context caches, and log it."""
    if result:
        response.headers[CACHE_HEADER] = result
        g.log_fields.update(cache=result)


def mark_degraded(response: Response, degraded: str) -> Response:
    """Say on the response and in the request log when memory searched keywords only (why, in `degraded`)."""
    if degraded:
        response.headers[DEGRADED_HEADER] = degraded
        g.log_fields.update(degraded=degraded)
    return response

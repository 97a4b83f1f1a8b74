"""The chat blueprint: `POST /api/v1/chat`, the route frontends call."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from app.errors import BadRequest
from app.validation import check_payload, parse_chat_request
from app.web import get_runtime
from app.web.auth import bind_tenant
from app.web.sse import sse_response

bp = Blueprint("chat", __name__, url_prefix="/api/v1")
# Set, with the reason, when the answer was built from less than the configured memory search.
DEGRADED_HEADER = "X-Contexis-Degraded"


@bp.post("/chat")
def chat():
    """Render the context's prompt for the request and, when configured, ask the model (streamed on request)."""
    body = request.get_json(force=True, silent=True)
    if body is None:
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    chat_request = parse_chat_request(body)
    runtime = get_runtime()
    chat_request = bind_tenant(chat_request)
    check_payload(chat_request, runtime.settings)
    g.log_fields.update(
        tenant=chat_request.tenant_id or None,
        context=chat_request.context,
        component=chat_request.component,
        model=runtime.provider.model_id if runtime.provider else None,
    )
    if chat_request.stream:
        streamed = runtime.stream(chat_request)
        response = sse_response(streamed.stream, sources=streamed.sources, request_id=g.request_id)
        degraded = streamed.degraded
    else:
        answer = runtime.answer(chat_request)
        usage = {"usage": answer.usage.as_dict()} if answer.usage else {}
        response = jsonify(
            rendered=answer.rendered, model=answer.model, sources=answer.sources, **usage, request_id=g.request_id
        )
        degraded = answer.degraded
    if degraded:
        response.headers[DEGRADED_HEADER] = degraded
        g.log_fields.update(degraded=degraded)
    return response

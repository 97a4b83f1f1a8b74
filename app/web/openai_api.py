"""The OpenAI-compatible surface: `POST /v1/chat/completions` and `GET /v1/models`, with contexts as models.

OpenAI's SDKs and the frontends built on them (Open WebUI, LibreChat, LangChain, the Vercel AI SDK)
talk to the runtime unchanged. The request goes through the one pipeline (`chat.admit`, `Runtime`),
under the same keys, tenants, limits and telemetry as `/api/v1/chat`; only the shapes differ: a
`chat.completion` (or its chunks) in, OpenAI's `{"error": {"message", "type", "param", "code"}}` out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, g, jsonify, request

from app.errors import BadRequest, ContexisError
from app.names import is_safe_name
from app.providers.base import ChoiceDelta, ToolCallDelta, Usage
from app.validation import parse_openai_request
from app.web import get_runtime
from app.web.auth import tenant_for
from app.web.chat import admit, json_body, mark_degraded, mark_model
from app.web.sse import event_stream, sse_event

bp = Blueprint("openai", __name__, url_prefix="/v1")

# The `type` OpenAI gives each status; the SDKs pick their exception class by the status itself.
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape; `code` keeps the runtime's codes (`context_not_found`, `hf_timeout`, ...)."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _usage(usage: Usage | None) -> dict[str, int] | None:
    """OpenAI's usage; a count the endpoint did not report is 0. None when it reported nothing."""
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _piece_choice(piece: ToolCallDelta | ChoiceDelta) -> dict[str, Any]:
    """A chunk's choice for a piece other than the first choice's plain text: a tool call's, another choice's."""
    if isinstance(piece, ToolCallDelta):
        return {
            "index": piece.choice,
            "delta": {"tool_calls": [piece.as_openai()]},
            "logprobs": None,
            "finish_reason": None,
        }
    return {"index": piece.choice, "delta": {"content": piece.text}, "logprobs": piece.logprobs, "finish_reason": None}


@bp.post("/chat/completions")
def chat_completions():
    """Answer the last user message as the context `model`, whole or as `chat.completion.chunk` events."""
    body = json_body()
    runtime, chat_request = admit(parse_openai_request(body))
    head = {"id": f"chatcmpl-{g.request_id}", "created": int(time.time()), "model": chat_request.context}
    if chat_request.stream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        streamed = runtime.stream(chat_request)
        stream = streamed.stream
        # A context that names its models answers as the one that served; others as the context.
        chunk = {**head, "model": streamed.served or chat_request.context, "object": "chat.completion.chunk"}

        def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

        def events() -> Iterator[str]:
            # The memory sources are known before the first token: the first chunk carries them.
            yield sse_event(
                {**chunk, "choices": [choice({"role": "assistant", "content": ""})], "sources": streamed.sources}
            )
            for delta in stream:
                if isinstance(delta, str):  # nearly every piece
                    yield sse_event({**chunk, "choices": [choice({"content": delta})]})
                else:
                    yield sse_event({**chunk, "choices": [_piece_choice(delta)]})
            yield sse_event({**chunk, "choices": [choice({}, stream.finish_reason or "stop")]})
            if include_usage:
                yield sse_event({**chunk, "choices": [], "usage": _usage(stream.usage)})
            yield "data: [DONE]\n\n"

        def error_event(exc: ContexisError) -> str:
            # A chunk of `{"error": ...}` is what OpenAI's SDKs raise as an APIError mid-stream.
            return sse_event(openai_error(exc.status, exc.code, exc.message, exc.param))

        response = event_stream(stream, events(), error_event, g.request_id)
        mark_model(response, streamed.served)
        return mark_degraded(response, streamed.degraded)
    answer = runtime.answer(chat_request)
    response = jsonify(
        **{**head, "model": answer.served or chat_request.context},
        object="chat.completion",
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.rendered},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        usage=_usage(answer.usage),
        sources=answer.sources,
    )
    mark_model(response, answer.served)
    return mark_degraded(response, answer.degraded)


@bp.get("/models")
def models():
    """The contexts the caller's tenant may use, tenant overrides included, as OpenAI's model list."""
    requested = request.args.get("tenant_id", "")
    if requested and not is_safe_name(requested):
        raise BadRequest(f"tenant_id: {requested!r} is not a valid name", code="invalid_request", param="tenant_id")
    tenant = tenant_for(requested)
    g.log_fields.update(tenant=tenant or None)
    contexts = get_runtime().contexts
    tenant_dir = contexts.contexts_dir / "tenants"
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(path.stat().st_mtime),
            "owned_by": tenant if path.is_relative_to(tenant_dir) else "contexis",
        }
        for name, path in contexts.available(tenant).items()
    ]
    return jsonify(object="list", data=data)

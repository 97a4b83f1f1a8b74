"""The OpenAI-compatible surface: `POST /v1/chat/completions`, `GET /v1/models` and `GET /v1/models/{id}`, with
contexts as models.

OpenAI's SDKs and the frontends built on them (Open WebUI, LibreChat, LangChain, the Vercel AI SDK)
talk to the runtime unchanged. The request goes through the one pipeline (`chat.admit`, `Runtime`),
under the same keys, tenants, limits and telemetry as `/api/v1/chat`; only the shapes differ: a
`chat.completion` (or its chunks) in, OpenAI's `{"error": {"message", "type", "param", "code"}}` out.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, g, jsonify

from app.errors import ContexisError, NotFound
from app.names import is_safe_name
from app.providers.base import Choice, ChoiceDelta, ToolCallDelta, Usage
from app.validation import parse_openai_request
from app.web.auth import tenant_param
from app.web.chat import admit, json_body, mark_cache, mark_degraded, mark_model
from app.web.runtime import get_runtime
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
        streamed = runtime.stream(chat_request, g.request_id)
        stream = streamed.stream
        # A context that names its models answers as the one that served; others as the context.
        chunk = {**head, "model": streamed.served or chat_request.context, "object": "chat.completion.chunk"}
        indexes = range(chat_request.options.get("n", 1))

        def choice(delta: dict[str, str], finish: str | None = None, index: int = 0) -> dict[str, Any]:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        def events() -> Iterator[str]:
            # The memory sources are known before the first token: the first chunk carries them.
            yield sse_event(
                {**chunk, "choices": [choice({"role": "assistant", "content": ""})], "sources": streamed.sources}
            )
            for index in indexes[1:]:
                yield sse_event({**chunk, "choices": [choice({"role": "assistant", "content": ""}, index=index)]})
            for delta in stream:
                if isinstance(delta, str):  # nearly every piece
                    yield sse_event({**chunk, "choices": [choice({"content": delta})]})
                else:
                    yield sse_event({**chunk, "choices": [_piece_choice(delta)]})
            for index in indexes:
                finish = stream.finish_reasons.get(index) or "stop"
                yield sse_event({**chunk, "choices": [choice({}, finish, index)]})
            if include_usage:
                yield sse_event({**chunk, "choices": [], "usage": _usage(stream.usage)})
            yield "data: [DONE]\n\n"

        def error_event(exc: ContexisError) -> str:
            # A chunk of `{"error": ...}` is what OpenAI's SDKs raise as an APIError mid-stream.
            return sse_event(openai_error(exc.status, exc.code, exc.message, exc.param))

        response = event_stream(stream, events(), error_event, g.request_id)
        mark_model(response, streamed.served)
        mark_cache(response, streamed.cache)
        return mark_degraded(response, streamed.degraded)
    answer = runtime.answer(chat_request, g.request_id)
    choices = answer.choices or (Choice(answer.rendered, finish_reason=answer.finish_reason),)
    response = jsonify(
        **{**head, "model": answer.served or chat_request.context},
        object="chat.completion",
        choices=[
            {
                "index": index,
                "message": _message(choice),
                "logprobs": choice.logprobs,
                "finish_reason": choice.finish_reason or "stop",
            }
            for index, choice in enumerate(choices)
        ],
        usage=_usage(answer.usage),
        sources=answer.sources,
    )
    mark_model(response, answer.served)
    mark_cache(response, answer.cache)
    return mark_degraded(response, answer.degraded)


def _message(choice: Choice) -> dict[str, Any]:
    """An answer's assistant message: its text, or null beside the tool calls it makes (as OpenAI answers)."""
    if not choice.tool_calls:
        return {"role": "assistant", "content": choice.text}
    return {"role": "assistant", "content": choice.text or None, "tool_calls": list(choice.tool_calls)}


@bp.get("/models")
def models():
    """The contexts the caller's tenant may use, tenant overrides included, as OpenAI's model list."""
    tenant = _listing_tenant()
    data = [_model(name, path, tenant) for name, path in get_runtime().contexts.available(tenant).items()]
    return jsonify(object="list", data=data)


@bp.get("/models/<model_id>")
def model(model_id: str):
    """One context as OpenAI's model object, when the caller's tenant may use it (as the list shows it); 404 else."""
    tenant = _listing_tenant()
    path = get_runtime().contexts.available(tenant).get(model_id) if is_safe_name(model_id) else None
    if path is None:
        raise NotFound(f"model {model_id!r} not found: GET /v1/models lists the contexts", code="model_not_found")
    return jsonify(_model(model_id, path, tenant))


def _listing_tenant() -> str:
    """The tenant whose contexts a model listing shows: the key's, or the one asked for when the key allows it."""
    return tenant_param("tenant_id", empty_ok=False)  # an empty one is refused too: the contract's pattern


def _model(name: str, path: Path, tenant: str) -> dict[str, Any]:
    contexts = get_runtime().contexts
    return {
        "id": name,
        "object": "model",
        "created": contexts.modified(path),
        "owned_by": tenant if path.is_relative_to(contexts.contexts_dir / "tenants") else "contexis",
    }

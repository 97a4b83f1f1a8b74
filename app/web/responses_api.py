"""The Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, for the SDKs that default to it.

OpenAI's `client.responses.*`, the Vercel AI SDK's default `openai(id)` provider and the agent frameworks built on
them talk to the runtime unchanged. A body is translated (`responses_wire`) into the chat-completion request it
means and goes through the one pipeline (`parse_openai_request`, `chat.admit`, `Runtime`) under the same keys,
tenants, limits and telemetry as `/v1/chat/completions`; answers are `response` objects or their event streams
(`responses_answer`), errors OpenAI's shape (the `/v1` prefix's). Responses are stored per tenant
(`app.responses_store`) unless the request says `"store": false`, so `previous_response_id` and `item_reference`
can continue them; what is stored and echoed of the request is what the context's guardrails passed to the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify

from app.config import Settings
from app.errors import NotFound
from app.responses_store import ResponseStore, StoredResponse, new_response_id, open_response_store
from app.validation import parse_openai_request
from app.web.auth import tenant_for, tenant_param
from app.web.chat import admit, json_body, mark_cache, mark_degraded, mark_model
from app.web.responses_answer import (
    ResponseEvents,
    answer_output,
    item_response_id,
    response_object,
    status_of,
    usage_object,
)
from app.web.responses_wire import (
    ResponsesCall,
    chat_body,
    echo_as_passed,
    input_item,
    item_as_passed,
    output_as_input,
    parse_responses_body,
)
from app.web.sse import event_stream

bp = Blueprint("responses", __name__, url_prefix="/v1")
_STORE = "contexis_responses"


def init_responses(app: Flask, settings: Settings) -> None:
    """The app's response store (nothing is opened before the first stored response) and the routes."""
    app.extensions[_STORE] = open_response_store(settings)
    app.register_blueprint(bp)


def _store() -> ResponseStore:
    store: ResponseStore = current_app.extensions[_STORE]
    return store


def _not_found(response_id: str, param: str | None = None) -> NotFound:
    # The same answer for another tenant's response as for none: ids of others reveal nothing.
    return NotFound(f"no stored response {response_id!r}", code="response_not_found", param=param)


def _conversation(call: ResponsesCall, tenant: str) -> list[dict[str, Any]]:
    """The conversation the call continues: the stored one of `previous_response_id`, then the input items, each
    `item_reference` replaced by the stored output item it names (the tenant's own only)."""
    store = _store()
    items: list[dict[str, Any]] = []
    if call.previous_response_id:
        previous = store.get(tenant, call.previous_response_id)
        if previous is None:
            raise _not_found(call.previous_response_id, "previous_response_id")
        items += previous.items
    for i, item in enumerate(call.items):
        kind = item.get("type", "message")
        if kind == "reasoning":
            continue  # the runtime's models return none; a client's own is not the model's to read
        if kind == "item_reference":
            items.append(output_as_input(_referenced(store, tenant, item["id"], i)))
        else:
            items.append(input_item(item))
    return items


def _referenced(store: ResponseStore, tenant: str, item_id: str, index: int) -> dict[str, Any]:
    response_id = item_response_id(item_id)
    stored = store.get(tenant, response_id) if response_id else None
    found = next((o for o in stored.response["output"] if o["id"] == item_id), None) if stored else None
    if found is None:
        raise NotFound(f"input.{index}: no stored item {item_id!r}", code="item_not_found", param="input")
    return found


@bp.post("/responses")
def create_response():
    """Answer the input as the context `model`: a `response` object, or its events with `"stream": true`."""
    body = json_body()
    call = parse_responses_body(body)
    tenant = tenant_for(body.get("tenant_id", ""))
    items = _conversation(call, tenant)
    runtime, chat_request = admit(parse_openai_request(chat_body(call, items, tenant)))
    response_id = new_response_id()
    g.log_fields.update(response_id=response_id)
    store, ttl = _store(), runtime.settings.responses_ttl  # a stream ends outside the request's context

    def keep(passed: Callable[[str], str] | None, response: dict[str, Any]) -> None:
        if call.store:
            # The conversation as the model got it: under `pii: redact`, its personal data replaced.
            conversation = [item_as_passed(item, passed) for item in items] if passed else list(items)
            conversation += [output_as_input(item) for item in response["output"]]
            store.put(StoredResponse.new(tenant, response, conversation, ttl))

    if call.stream:
        streamed = runtime.stream(chat_request)
        call = echo_as_passed(call, streamed.as_passed)
        # A context that names its models answers as the one that served; others as the context.
        model = streamed.served or chat_request.context
        finish = partial(keep, streamed.as_passed)
        events = ResponseEvents(call, response_id, streamed.stream, finish, sources=streamed.sources, model=model)
        answered = event_stream(streamed.stream, iter(events), events.failed, g.request_id)
        mark_model(answered, streamed.served)
        mark_cache(answered, streamed.cache)
        return mark_degraded(answered, streamed.degraded)
    answer = runtime.answer(chat_request)
    call = echo_as_passed(call, answer.as_passed)
    status, incomplete = status_of(answer.finish_reason)
    response = response_object(
        call,
        response_id,
        int(time.time()),
        status,
        answer_output(response_id, answer.rendered, answer.tool_calls, status),
        incomplete_details=incomplete,
        usage=usage_object(answer.usage),
        sources=answer.sources,
        model=answer.served or chat_request.context,
    )
    keep(answer.as_passed, response)
    answered = jsonify(response)
    mark_model(answered, answer.served)
    mark_cache(answered, answer.cache)
    return mark_degraded(answered, answer.degraded)


def _tenant() -> str:
    """The tenant a GET or DELETE acts for: `?tenant_id=`, else the key's own."""
    return tenant_param("tenant_id")


@bp.get("/responses/<response_id>")
def get_response(response_id: str):
    """A stored response of the caller's tenant, as it was answered."""
    stored = _store().get(_tenant(), response_id)
    if stored is None:
        raise _not_found(response_id)
    return jsonify(stored.response)


@bp.delete("/responses/<response_id>")
def delete_response(response_id: str):
    """Forget a stored response of the caller's tenant: it can no longer be read or continued."""
    if not _store().delete(_tenant(), response_id):
        raise _not_found(response_id)
    return jsonify(id=response_id, object="response.deleted", deleted=True)

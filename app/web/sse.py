"""Server-sent events for chat requests with `"stream": true`.

Each text delta is written and flushed as its own event: `data: {"delta": "..."}` (a piece of a tool call
the model makes: `data: {"tool_calls": [...]}`, framed as OpenAI's chunk deltas), then
`data: {"done": true, "model", "usage", "request_id"}` (with `tool_calls` and `finish_reason` when it called
tools). A failure after the first event can no longer change the status, so it ends the stream with `event: error`
carrying the same `{"error": {"code", "message"}}` as a JSON error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response

from app.errors import ContexisError
from app.providers.base import TokenStream, ToolCallDelta
from app.web.json import dumps_bytes

log = logging.getLogger(__name__)

HEADERS = {
    "Cache-Control": "no-cache",
    # nginx (and the ingress-nginx controller) buffers proxied answers unless told not to.
    "X-Accel-Buffering": "no",
}


def sse_event(data: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event; JSON keeps newlines inside `data` escaped, so one `data:` line suffices."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {dumps_bytes(data).decode()}\n\n"


def event_stream(
    stream: TokenStream, events: Iterator[str], error_event: Callable[[ContexisError], str], request_id: str
) -> Response:
    """A `text/event-stream` answer of `events` (which relay `stream`); a failure among them ends it with
    `error_event`, since the status is already sent.

    The WSGI server closes the answer when the client goes away (gunicorn on a failed write):
    `call_on_close` then closes the upstream response, which stops the generation.
    """

    def guarded() -> Iterator[str]:
        try:
            yield from events
        except ContexisError as exc:
            yield error_event(exc)
        except Exception:
            log.exception("stream failed", extra={"fields": {"request_id": request_id}})
            yield error_event(ContexisError("internal server error"))

    # No stream_with_context: the generator needs nothing from the request, and Flask 3.1 would tear the
    # request down a second time after it.
    response = Response(guarded(), mimetype="text/event-stream", headers=HEADERS)
    response.call_on_close(stream.close)
    return response


def sse_response(stream: TokenStream, tools: list[dict[str, Any]] | None = None, **done_fields: Any) -> Response:
    """The runtime's own stream: deltas, then a done event ending with `done_fields` (sources, request id).

    With a context's `tools` (the runtime's live list of calls made), an empty piece means a call ended: each
    new one is an event `{"tool", "ok", "ms"}`, and the done event lists them all.
    """

    def events() -> Iterator[str]:
        shown = 0
        for delta in stream:
            if isinstance(delta, str):  # nearly every piece
                if delta or tools is None:
                    yield sse_event({"delta": delta})
                    continue
                for call in tools[shown:]:
                    yield sse_event({"tool": call["name"], "ok": call["ok"], "ms": call["ms"]})
                shown = len(tools)
            elif isinstance(delta, ToolCallDelta):
                yield sse_event({"tool_calls": [delta.as_openai()]})
            elif delta.text:
                yield sse_event({"delta": delta.text})
        done: dict[str, Any] = {"done": True, "model": stream.model}
        if stream.usage:
            done["usage"] = stream.usage.as_dict()
        if stream.tool_calls:
            done.update(tool_calls=list(stream.tool_calls), finish_reason=stream.finish_reason)
        if tools is not None:
            done["tools"] = tools
        yield sse_event({**done, **done_fields})

    def error_event(exc: ContexisError) -> str:
        return sse_event({"error": {"code": exc.code, "message": exc.message}}, event="error")

    return event_stream(stream, events(), error_event, done_fields.get("request_id", ""))

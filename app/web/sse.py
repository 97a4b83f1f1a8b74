"""Server-sent events for chat requests with `"stream": true`.

Each text delta is written and flushed as its own event: `data: {"delta": "..."}`,
then `data: {"done": true, "model", "usage", "request_id"}`. A failure after the
first event can no longer change the status, so it ends the stream with
`event: error` carrying the same `{"error": {"code", "message"}}` as a JSON error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Response

from app.errors import ContexisError
from app.providers.base import TokenStream
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


def sse_response(stream: TokenStream, **done_fields: Any) -> Response:
    """A `text/event-stream` answer that relays `stream`; `done_fields` (sources, request id) end the done event.

    The WSGI server closes the answer when the client goes away (gunicorn on a failed write):
    `call_on_close` then closes the upstream response, which stops the generation.
    """

    def events() -> Iterator[str]:
        try:
            for delta in stream:
                yield sse_event({"delta": delta})
            done: dict[str, Any] = {"done": True, "model": stream.model}
            if stream.usage:
                done["usage"] = stream.usage.as_dict()
            yield sse_event({**done, **done_fields})
        except ContexisError as exc:
            yield sse_event({"error": {"code": exc.code, "message": exc.message}}, event="error")
        except Exception:
            log.exception("stream failed", extra={"fields": {"request_id": done_fields.get("request_id")}})
            yield sse_event({"error": {"code": "internal_error", "message": "internal server error"}}, event="error")

    # No stream_with_context: the generator needs nothing from the request, and Flask 3.1 would tear the
    # request down a second time after it.
    response = Response(events(), mimetype="text/event-stream", headers=HEADERS)
    response.call_on_close(stream.close)
    return response

"""The JSON error handlers: every failure a request meets is answered as `{"error": {"code", "message"}}`.

A URL prefix may have its own shape (the OpenAI surface answers in OpenAI's under `/v1/`); every handler,
the auth, rate-limit, 404 and 405 ones included, goes through `error_response`, so the shape follows the path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from app.errors import BudgetExceeded, ContexisError, ProviderError

log = logging.getLogger(__name__)

# status, code, message, param -> the error body
ErrorShape = Callable[[int, str, str, str | None], dict[str, Any]]
_SHAPES: dict[str, ErrorShape] = {}


def native_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def register_error_shape(prefix: str, shape: ErrorShape) -> None:
    """Answer the errors of every path under `prefix` in `shape`, unrouted paths included."""
    _SHAPES[prefix.rstrip("/") + "/"] = shape


def error_body_at(path: str, status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body in `path`'s shape; gunicorn's worker asks with the path it read, before Flask has a request."""
    shape = next((shape for prefix, shape in _SHAPES.items() if path.startswith(prefix)), native_error)
    return shape(status, code, message, param)


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The error body in the current path's shape."""
    return error_body_at(request.path, status, code, message, param)


def error_response(status: int, code: str, message: str, param: str | None = None) -> tuple[Response, int]:
    """The one JSON error answer every route and handler uses."""
    return jsonify(error_body(status, code, message, param)), status


def register_error_handlers(app: Flask) -> None:
    """Map runtime errors, HTTP errors and anything unexpected to JSON."""

    @app.errorhandler(ContexisError)
    def _contexis(exc: ContexisError) -> tuple[Response, int]:
        response, status = error_response(exc.status, exc.code, exc.message, exc.param)
        if isinstance(exc, ProviderError):
            if not exc.retryable or (status >= 500 and exc.retried):
                # OpenAI's SDKs retry every 5xx unless told not to: a refused token or spent credits stay refused,
                # and a failure the runtime answers has had its own retries (a client's would multiply them).
                response.headers["x-should-retry"] = "false"
            if exc.retry_after:
                response.headers["Retry-After"] = exc.retry_after  # the upstream's 429/503 said when to come back
        if isinstance(exc, BudgetExceeded):
            # A spent budget stays spent until it resets: retrying before `Retry-After` is refused again.
            response.headers["x-should-retry"] = "false"
            response.headers["Retry-After"] = str(exc.retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        # The traceback goes to the log, keyed by request id; the client gets none of it.
        log.exception("unhandled error", extra={"fields": {"request_id": g.get("request_id")}})
        return error_response(500, "internal_error", "internal server error")

"""Typed errors and the handlers that turn every failure into a JSON answer.

Each layer raises a `ContexisError` subclass that knows its HTTP status and a
stable `code`; the handlers below render `{"error": {"code", "message"}}` so a
client never sees a traceback or an HTML page.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ContexisError(Exception):
    """Base of every error the runtime reports to a client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class BadRequest(ContexisError):
    """The request body is malformed, mistyped or names an unsafe path."""

    status = 400
    code = "bad_request"


class NotFound(ContexisError):
    """The context, component or prompt file the request names does not exist."""

    status = 404
    code = "not_found"


class MissingVariable(ContexisError):
    """The template uses a variable that the request's `data` does not provide."""

    status = 422
    code = "missing_variable"


class TemplateFailure(ContexisError):
    """The project's template is broken (syntax, sandbox violation, runtime error)."""

    status = 500
    code = "template_error"


class ContextInvalid(ContexisError):
    """A context file fails to parse, merge or validate."""

    status = 500
    code = "invalid_context"


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The one JSON error shape every route and handler uses."""
    return jsonify(error={"code": code, "message": message}), status


def register_error_handlers(app: Flask) -> None:
    """Map runtime errors, HTTP errors and anything unexpected to JSON."""

    @app.errorhandler(ContexisError)
    def _contexis(exc: ContexisError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error_response(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # The traceback goes to the log, keyed by request id; the client gets none of it.
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return error_response(500, "internal_error", "internal server error")

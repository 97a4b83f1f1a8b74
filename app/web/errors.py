"""The JSON error handlers: every failure a request meets is answered as `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from app.errors import ContexisError

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The one JSON error shape every route and handler uses."""
    return jsonify(error={"code": code, "message": message}), status


def register_error_handlers(app: Flask) -> None:
    """Map runtime errors, HTTP errors and anything unexpected to JSON."""

    @app.errorhandler(ContexisError)
    def _contexis(exc: ContexisError) -> tuple[Response, int]:
        return error_response(exc.status, exc.code, exc.message)

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
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return error_response(500, "internal_error", "internal server error")

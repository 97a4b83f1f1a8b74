"""Request limits: rate limits per key or client address, and the shape of a chat request's payload.

The body's size is Flask's `MAX_CONTENT_LENGTH` (413, chunked bodies included);
this module bounds what a body within that size may still cost: how deep and
how large `data` is and how long its strings and `query` are.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

from flask import Flask, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from app.auth import audit_denied, client_identity
from app.config import Settings
from app.errors import ContexisError, error_response
from app.validation import ChatRequest

# Probes and scrapes must never be throttled: a limited /readyz would take a busy pod out of service.
EXEMPT_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "prometheus_metrics"})


class PayloadTooLarge(ContexisError):
    """`data` holds too many values, or a string is longer than the runtime accepts."""

    status = 413
    code = "payload_too_large"


class PayloadTooDeep(ContexisError):
    """`data` nests deeper than templates need; deep nesting only costs the server."""

    status = 400
    code = "payload_too_deep"


class _DepthSafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but a body nested past Python's recursion limit is a 400, not a RecursionError (500)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise PayloadTooDeep("the body nests too deeply to be decoded") from None


def check_payload(chat_request: ChatRequest, settings: Settings) -> None:
    """Raise when `query` or `data` exceeds the configured depth, item count or string length."""
    if len(chat_request.query) > settings.max_string_chars:
        raise PayloadTooLarge(f"query: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars} characters")
    items = 0
    # Iterative walk: a recursive one would let a deep payload exhaust the stack before the check fires.
    stack: list[tuple[Any, str, int]] = [(chat_request.data, "data", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > settings.max_data_depth:
            raise PayloadTooDeep(f"{where}: data nests deeper than CMP_MAX_DATA_DEPTH={settings.max_data_depth}")
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in children:
            items += 1
            if items > settings.max_data_items:
                raise PayloadTooLarge(f"data: more than CMP_MAX_DATA_ITEMS={settings.max_data_items} values")
            if isinstance(name, str) and len(name) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: a key is longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            stack.append((child, f"{where}.{name}", depth + 1))


def _bound_chunked_body() -> None:
    """Read a chunked body here, so one over `MAX_CONTENT_LENGTH` is a 413.

    Werkzeug stops reading a body without `Content-Length` at the limit and hands
    on what it read, which the JSON parser then rejects as a misleading 400.
    """
    environ = request.environ
    if environ.get("CONTENT_LENGTH") or not environ.get("wsgi.input_terminated"):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def init_limits(app: Flask, settings: Settings) -> None:
    """Trust `X-Forwarded-For` only for the configured proxy hops; rate-limit when `CMP_RATE_LIMIT` is set."""
    provider = _DepthSafeJSONProvider(app)
    provider.sort_keys = app.json.sort_keys
    app.json = provider
    app.before_request(_bound_chunked_body)
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    if not settings.rate_limit:
        return
    limiter = Limiter(
        client_identity,
        app=app,
        default_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage_uri,
        strategy="moving-window",
        # A rate-limit store that is down must not take the API down: count in memory until it is back.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    limiter.request_filter(lambda: request.endpoint in EXEMPT_ENDPOINTS)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> tuple[Response, int]:
        audit_denied(429, "rate_limited")
        current = limiter.current_limit
        wait = max(1, min(math.ceil(current.reset_at - time.time()), current.limit.get_expiry())) if current else 1
        response, status = error_response(429, "rate_limited", f"rate limit of {exc.description} exceeded")
        response.headers["Retry-After"] = str(wait)
        return response, status

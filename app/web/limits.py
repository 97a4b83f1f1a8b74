"""HTTP limits: rate limits per key or client address, body size, trusted proxies.

The body's size is Flask's `MAX_CONTENT_LENGTH` (413, chunked bodies included); what a
body within that size may still cost (depth, items, string lengths) is
`app.validation.check_payload`.
"""

from __future__ import annotations

import io
import logging
import math
import time
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import REDIS_TIMEOUTS, Settings
from app.observability import RuntimeMetrics
from app.web.auth import audit_denied, client_identity
from app.web.errors import error_response

# Probes and scrapes must never be throttled: a limited /readyz would take a busy pod out of service.
EXEMPT_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "prometheus_metrics"})


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


class _CountedLog(logging.LoggerAdapter):
    """Flask-Limiter's logger, counting what it reports at WARNING and above: each is a storage failure
    that the limiter swallowed (fail open: the request is answered, counted per worker in memory)."""

    def __init__(self, logger: logging.Logger, metrics: RuntimeMetrics) -> None:
        super().__init__(logger, {})
        self.metrics = metrics

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING:
            self.metrics.rate_limit_storage_errors.inc()
        super().log(level, msg, *args, **kwargs)


def init_limits(app: Flask, settings: Settings, metrics: RuntimeMetrics) -> None:
    """Trust `X-Forwarded-For` only for the configured proxy hops; rate-limit when `CMP_RATE_LIMIT` is set."""
    app.before_request(_bound_chunked_body)
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    if not settings.rate_limit:
        return
    redis = settings.rate_limit_storage_uri.startswith(("redis", "valkey"))
    limiter = Limiter(
        client_identity,
        app=app,
        # One budget per client across every route (default_limits would give each route its own).
        application_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage_uri,
        storage_options=REDIS_TIMEOUTS if redis else {},
        strategy="moving-window",
        # Fail open: a rate-limit store that is down or hung must not take the API down. The request is
        # answered, the failure logged and counted, and counting goes on in memory until the store is back.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    limiter.logger = _CountedLog(limiter.logger, metrics)  # type: ignore[assignment]
    # A browser's CORS preflight is not a call: counting it would halve a browser client's limit.
    limiter.request_filter(lambda: request.endpoint in EXEMPT_ENDPOINTS or request.method == "OPTIONS")

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> tuple[Response, int]:
        audit_denied(429, "rate_limited")
        current = limiter.current_limit
        wait = max(1, min(math.ceil(current.reset_at - time.time()), current.limit.get_expiry())) if current else 1
        response, status = error_response(429, "rate_limited", f"rate limit of {exc.description} exceeded")
        response.headers["Retry-After"] = str(wait)
        return response, status

"""The HTTP side of observability: request ids, the JSON access line, HTTP metrics and Flask spans."""

from __future__ import annotations

import os
import re
import time
import uuid

from flask import Flask, Response
from flask.globals import app_ctx, request_ctx
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics

from app.config import Settings
from app.observability import (
    ProcessTreeCollector,
    RuntimeMetrics,
    access_log,
    configure_tracing,
    current_request_id,
    tracing_enabled,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# The exporter's endpoint serving /metrics: its scrapes are logged, not counted in the HTTP series.
_METRICS_ENDPOINT = "prometheus_metrics"


class _Exporter(PrometheusMetrics):
    """prometheus-flask-exporter, whose multiprocess scrapes also carry the process tree's CPU and memory."""

    def generate_metrics(self, accept_header=None, names=None):
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return super().generate_metrics(accept_header, names)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(ProcessTreeCollector(multiprocess=True))
        encoder, content_type = choose_encoder(accept_header)
        return encoder(registry.restricted_registry(names) if names else registry).decode("utf-8"), content_type


def init_observability(app: Flask, settings: Settings, metrics: RuntimeMetrics) -> None:
    """Wire metrics, tracing and the per-request JSON log line into `app`."""
    configure_tracing(settings)
    if tracing_enabled():
        FlaskInstrumentor().instrument_app(app, excluded_urls="healthz,readyz,metrics", enable_commenter=False)
    # The exporter serves /metrics (every worker's files in multiprocess mode); the request series
    # themselves are `RuntimeMetrics.observe_request`, recorded with the access line below for every
    # route but /metrics (a scrape would otherwise count itself).
    _Exporter(app, registry=metrics.registry, export_defaults=False)

    @app.before_request
    def _start() -> None:
        ours = app_ctx.g  # one context lookup, not one per attribute as through `g`
        ours.started = time.perf_counter()
        incoming = request_ctx.request.environ.get("HTTP_X_REQUEST_ID", "")
        ours.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        current_request_id.set(ours.request_id)
        ours.log_fields = {"tenant": None, "context": None, "component": None, "model": None}

    @app.after_request
    def _finish(response: Response) -> Response:
        ours, asked = app_ctx.g, request_ctx.request
        request_id = getattr(ours, "request_id", None) or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        seconds = time.perf_counter() - getattr(ours, "started", time.perf_counter())
        status = response.status_code
        if asked.endpoint != _METRICS_ENDPOINT:
            metrics.observe_request(asked.method, str(asked.url_rule), status, seconds)
        access_log.write(
            {
                "request_id": request_id,
                "method": asked.method,
                "path": asked.path,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                **getattr(ours, "log_fields", {}),
            }
        )
        return response

"""The HTTP side of observability: request ids, the JSON access line, HTTP metrics and Flask spans."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Flask, Response, g, request
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics

from app.config import Settings
from app.observability import ProcessTreeCollector, RuntimeMetrics, configure_tracing, tracing_enabled

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
    access = logging.getLogger("contexis.access")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.log_fields = {"tenant": None, "context": None, "component": None, "model": None}

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Request-ID"] = request_id
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        if request.endpoint != _METRICS_ENDPOINT:
            metrics.observe_request(request.method, str(request.url_rule), response.status_code, seconds)
        fields = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 2),
            **g.get("log_fields", {}),
        }
        extra = {"fields": fields}
        if access.isEnabledFor(logging.INFO):
            # makeRecord + handle: what `info()` does, without walking the stack for the caller's line.
            access.handle(access.makeRecord(access.name, logging.INFO, __file__, 0, "request", (), None, None, extra))
        return response

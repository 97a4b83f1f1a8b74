"""gunicorn settings for the Contexis runtime, used by `ctx serve` and the container alike.

It ships inside the `app` package, so a source tree, an installed wheel and the image
serve with the same settings: `ctx serve` loads it as `python:app.gunicorn_conf`
(`CMP_GUNICORN_CONFIG=/path/to/file.py` replaces it), and the bare gunicorn command
takes it the same way: `gunicorn -c python:app.gunicorn_conf wsgi:app`.

Values come from the usual variables so operators tune them without editing
this file; `GUNICORN_CMD_ARGS` and `ctx serve` flags still override them.
"""

import json
import os
import shutil
import tempfile

from gunicorn.glogging import Logger

from app.config import Settings

# Prometheus multiprocess mode must be chosen before prometheus_client is first
# imported, so the directory is settled here, at the top of the master's config.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="contexis-metrics-")

from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
# gthread, but a request head is read by the worker's poller within GUNICORN_HEADER_TIMEOUT (slow clients hold
# no thread), and gunicorn's own error pages are JSON: app/gunicorn_worker.py.
worker_class = "app.gunicorn_worker.HeaderTimeoutWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# A request waiting on the model holds one thread, so a pod serves workers x threads model calls at once.
# The default 2 x 128 (GUNICORN_THREADS, Settings.threads) keeps 200 clients of a 1 s model above 90 % of
# its rate in ~140 MB (docs/benchmarks.md). The same number sizes the app's connection pool to the model.
threads = Settings.from_env().threads
# A worker may wait on the model for the whole HF deadline: keep the watchdog above it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "150"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# The app already writes one JSON line per request (with tenant, context and model);
# gunicorn's own access log, in JSON too, is there for those who want the socket view.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
# Several servers may share a machine (and the root filesystem is read-only in the
# cluster): no control socket in $HOME unless one is asked for.
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]


class JsonAccessLogger(Logger):
    """gunicorn's access log as one JSON object per request, quoted safely whatever the client sent."""

    def access(self, resp, req, environ, request_time) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        atoms = self.atoms(resp, req, environ, request_time)
        entry = {
            "remote_addr": atoms["h"],
            "method": atoms["m"],
            "path": atoms["U"],
            "query": atoms["q"],
            "protocol": atoms["H"],
            "status": resp.status_code,
            "bytes": atoms["B"],
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "request_id": atoms.get("{x-request-id}o", "-"),
            "user_agent": atoms["a"],
            "worker_pid": os.getpid(),
        }
        self.access_log.info(json.dumps(entry))


logger_class = JsonAccessLogger


def on_starting(server):
    """Start every run with an empty metrics directory (old worker files would inflate counts); warn of a
    rate limit that each worker counts on its own."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    # A per-worker rate limit is multiplied by the workers: say so, with the limit that really applies.
    warning = Settings.from_env().rate_limit_scope_warning(server.cfg.workers)
    if warning:
        server.log.warning(warning)


def post_worker_init(worker):
    """Each worker reads the router's catalog in the background, so the usage ledger prices router models."""
    runtime = getattr(worker.wsgi, "extensions", {}).get("contexis")
    if runtime is not None:
        runtime.meter.prices.start()


def child_exit(server, worker):
    """Drop a dead worker's live gauges so /metrics reflects the workers that remain."""
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)

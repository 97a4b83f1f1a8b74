"""gunicorn settings for the Contexis runtime, used by `ctx serve` and the container alike.

Values come from the usual variables so operators tune them without editing
this file; `GUNICORN_CMD_ARGS` and `ctx serve` flags still override them.
"""

import os
import shutil
import tempfile

# Prometheus multiprocess mode must be chosen before prometheus_client is first
# imported, so the directory is settled here, at the top of the master's config.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="contexis-metrics-")

from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
worker_class = "gthread"
# Sized for the runtime's usual load, waiting on a model (docs/benchmarks.md, measurement 3): a waiting
# request holds one thread, so a pod serves workers x threads calls at once. 2 x 128 keeps 200 clients of
# a 1 s model at > 90 % of the model's rate in ~140 MB, and costs nothing on render-only requests.
# Settings.threads (app/config.py) defaults to the same value: it sizes each worker's model connection pool.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "128"))
# A worker may wait on the model for the whole HF deadline: keep the watchdog above it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "150"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def on_starting(server):
    """Start every run with an empty metrics directory: old worker files would inflate counts."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    """Drop a dead worker's live gauges so /metrics reflects the workers that remain."""
    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)

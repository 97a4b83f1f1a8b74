"""Metrics, traces and logs: what operators see of the runtime, with no Flask in it.

Each app owns a `RuntimeMetrics` with its own registry, so the HTTP metrics of
prometheus-flask-exporter and the `cmp_*` series are served together from
`/metrics` (and tests can build many apps without colliding registrations).
In gunicorn's multiprocess mode the exporter reads every worker's files instead.
The request-side hooks (HTTP metrics, Flask spans, the access log) are
`app.web.telemetry`.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.config import Settings

_setup_lock = threading.Lock()
_tracing_ready = False

# Inference takes seconds, not milliseconds: buckets reach well past the default 10 s.
_INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)


class RuntimeMetrics:
    """The runtime's own Prometheus series, in a registry owned by one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # prometheus-flask-exporter's two request series, by their names and labels (dashboards know them),
        # recorded here with children bound once per label set instead of looked up on every request.
        self.http_duration = Histogram(
            "flask_http_request_duration_seconds",
            "Flask HTTP request duration in seconds",
            ["method", "url_rule", "status"],
            registry=self.registry,
        )
        self.http_total = Counter(
            "flask_http_request_total", "Total number of HTTP requests", ["method", "status"], registry=self.registry
        )
        self.hf_latency = Histogram(
            "cmp_hf_inference_latency_seconds",
            "Latency of Hugging Face inference calls, retries included; a streamed call until its last token.",
            ["model"],
            buckets=_INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.hf_errors = Counter(
            "cmp_hf_inference_errors_total",
            "Failed Hugging Face inference calls by upstream status or failure kind.",
            ["code"],
            registry=self.registry,
        )
        self.hf_tokens = Counter(
            "cmp_hf_tokens_total",
            "Tokens the endpoint reported using, by kind (prompt or completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.hf_time_to_first_token = Histogram(
            "cmp_hf_time_to_first_token_seconds",
            "Time from sending a streaming inference call to its first text delta.",
            ["model"],
            buckets=_INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.hf_embed_latency = Histogram(
            "cmp_hf_embed_latency_seconds",
            "Latency of Hugging Face embedding calls (a batch of chunks, or one query), retries included.",
            ["model"],
            buckets=_INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.hf_embed_errors = Counter(
            "cmp_hf_embed_errors_total",
            "Failed Hugging Face embedding calls by upstream status or failure kind.",
            ["code"],
            registry=self.registry,
        )
        self.prompt_render = Histogram(
            "cmp_prompt_render_duration_seconds",
            "Time to render a prompt template.",
            ["component"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.rate_limit_storage_errors = Counter(
            "cmp_rate_limit_storage_errors",
            "Rate-limit storage failures (down, hung past its timeout); the request was answered (fail open).",
            registry=self.registry,
        )
        self.memory_search = Histogram(
            "cmp_memory_search_duration_seconds",
            "Time to search a component's memory.",
            ["component"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.memory_search_errors = Counter(
            "cmp_memory_search_errors_total",
            "Memory searches that failed (unreadable or corrupt store), by component.",
            ["component"],
            registry=self.registry,
        )
        self.guardrail_actions = Counter(
            "cmp_guardrail_actions_total",
            "What the guardrails did: redact, block, flag or drop, by guardrail and stage (in, out).",
            ["guardrail", "action", "stage"],
            registry=self.registry,
        )
        self.model_cost = Counter(
            "cmp_model_cost_usd",
            "What model calls cost in USD (calls whose model has a price), by the model asked and the context.",
            ["model", "context"],
            registry=self.registry,
        )
        self.budget_rejections = Counter(
            "cmp_budget_rejections",
            "Requests and model calls refused because a budget of CMP_BUDGETS is spent (tenant, key or default).",
            ["scope"],
            registry=self.registry,
        )
        self.budget_used_ratio = Gauge(
            "cmp_budget_used_ratio",
            "Share of each configured budget spent in its period, from the usage ledger (default: its most spent "
            "tenant).",
            ["scope", "name", "limit"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "cmp_tool_calls_total",
            "Context tool calls the runtime ran, by tool and outcome (ok, error, timeout, invalid).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.tool_duration = Histogram(
            "cmp_tool_call_duration_seconds",
            "Time to run one context tool call (HTTP, MCP or builtin).",
            ["tool"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.mcp_list_errors = Counter(
            "cmp_mcp_list_errors_total",
            "Failed tool listings of an MCP server (down, slow, refusing), by host:port; its tools fail as results.",
            ["server"],
            registry=self.registry,
        )
        self.model_fallbacks = Counter(
            "cmp_model_fallbacks_total",
            "A context's chain passed over one model for the next (`none` when it was the last), by why.",
            ["from_model", "to_model", "reason"],
            registry=self.registry,
        )
        # The most recent write of any live worker wins: with a shared state, the worker that saw the circuit
        # last tells it; with a per-process one, the last worker to open or close it.
        self.model_circuit_open = Gauge(
            "cmp_model_circuit_open",
            "1 while a model's circuit is open (its calls skipped until a trial call succeeds), 0 otherwise.",
            ["model"],
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.model_state_errors = Counter(
            "cmp_model_state_errors",
            "Model circuit storage (CMP_STATE_URL) failures; the circuits were kept in the process (fail open).",
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "cmp_cache_requests",
            "Requests to a context that caches answers, by what the cache did: hit, semantic-hit, miss, bypass.",
            ["context", "result"],
            registry=self.registry,
        )
        self.cache_saved_tokens = Counter(
            "cmp_cache_saved_tokens",
            "Tokens (prompt and completion) the cached answers served would have cost again.",
            ["context"],
            registry=self.registry,
        )
        self.cache_saved_usd = Counter(
            "cmp_cache_saved_usd",
            "What the answers served from the cache cost when they were generated, in USD (priced models only).",
            ["context"],
            registry=self.registry,
        )
        self.cache_storage_errors = Counter(
            "cmp_cache_storage_errors",
            "Response cache failures (CMP_CACHE_URL down, hung past its timeout, locked); answered as misses.",
            registry=self.registry,
        )
        # Outside multiprocess mode the app's registry is what /metrics serves: the process is its own server.
        self.registry.register(ProcessTreeCollector(multiprocess=False))
        self._children: dict[tuple[MetricWrapperBase, tuple[object, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *values: object) -> Any:
        """`metric.labels(*values)`, bound once per label set: `labels()` checks and locks on every call, and
        the series on a request's path are observed on every request."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_request(self, method: str, rule: str, status: int, seconds: float) -> None:
        """One answered request: its duration by route and status, and the count."""
        self.child(self.http_duration, method, rule, status).observe(seconds)
        self.child(self.http_total, method, status).inc()


class ProcessTreeCollector:
    """CPU and resident memory of the server's processes, read from /proc at scrape time.

    prometheus_client's process collector does not work in multiprocess mode (each
    scrape would describe whichever worker answered). In multiprocess mode (a
    pre-fork server such as gunicorn) this reports the parent, `role="master"`,
    and each of its children, `role="worker"`, labelled by `pid`; otherwise the
    process itself, `role="main"`. Forked workers share pages with the master, so
    the sum of resident memory overstates the pod's. Nothing is reported without /proc.
    """

    _TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    _PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, multiprocess: bool) -> None:
        self.multiprocess = multiprocess

    def _processes(self) -> list[tuple[int, str]]:
        if not self.multiprocess:
            return [(os.getpid(), "main")]
        master = os.getppid()
        return [(master, "master"), *((pid, "worker") for pid in sorted(_children(master)))]

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "cmp_process_cpu_seconds",
            "User and system CPU time of the server's processes (gunicorn master and workers), seconds.",
            labels=["pid", "role"],
        )
        rss = GaugeMetricFamily(
            "cmp_process_resident_memory_bytes",
            "Resident memory of the server's processes (gunicorn master and workers), bytes.",
            labels=["pid", "role"],
        )
        for pid, role in self._processes():
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat, open(f"/proc/{pid}/statm", "rb") as statm:
                    fields = stat.read().rsplit(b")", 1)[1].split()
                    pages = int(statm.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone, or no /proc here
            # Fields after "(comm)": state is fields[0], utime and stime are stat's 14th and 15th.
            cpu.add_metric([str(pid), role], (int(fields[11]) + int(fields[12])) / self._TICKS)
            rss.add_metric([str(pid), role], pages * self._PAGE)
        yield cpu
        yield rss


def _children(pid: int) -> set[int]:
    """The child processes of `pid` (the kernel's list when it keeps one, else a scan of /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return {int(child) for child in listed.read().split()}
    except OSError:
        pass
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    if int(stat.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


# The id of the request being served (`app.web.telemetry` sets it), for log lines written below the web layer.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_second: tuple[int, str] = (-1, "")


def iso_timestamp(seconds: float) -> str:
    """`seconds` since the epoch as `2026-01-31T12:00:00.123Z`; the date part is formatted once per second."""
    global _second
    whole = int(seconds)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((seconds - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log pipelines need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": iso_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class AccessLog:
    """The one JSON line per request, as `JsonFormatter` writes records, without a record or a write per request.

    The request's thread only builds the line (orjson) and queues it; a thread of the process's own writes
    the queue to stderr every `interval` seconds, in writes of whole lines of at most `PIPE_BUF` bytes (a
    pipe keeps each such write whole among other processes' writes). Writing per request cost a `logging`
    record and a system call that gave up the GIL: ~0.1 ms of CPU per request under gunicorn's threads
    (docs/benchmarks.md). The queue is written at exit; a process killed outright loses at most `interval`.
    Past `max_queued` lines (stderr not keeping up), the request's thread writes the queue itself, as a
    `logging` handler would: memory stays bounded and nothing is dropped. Only the `contexis.access`
    logger's level applies (`CMP_LOG_LEVEL` above INFO turns the lines off); its handlers and filters do not.
    """

    NAME = "contexis.access"
    PIPE_BUF = 4096

    def __init__(self, interval: float = 0.05, max_queued: int = 10_000) -> None:
        self.interval = interval
        self.max_queued = max_queued
        self._logger = logging.getLogger(self.NAME)
        self._lines: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._write_lock = threading.Lock()
        atexit.register(self.flush)
        os.register_at_fork(after_in_child=self._forked)

    def write(self, fields: dict[str, Any]) -> None:
        """Queue the line of one answered request (`fields` after the usual ts, level, logger and message)."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        entry = {"ts": iso_timestamp(time.time()), "level": "INFO", "logger": self.NAME, "message": "request"}
        entry.update(fields)
        self._lines.append(orjson.dumps(entry, default=str) + b"\n")
        if len(self._lines) > self.max_queued:
            self.flush()
        elif not self._wake.is_set():
            if self._writer is None or not self._writer.is_alive():
                self._start()
            self._wake.set()

    def flush(self) -> None:
        """Write every queued line now (at exit, and for whoever must read them at once)."""
        with self._write_lock:
            batch = b""
            while self._lines:
                line = self._lines.popleft()
                if batch and len(batch) + len(line) > self.PIPE_BUF:
                    _write_stderr(batch)
                    batch = b""
                batch += line
            if batch:
                _write_stderr(batch)

    def _start(self) -> None:
        with self._write_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._run, name="contexis-access-log", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval)  # let a batch gather
            self._wake.clear()
            self.flush()

    def _forked(self) -> None:
        """A forked child (a gunicorn worker) has no writer thread yet, and its parent's lines are not its own."""
        self._lines.clear()
        self._wake = threading.Event()
        self._writer = None
        self._write_lock = threading.Lock()


def _write_stderr(data: bytes) -> None:
    """`data` to stderr in one system call where it is a file (so a pipe keeps a write of up to PIPE_BUF whole),
    through the stream where it is not (a test's capture); nowhere, quietly, when stderr is closed or gone."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.flush()  # what logging wrote through the stream goes first
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        fd = -1
    try:
        if fd < 0:
            stream.write(data.decode())
            stream.flush()
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except (OSError, ValueError):
        pass  # stderr closed: logging would have reported it to that same stderr


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON (once per process)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level)


# One per process: its lines go where the process's stderr goes.
access_log = AccessLog()


def tracing_enabled() -> bool:
    """True when spans are recorded: a real tracer provider is installed, not OpenTelemetry's no-op default."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def configure_tracing(settings: Settings) -> None:
    """Install the process's tracer provider and the requests instrumentation, once.

    Nothing is exported unless `OTEL_TRACES_EXPORTER` asks for it; a provider
    installed earlier (by a test or an operator's wrapper) is left in place.
    Without a provider the instrumentations are not installed: they would build
    attributes, contexts and no-op spans on every request for nothing to see.
    """
    global _tracing_ready
    with _setup_lock:
        if _tracing_ready:
            return
        _tracing_ready = True
        _install_provider(settings)
        if tracing_enabled():
            RequestsInstrumentor().instrument()


def _install_provider(settings: Settings) -> None:
    """The tracer provider `OTEL_TRACES_EXPORTER` asks for, if any."""
    if settings.traces_exporter in ("", "none"):
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if settings.traces_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        logging.getLogger(__name__).warning(
            "unknown OTEL_TRACES_EXPORTER, traces are not exported",
            extra={"fields": {"exporter": settings.traces_exporter}},
        )
        return
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

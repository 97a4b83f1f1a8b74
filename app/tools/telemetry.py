"""What operators see of one tool call: an `execute_tool {name}` span, `cmp_tool_*` metrics and one JSON log line.

None of them holds the call's arguments or result (they may carry personal data), nor its URL or headers (they
may carry secrets): the tool's name, kind, call id, outcome and duration only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from app.observability import RuntimeMetrics
from app.tools.base import OK, ToolResult

log = logging.getLogger("contexis.tools")
_tracer = trace.get_tracer(__name__)
# The metric label of a name the model made up: one series, however many names it invents.
UNKNOWN_TOOL = "unknown"


def observed_call(
    metrics: RuntimeMetrics,
    name: str,
    kind: str,
    call_id: str,
    request_id: str,
    parent: otel_context.Context,
    run: Callable[[], ToolResult],
) -> tuple[ToolResult, float]:
    """`run()` inside its span (a child of `parent`, the request's, whichever thread runs it), counted, timed
    and logged; the result and its duration in milliseconds. A name the context does not define comes as
    `UNKNOWN_TOOL`: what a model makes up is neither a series nor logged."""
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function" if kind != "mcp" else "extension",
        "contexis.tool.kind": kind,
    }
    started = time.perf_counter()
    with _tracer.start_as_current_span(f"execute_tool {name}", context=parent, attributes=attributes) as span:
        result = run()
        span.set_attribute("contexis.tool.outcome", result.outcome)
        if result.outcome != OK:
            span.set_attribute("error.type", result.outcome)
            span.set_status(Status(StatusCode.ERROR, result.outcome))
    seconds = time.perf_counter() - started
    metrics.child(metrics.tool_calls, name, result.outcome).inc()
    metrics.child(metrics.tool_duration, name).observe(seconds)
    fields = {"tool": name, "kind": kind, "outcome": result.outcome, "ms": round(seconds * 1000, 1)}
    log.info("tool call", extra={"fields": {**fields, "request_id": request_id}})
    return result, seconds * 1000

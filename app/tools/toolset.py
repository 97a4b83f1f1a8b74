"""A context's tools, built once per version of its file, and running a model's calls of them concurrently.

`Toolbox.of(context)` is None for a context without `tools` (the request pays one dict look-up). A `Toolset`
holds the HTTP and builtin tools and the MCP servers; `offer()` lists what the model is offered now (an MCP
server's tools from its cached listing). `run()` runs a step's calls on the process's tool threads, each within
its timeout and the request's deadline, and yields them as they finish.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context

from app.config import Settings
from app.contexts import DEFAULT_MAX_TOOL_STEPS, tool_entries
from app.observability import RuntimeMetrics
from app.providers.base import ToolCall
from app.tools.base import INVALID, TIMEOUT, CallContext, Tool, ToolResult, decode_arguments, failure
from app.tools.builtin import BUILTINS
from app.tools.http import HttpSession, HttpTool
from app.tools.telemetry import UNKNOWN_TOOL, observed_call

if TYPE_CHECKING:
    from app.tools.mcp import McpServer

# Tool calls in flight at once in one process, over every request; past it calls wait their turn (within
# their deadline).
MAX_TOOL_THREADS = 32
# What an answer's degraded header says when an MCP server's tools could not be listed.
MCP_DEGRADED = "mcp-unavailable"
# Toolsets kept: one per version of each context file in use (an edited file builds a new one).
_MAX_TOOLSETS = 256


@dataclass(frozen=True)
class Offer:
    """What the model is offered in one request: the tools by name, their definitions, why some are missing."""

    tools: dict[str, Tool]
    definitions: tuple[dict[str, Any], ...]
    degraded: str = ""


@dataclass(frozen=True)
class Ran:
    """One call that ran: the model's call, what it read back, how long it took."""

    call: ToolCall
    name: str
    result: ToolResult
    ms: float

    def record(self) -> dict[str, Any]:
        """How an answer lists the call: `{"name", "ok", "ms"}`."""
        return {"name": self.name, "ok": self.result.ok, "ms": round(self.ms)}


@dataclass
class Toolset:
    """The tools of one version of one context."""

    static: dict[str, Tool]
    servers: list[McpServer]
    max_steps: int
    metrics: RuntimeMetrics
    _pool: ToolThreads = field(repr=False)

    def offer(self, context: CallContext) -> Offer:
        tools = dict(self.static)
        degraded = False
        for server in self.servers:
            listed, failed = server.tools(context)
            degraded |= failed
            for tool in listed:
                tools.setdefault(tool.name, tool)  # a context's own tool wins over a server's of the same name
        definitions = tuple(tool.definition() for tool in tools.values())
        return Offer(tools, definitions, MCP_DEGRADED if degraded else "")

    def run(self, offer: Offer, calls: Sequence[ToolCall], context: CallContext) -> Iterator[Ran]:
        """Each call run (concurrently when several), yielded as it finishes; one still running at the
        request's deadline is a timeout result (its thread is bounded by the tool's own timeout)."""
        parent = otel_context.get_current()
        futures = {
            self._pool.get().submit(self._one, offer, call, context, parent): call for call in calls
        }  # fmt: skip
        pending = dict(futures)
        try:
            for future in concurrent.futures.as_completed(futures, timeout=max(context.remaining(), 0)):
                del pending[future]
                yield future.result()
        except TimeoutError:
            for future, call in pending.items():
                if future.done():  # ended just as the wait did
                    yield future.result()
                    continue
                future.cancel()
                name = _name(call)
                label = name if name in offer.tools else UNKNOWN_TOOL
                yield Ran(call, label, failure("no answer before the request's deadline", TIMEOUT), 0.0)

    def _one(self, offer: Offer, call: ToolCall, context: CallContext, parent: otel_context.Context) -> Ran:
        name = _name(call)
        tool = offer.tools.get(name)
        call_id = str(call.get("id", ""))
        if tool is None:
            known = ", ".join(offer.tools) or "none"

            def unknown() -> ToolResult:
                return failure(f"no tool named {name[:64]!r}; the tools are: {known}", INVALID)

            result, ms = observed_call(
                self.metrics, UNKNOWN_TOOL, UNKNOWN_TOOL, call_id, context.request_id, parent, unknown
            )
            return Ran(call, UNKNOWN_TOOL, result, ms)
        arguments, problem = decode_arguments(call.get("function", {}).get("arguments"))

        def run() -> ToolResult:
            if arguments is None:
                return failure(problem, INVALID)
            try:
                return tool.call(arguments, context)
            except Exception:  # noqa: BLE001 - a tool's own bug is a result the model reads, never a 500
                return failure("the tool failed unexpectedly")

        result, ms = observed_call(self.metrics, name, tool.kind, call_id, context.request_id, parent, run)
        return Ran(call, name, result, ms)


def _name(call: ToolCall) -> str:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else ""


class ToolThreads:
    """The process's tool threads, started on first use (in the worker) and anew after a fork."""

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def get(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(MAX_TOOL_THREADS, "contexis-tool")
        return self._executor

    def _forked(self) -> None:
        self._executor = None
        self._lock = threading.Lock()


class Toolbox:
    """The toolsets of one runtime's contexts, each built once per version of its context."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._http = HttpSession(settings.threads)
        self._pool = ToolThreads()
        # By the resolved context's identity: the context store hands out the same dict until a file changes.
        self._built: dict[int, tuple[dict[str, Any], Toolset]] = {}
        self._lock = threading.Lock()

    def of(self, context: dict[str, Any]) -> Toolset | None:
        """The context's toolset; None when it has no tools."""
        if not context.get("tools"):
            return None
        built = self._built.get(id(context))
        if built is not None and built[0] is context:
            return built[1]
        toolset = self._build(context)
        with self._lock:
            if len(self._built) >= _MAX_TOOLSETS:
                self._built.pop(next(iter(self._built)))
            self._built[id(context)] = (context, toolset)
        return toolset

    def _build(self, context: dict[str, Any]) -> Toolset:
        static: dict[str, Tool] = {}
        servers: list[McpServer] = []
        for kind, spec in tool_entries(context):
            if kind == "http":
                static[spec["name"]] = HttpTool(spec, self.settings, self._http)
            elif kind == "mcp":
                from app.tools.mcp import McpServer  # the SDK takes half a second to import: only when used

                servers.append(McpServer(spec, self.settings, self.metrics))
            else:
                static[spec["builtin"]] = BUILTINS[spec["builtin"]](spec)
        max_steps = (context.get("guardrails") or {}).get("max_tool_steps", DEFAULT_MAX_TOOL_STEPS)
        return Toolset(static, servers, max_steps, self.metrics, self._pool)

    def close(self) -> None:
        self._http.close()

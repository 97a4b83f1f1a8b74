"""MCP tools: every tool (or the allow-listed ones) of an MCP server, over streamable HTTP, with the official SDK.

The SDK is asynchronous and the runtime is not: one event-loop thread per process (`EventLoop`, started on first
use, so it is born in the gunicorn worker; after a fork the child starts its own) runs every MCP call, and the
request's thread waits for it within the call's timeout and the request's deadline, then cancels it. Each call
is a session of its own (connect, initialize, call, close), because each carries its request's `X-Request-ID`
and `X-Contexis-Tenant` headers. The tool list is kept per process for `CMP_MCP_LIST_TTL` seconds (a failed
listing for a few seconds, so a server that is down is not asked on every request). A server that is down makes
its tools fail as results: the request goes on, `/readyz` stays ready, the answer says it is degraded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import orjson
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from opentelemetry import context as otel_context

from app.config import Settings
from app.contexts import DEFAULT_TOOL_TIMEOUT
from app.observability import RuntimeMetrics
from app.tools.base import (
    INVALID,
    NO_PARAMETERS,
    TIMEOUT,
    ArgumentCheck,
    CallContext,
    ToolResult,
    expand_env,
    failure,
    function_definition,
)

log = logging.getLogger(__name__)
# httpx2 logs every request's URL at INFO, and a tool's URL may hold a secret (`${VAR}`); the SDK's own errors
# are reported here as results and a warning of ours, without their text.
logging.getLogger("httpx2").setLevel(logging.WARNING)
logging.getLogger("mcp").setLevel(logging.CRITICAL)
T = TypeVar("T")
# Seconds a failed listing is remembered: the server is asked again after it, not on every request meanwhile.
LIST_RETRY_SECONDS = 5.0
# Past its deadline, the waiting thread gives the loop this long to cancel the call before it leaves.
_CANCEL_GRACE = 0.5


class EventLoop:
    """The process's asyncio loop for MCP, in a daemon thread; `run` bounds each coroutine by a timeout."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _ready(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            with self._lock:
                if self._loop is None:
                    loop = asyncio.new_event_loop()
                    threading.Thread(target=loop.run_forever, name="contexis-mcp", daemon=True).start()
                    self._loop = loop
        return self._loop

    def run(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        """`make()`'s result within `timeout` seconds; `TimeoutError` (the call cancelled) past it. The caller's
        trace context goes with it, so the SDK's spans nest under the tool call's."""
        parent = otel_context.get_current()

        async def bounded() -> T:
            token = otel_context.attach(parent)
            try:
                return await asyncio.wait_for(make(), timeout)
            finally:
                otel_context.detach(token)

        future = asyncio.run_coroutine_threadsafe(bounded(), self._ready())
        try:
            return future.result(timeout + _CANCEL_GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def _forked(self) -> None:
        """The parent's loop thread does not exist in a child: the child starts its own on first use."""
        self._loop = None
        self._lock = threading.Lock()


event_loop = EventLoop()


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every MCP connection, built once per process: building one loads the CA bundle, ~80 ms
    of CPU that each call (a session of its own) would otherwise pay, for http:// servers too."""
    return httpx2.create_ssl_context(trust_env=False)


class _CappedStream(httpx2.AsyncByteStream):
    """An answer's body that fails past `cap` bytes (the SDK caps SSE events, not JSON answers)."""

    def __init__(self, inner: httpx2.AsyncByteStream, cap: int, transport: _CappedTransport) -> None:
        self._inner = inner
        self._cap = cap
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._cap:
                self._transport.tripped = True
                raise httpx2.StreamError(f"answer larger than {self._cap} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport, every answer's body capped; `tripped` once one went past the cap."""

    def __init__(self, cap: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport(verify=_tls(), trust_env=False)
        self._cap = cap
        self.tripped = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        response.stream = _CappedStream(stream, self._cap, self)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class McpServer:
    """One `mcp:` entry of a context's `tools`: where the server is, what may be called, how long it may take."""

    def __init__(self, spec: dict[str, Any], settings: Settings, metrics: RuntimeMetrics) -> None:
        mcp = spec["mcp"]
        self.url = expand_env(mcp["url"])
        parts = urlsplit(self.url)
        # How metrics and logs name the server: its host and port, never a path or credentials.
        self.label = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "unknown"
        self.allowed: tuple[str, ...] = tuple(mcp.get("tools", ()))
        self.timeout: float = mcp.get("timeout", DEFAULT_TOOL_TIMEOUT)
        self.max_bytes = settings.tool_max_response_bytes
        self.ttl = settings.mcp_list_ttl
        self.connect_timeout = settings.hf_connect_timeout
        self.metrics = metrics
        self._headers = {name: expand_env(value) for name, value in mcp.get("headers", {}).items()}
        self._listed: tuple[float, list[McpTool], bool] | None = None  # (until, tools, listing failed)
        # "auto" probes for the 2026 protocol first; a server found to speak an older one is not probed again.
        self._mode = "auto"
        self._lock = threading.Lock()

    def tools(self, context: CallContext) -> tuple[list[McpTool], bool]:
        """The server's tools as the model is offered them, and whether the listing failed (then the allow-list's
        names are offered, and their calls fail as results)."""
        listed = self._listed
        if listed is None or time.monotonic() >= listed[0]:
            # Another request listing now holds the lock up to the server's timeout: wait no longer than this
            # request's deadline, then go on with the last listing (or the allow-list's names, failing).
            if not self._lock.acquire(timeout=max(context.remaining(), 0)):
                return (listed[1], listed[2]) if listed else (self._fallback(), True)
            try:
                listed = self._listed
                if listed is None or time.monotonic() >= listed[0]:
                    listed = self._listed = self._list(context)
            finally:
                self._lock.release()
        return listed[1], listed[2]

    def _fallback(self) -> list[McpTool]:
        """The allow-list's names, offered when the server's own list is not known (their calls fail as results)."""
        return [McpTool(self, name, "", NO_PARAMETERS) for name in self.allowed]

    def _list(self, context: CallContext) -> tuple[float, list[McpTool], bool]:
        timeout = min(self.timeout, max(context.remaining(), 0.001))
        try:
            listed = event_loop.run(lambda: self._list_async(context), timeout)
        except Exception as exc:  # noqa: BLE001 - whatever the server or the SDK did, its tools fail as results
            self.metrics.child(self.metrics.mcp_list_errors, self.label).inc()
            log.warning("MCP server unavailable", extra={"fields": {"server": self.label, "error": _kind(exc)}})
            return time.monotonic() + min(LIST_RETRY_SECONDS, self.ttl), self._fallback(), True
        tools = [
            McpTool(self, tool.name, tool.description or "", tool.input_schema or NO_PARAMETERS)
            for tool in listed
            if not self.allowed or tool.name in self.allowed
        ]
        return time.monotonic() + self.ttl, tools, False

    async def _list_async(self, context: CallContext) -> list[Any]:
        async with self._client(context) as client:
            tools: list[Any] = []
            cursor: str | None = None
            for _ in range(20):  # pages: a server that never stops paging is cut off
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            return tools

    def call(self, name: str, arguments: dict[str, Any], context: CallContext) -> ToolResult:
        bound = min(self.timeout, context.remaining())
        if bound <= 0:
            return failure("no time left before the request's deadline", TIMEOUT)
        try:
            result = event_loop.run(lambda: self._call_async(name, arguments, context), bound)
        except TimeoutError:
            return failure(f"no answer within {bound:.3g}s", TIMEOUT)
        except _TooLarge:
            return failure(f"answer larger than {self.max_bytes} bytes")
        except Exception as exc:  # noqa: BLE001 - a broken server or session is the model's to read, not a 500
            return failure(f"the MCP server failed ({_kind(exc)})")
        text = "\n".join(_text(block) for block in result.content)
        if result.structured_content is not None and not text:
            text = orjson.dumps(result.structured_content).decode()
        if len(text.encode()) > self.max_bytes:
            return failure(f"answer larger than {self.max_bytes} bytes")
        if result.is_error:
            return failure(text or "the tool failed")
        return ToolResult(text)

    async def _call_async(self, name: str, arguments: dict[str, Any], context: CallContext) -> Any:
        async with self._client(context) as client:
            return await client.call_tool(name, arguments)

    @asynccontextmanager
    async def _client(self, context: CallContext) -> AsyncIterator[Client]:
        headers = {**self._headers, "X-Request-ID": context.request_id, "X-Contexis-Tenant": context.tenant_id}
        timeout = httpx2.Timeout(self.timeout, connect=min(self.connect_timeout, self.timeout))
        capped = _CappedTransport(self.max_bytes)
        try:
            async with httpx2.AsyncClient(headers=headers, timeout=timeout, transport=capped, trust_env=False) as http:
                transport = streamable_http_client(self.url, http_client=http, max_sse_event_size=self.max_bytes)
                async with Client(transport, read_timeout_seconds=self.timeout, cache=None, mode=self._mode) as client:
                    if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                        self._mode = "legacy"
                    yield client
        except Exception:
            if capped.tripped:
                raise _TooLarge from None
            raise


class _TooLarge(Exception):
    """An answer of the MCP server went past CMP_TOOL_MAX_RESPONSE_BYTES."""


class McpTool:
    """One tool of an MCP server, as listed by it."""

    kind = "mcp"

    def __init__(self, server: McpServer, name: str, description: str, parameters: dict[str, Any]) -> None:
        self.server = server
        self.name = name
        self.description = description
        self.parameters = parameters
        self._check = ArgumentCheck(parameters)

    def definition(self) -> dict[str, Any]:
        return function_definition(self.name, self.description, self.parameters)

    def call(self, arguments: dict[str, Any], context: CallContext) -> ToolResult:
        problem = self._check.problem(arguments)
        if problem:
            return failure(problem, INVALID)
        return self.server.call(self.name, arguments, context)


def _text(block: Any) -> str:
    """A content block as the model reads it: text as is, anything else (an image, a resource) as JSON."""
    text = getattr(block, "text", None)
    if isinstance(text, str):
        return text
    dump = getattr(block, "model_dump_json", None)
    return dump(by_alias=True, exclude_none=True) if dump else str(block)


def _kind(exc: BaseException) -> str:
    """What failed, by the innermost exception's type (anyio wraps failures in groups); never its text, which
    may hold the URL."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__

"""HTTP tools: a function the model calls, sent to the operator's URL with the model's arguments.

The scheme, host and port are the operator's alone: arguments fill path segments (percent-encoded, `.` and
`..` refused, so `../` cannot climb the path) and the query or JSON body, never the origin; a redirect is
followed only on the same origin. The answer is read within `CMP_TOOL_MAX_RESPONSE_BYTES` and the call's
timeout; a failure is a result the model reads, never a failed request. Headers may hold secrets (`${VAR}`):
they are sent, never logged, and no message names them or the URL.
"""

from __future__ import annotations

import threading
import time
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

import orjson
import requests
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from requests.adapters import HTTPAdapter

from app.config import Settings
from app.contexts import DEFAULT_TOOL_TIMEOUT, PLACEHOLDER
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

MAX_REDIRECTS = 3
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# How much of an error answer's body the model reads: enough for an API's explanation.
_ERROR_EXCERPT = 1000


class HttpTool:
    """One `http:` entry of a context's `tools`."""

    kind = "http"

    def __init__(self, spec: dict[str, Any], settings: Settings, session: HttpSession) -> None:
        http = spec["http"]
        self.name: str = spec["name"]
        self.description: str = spec.get("description", "")
        self.parameters: dict[str, Any] = spec.get("parameters") or NO_PARAMETERS
        self.method: str = http.get("method", "GET")
        self.timeout: float = http.get("timeout", DEFAULT_TOOL_TIMEOUT)
        self.max_bytes = settings.tool_max_response_bytes
        self.connect_timeout = settings.hf_connect_timeout
        parts = urlsplit(expand_env(http["url"]))
        self.origin = (parts.scheme, parts.netloc)
        self._path = parts.path or "/"
        self._query = parts.query
        self._path_arguments = frozenset(PLACEHOLDER.findall(self._path))
        self._headers = {name: expand_env(value) for name, value in http.get("headers", {}).items()}
        self._check = ArgumentCheck(self.parameters)
        self._session = session

    def definition(self) -> dict[str, Any]:
        return function_definition(self.name, self.description, self.parameters)

    def call(self, arguments: dict[str, Any], context: CallContext) -> ToolResult:
        problem = self._check.problem(arguments)
        if problem:
            return failure(problem, INVALID)
        try:
            path = self._fill(arguments)
        except ValueError as exc:
            return failure(str(exc), INVALID)
        rest = {name: value for name, value in arguments.items() if name not in self._path_arguments}
        query, body = self._query, None
        if self.method in _BODY_METHODS:
            body = orjson.dumps(rest)
        elif rest:
            query = "&".join(filter(None, (query, urlencode(_query_pairs(rest)))))
        url = urlunsplit((*self.origin, path, query, ""))
        headers = {
            **self._headers,
            "X-Request-ID": context.request_id,
            "X-Contexis-Tenant": context.tenant_id,
            "Accept": "application/json, text/plain;q=0.9, */*;q=0.1",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        deadline_at = min(time.monotonic() + self.timeout, context.deadline_at)
        return self._send(url, headers, body, deadline_at)

    def _fill(self, arguments: dict[str, Any]) -> str:
        """The path with each `{name}` replaced by its argument, percent-encoded as one segment."""

        def segment(match: Any) -> str:
            name = match.group(1)
            if name not in arguments or arguments[name] is None:
                raise ValueError(f"{name}: required to build the URL")
            value = arguments[name]
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            return quote(text, safe="")

        path = PLACEHOLDER.sub(segment, self._path)
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError("arguments: '.' and '..' cannot be path segments")
        return path

    def _send(self, url: str, headers: dict[str, str], body: bytes | None, deadline_at: float) -> ToolResult:
        method = self.method
        for _ in range(MAX_REDIRECTS + 1):
            remaining = deadline_at - time.monotonic()
            if remaining <= 0:
                return failure(f"no answer within {self.timeout:g}s", TIMEOUT)
            try:
                # The `execute_tool` span stands for the call: the requests instrumentation's own span would
                # carry the URL, whose path and query hold the model's arguments.
                with suppress_http_instrumentation():
                    response = self._session.get().request(
                        method,
                        url,
                        headers=headers,
                        data=body,
                        timeout=(min(self.connect_timeout, remaining), remaining),
                        allow_redirects=False,
                        stream=True,
                    )
            except requests.Timeout:
                return failure(f"no answer within {self.timeout:g}s", TIMEOUT)
            except requests.RequestException as exc:
                return failure(f"could not reach the tool's server ({type(exc).__name__})")
            with response:
                location = response.headers.get("Location") if response.is_redirect else None
                if location is None:
                    return self._read(response, deadline_at)
            target = urljoin(url, location)
            if urlsplit(target)[:2] != self.origin:
                return failure("the tool's server redirected to another host, which is not followed", status=502)
            url = target
            if response.status_code not in (307, 308):
                method, body = "GET", None
                headers = {name: value for name, value in headers.items() if name != "Content-Type"}
        return failure(f"more than {MAX_REDIRECTS} redirects", status=502)

    def _read(self, response: requests.Response, deadline_at: float) -> ToolResult:
        """The answer within the byte cap and the deadline; a non-2xx status is a failure with its excerpt."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return failure(f"answer larger than {self.max_bytes} bytes", status=response.status_code)
        data = b""
        try:
            for piece in response.iter_content(64 * 1024):
                data += piece
                if len(data) > self.max_bytes:
                    return failure(f"answer larger than {self.max_bytes} bytes", status=response.status_code)
                if time.monotonic() > deadline_at:
                    return failure(f"no answer within {self.timeout:g}s", TIMEOUT)
        except requests.RequestException as exc:
            if isinstance(exc, requests.ConnectionError) and "timed out" in str(exc).lower():
                return failure(f"no answer within {self.timeout:g}s", TIMEOUT)
            return failure(f"the answer broke off ({type(exc).__name__})")
        text = data.decode("utf-8", errors="replace")
        if 200 <= response.status_code < 300:
            return ToolResult(text or '{"ok": true}')
        return failure(text[:_ERROR_EXCERPT] or f"HTTP {response.status_code}", status=response.status_code)


def _query_pairs(arguments: dict[str, Any]) -> list[tuple[str, str]]:
    """Arguments as a query string's pairs: a list repeats its key, JSON stands for what is not a scalar."""
    pairs = []
    for name, value in arguments.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, str):
                pairs.append((name, item))
            else:
                pairs.append((name, orjson.dumps(item).decode()))
    return pairs


class HttpSession:
    """The process's one session for HTTP tools, made on first use (in the worker, not the master).

    No environment: a ~/.netrc must not add credentials, and tools are the operator's own hosts. Cookies a
    tool's server sets are never kept: each call is the caller's alone.
    """

    def __init__(self, pool_size: int) -> None:
        self.pool_size = pool_size
        self._session: requests.Session | None = None
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    session = requests.Session()
                    session.trust_env = False
                    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=self.pool_size, max_retries=0)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
                    self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

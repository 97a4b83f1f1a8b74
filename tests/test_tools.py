"""Context tools, piece by piece: the format's validation, HTTP tools against a real local backend, and the MCP
client against real MCP servers of both SDK majors (2.x in the venv, 1.x as servers in the field run)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from helpers import McpProcess, ToolBackend, free_port, run

from app.config import Settings
from app.contexts import ContextStore
from app.errors import ContextInvalid
from app.observability import RuntimeMetrics
from app.tools.base import INVALID, OK, TIMEOUT, ArgumentCheck, CallContext, ToolResult
from app.tools.http import HttpSession, HttpTool
from app.tools.mcp import McpServer
from app.tools.toolset import Toolset, ToolThreads

SECRET = "orders-SECRET-token-0123456789"


def write_context(root: Path, tools: str, name: str = "Bot", extra: str = "") -> Path:
    path = root / "contexts" / name / f"{name.lower()}.ctx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"name: {name}\n{extra}tools:\n{tools}")
    return path


def call_context(seconds: float = 10, tenant: str = "acme") -> CallContext:
    return CallContext("req-123", tenant, time.monotonic() + seconds)


# -- the format ---------------------------------------------------------------------------------------------


VALID_TOOLS = """\
  - name: order_status
    description: Shipping status of an order
    parameters: {type: object, properties: {order_id: {type: string}}, required: [order_id]}
    http:
      method: GET
      url: "https://orders.internal/orders/{order_id}"
      headers: {Authorization: "Bearer ${ORDERS_TOKEN}"}
      timeout: 5
  - mcp:
      url: "http://warehouse:9000/mcp"
      tools: [stock_level]
  - builtin: memory_search
"""


def test_a_context_with_the_three_kinds_of_tools_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", SECRET)
    write_context(tmp_path, VALID_TOOLS, extra="guardrails: {max_tool_steps: 3}\n")
    context = ContextStore(tmp_path).resolve("Bot")
    assert len(context["tools"]) == 3
    write_context(tmp_path, "  - memory_search\n", name="Plain")
    assert ContextStore(tmp_path).resolve("Plain")["tools"] == ["memory_search"]


@pytest.mark.parametrize(
    ("tools", "problem"),
    [
        ("  - name: a\n    http: {url: 'https://h/x', method: GET}\n  - name: a\n    http: {url: 'https://h/y'}\n",
         "contexts/Bot/bot.ctx: tools.1: tool 'a' is already defined by tools.0"),
        ("  - builtin: web_search\n", "contexts/Bot/bot.ctx: tools.0.builtin: 'web_search' is not one of"),
        ("  - web_search\n", "contexts/Bot/bot.ctx: tools.0: 'web_search' is not one of ['memory_search']"),
        ("  - name: a\n    http: {url: 'https://h/x', headers: {Authorization: 'Bearer ${UNSET_TOKEN_26}'}}\n",
         "contexts/Bot/bot.ctx: tools.0.http.headers.Authorization: ${UNSET_TOKEN_26} is not set in the environment"),
        ("  - name: a\n    http: {url: 'https://h/orders/{order_id}'}\n",
         "contexts/Bot/bot.ctx: tools.0.http.url: {order_id} is not a property of the tool's parameters"),
        ("  - name: a\n    parameters: {type: object, properties: {host: {type: string}}}\n"
         "    http: {url: 'https://{host}/x'}\n",
         "contexts/Bot/bot.ctx: tools.0.http.url: the scheme, host and port are the operator's"),
        ("  - name: a\n    http: {url: 'ftp://h/x'}\n",
         "contexts/Bot/bot.ctx: tools.0.http.url: 'ftp://h/x' does not match"),
        ("  - name: a\n    http: {url: 'https://h/x', method: TRACE}\n", "contexts/Bot/bot.ctx: tools.0.http.method:"),
        ("  - name: 'has space'\n    http: {url: 'https://h/x'}\n", "contexts/Bot/bot.ctx: tools.0.name: 'has space'"),
        ("  - name: a\n    parameters: {type: 12}\n    http: {url: 'https://h/x'}\n",
         "contexts/Bot/bot.ctx: tools.0.parameters.type:"),
        ("  - description: what\n", "contexts/Bot/bot.ctx: tools.0: needs one of http, mcp, builtin"),
        ("  - mcp: {url: 'http://w/mcp', tools: []}\n",
         "contexts/Bot/bot.ctx: tools.0.mcp.tools: [] should be non-empty"),
        ("  - name: a\n    http: {url: 'https://h/x'}\n    mcp: {url: 'http://w/mcp'}\n",
         "contexts/Bot/bot.ctx: tools.0: Additional properties are not allowed ('mcp' was unexpected)"),
    ],
)  # fmt: skip
def test_tool_problems_name_the_file_and_field(tmp_path: Path, tools: str, problem: str) -> None:
    write_context(tmp_path, tools)
    with pytest.raises(ContextInvalid) as raised:
        ContextStore(tmp_path).resolve("Bot")
    assert problem in raised.value.message


def test_max_tool_steps_is_bounded(tmp_path: Path) -> None:
    write_context(tmp_path, "  - memory_search\n", extra="guardrails: {max_tool_steps: 0}\n")
    with pytest.raises(ContextInvalid, match=r"guardrails\.max_tool_steps: 0 is less than the minimum of 1"):
        ContextStore(tmp_path).resolve("Bot")


def test_ctx_context_validate_reports_tool_problems(tmp_path: Path) -> None:
    write_context(tmp_path, "  - name: a\n    http: {url: 'https://h/x', headers: {X-Key: '${UNSET_TOKEN_26}'}}\n")
    result = run("context", "validate", "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "contexts/Bot/bot.ctx: tools.0.http.headers.X-Key: ${UNSET_TOKEN_26} is not set in the environment"
    )
    ok = run("context", "validate", "--root", str(tmp_path), env={"UNSET_TOKEN_26": "set"})
    assert ok.returncode == 0, ok.stderr


# -- HTTP tools ---------------------------------------------------------------------------------------------


def http_tool(url: str, method: str = "GET", timeout: float = 5, **settings: object) -> HttpTool:
    spec = {
        "name": "order_status",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["order_id"],
        },
        "http": {
            "method": method,
            "url": url,
            "headers": {"Authorization": "Bearer ${ORDERS_TOKEN}"},
            "timeout": timeout,
        },
    }
    return HttpTool(spec, Settings().replace(**settings), HttpSession(4))


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ORDERS_TOKEN", SECRET)
    with ToolBackend() as server:
        yield server


def test_an_http_tool_fills_its_path_and_query_and_sends_the_request_headers(backend: ToolBackend) -> None:
    tool = http_tool(f"{backend.url}/orders/{{order_id}}")
    result = tool.call({"order_id": "A-1", "verbose": True}, call_context())
    assert result.outcome == OK
    assert json.loads(result.content) == {"order": "A-1", "status": "shipped"}
    (seen,) = backend.seen
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/orders/A-1", "verbose=true")
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen["headers"]["X-Request-ID"] == "req-123"
    assert seen["headers"]["X-Contexis-Tenant"] == "acme"


@pytest.mark.parametrize(
    ("order_id", "path"),
    [
        ("../../admin", "/orders/..%2F..%2Fadmin"),
        ("a/b?c=d#e", "/orders/a%2Fb%3Fc%3Dd%23e"),
        ("%2E%2E", "/orders/%252E%252E"),
    ],
)  # fmt: skip
def test_arguments_are_one_encoded_path_segment(backend: ToolBackend, order_id: str, path: str) -> None:
    tool = http_tool(f"{backend.url}/orders/{{order_id}}")
    assert tool.call({"order_id": order_id}, call_context()).outcome == OK
    assert backend.seen[-1]["path"] == path
    assert backend.seen[-1]["query"] == ""


@pytest.mark.parametrize("order_id", ["..", "."])
def test_dot_segments_are_refused_before_anything_is_sent(backend: ToolBackend, order_id: str) -> None:
    result = http_tool(f"{backend.url}/orders/{{order_id}}").call({"order_id": order_id}, call_context())
    assert result.outcome == INVALID
    assert "cannot be path segments" in json.loads(result.content)["error"]
    assert backend.seen == []


def test_a_post_tool_sends_the_other_arguments_as_json(backend: ToolBackend) -> None:
    tool = http_tool(f"{backend.url}/stock/{{order_id}}", method="POST")
    assert tool.call({"order_id": "A-1", "verbose": False}, call_context()).outcome == OK
    assert backend.seen[-1]["body"] == {"verbose": False}
    assert backend.seen[-1]["headers"]["Content-Type"] == "application/json"


def test_arguments_that_do_not_fit_the_schema_are_a_result_the_model_reads(backend: ToolBackend) -> None:
    result = http_tool(f"{backend.url}/orders/{{order_id}}").call({"verbose": "yes"}, call_context())
    assert result.outcome == INVALID
    error = json.loads(result.content)["error"]
    assert "'order_id' is a required property" in error and "verbose: 'yes' is not of type 'boolean'" in error
    assert backend.seen == []


def test_an_error_status_is_a_result_with_the_status(backend: ToolBackend) -> None:
    result = http_tool(f"{backend.url}/fail").call({"order_id": "A-1"}, call_context())
    assert result.outcome == "error"
    body = json.loads(result.content)
    assert body["status"] == 500
    assert "the orders database is down" in body["error"]


def test_a_slow_tool_times_out_as_a_result(backend: ToolBackend) -> None:
    started = time.monotonic()
    result = http_tool(f"{backend.url}/slow", timeout=0.5).call({"order_id": "A-1"}, call_context())
    assert result.outcome == TIMEOUT
    assert time.monotonic() - started < 2.8  # the backend answers after 3 s
    assert json.loads(result.content) == {"error": "no answer within 0.5s"}


def test_the_request_deadline_bounds_a_tool_with_a_longer_timeout(backend: ToolBackend) -> None:
    started = time.monotonic()
    result = http_tool(f"{backend.url}/slow", timeout=30).call({"order_id": "A-1"}, call_context(seconds=0.5))
    assert result.outcome == TIMEOUT
    assert time.monotonic() - started < 2.8  # the backend answers after 3 s


def test_redirects_stay_on_the_operators_origin(backend: ToolBackend) -> None:
    away = http_tool(f"{backend.url}/away").call({"order_id": "A-1"}, call_context())
    assert away.outcome == "error"
    assert "redirected to another host" in json.loads(away.content)["error"]
    moved = http_tool(f"{backend.url}/moved/{{order_id}}").call({"order_id": "B-2"}, call_context())
    assert json.loads(moved.content) == {"order": "B-2", "status": "shipped"}
    assert [seen["path"] for seen in backend.seen] == ["/away", "/moved/B-2", "/orders/B-2"]


def test_a_body_over_the_cap_is_not_read(backend: ToolBackend) -> None:
    result = http_tool(f"{backend.url}/big").call({"order_id": "A-1"}, call_context())
    assert result.outcome == "error"
    assert json.loads(result.content)["error"] == "answer larger than 262144 bytes"


def test_an_unreachable_tool_is_a_result_that_names_no_url_or_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOKEN", SECRET)
    result = http_tool(f"http://127.0.0.1:{free_port()}/orders/{{order_id}}").call({"order_id": "A"}, call_context())
    assert result.outcome == "error"
    assert json.loads(result.content) == {"error": "could not reach the tool's server (ConnectionError)"}


# -- MCP ----------------------------------------------------------------------------------------------------


def mcp_spec(url: str, **extra: object) -> dict:
    return {"mcp": {"url": url, "headers": {"Authorization": "Bearer ${WAREHOUSE_TOKEN}"}, **extra}}


def test_mcp_tools_are_listed_and_called(mcp_server: McpProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAREHOUSE_TOKEN", SECRET)
    server = McpServer(mcp_spec(mcp_server.url), Settings(), RuntimeMetrics())
    tools, failed = server.tools(call_context())
    assert not failed
    by_name = {tool.name: tool for tool in tools}
    assert {"stock_level", "slow_count", "big_report"} <= set(by_name)
    assert by_name["stock_level"].definition()["function"]["parameters"]["required"] == ["sku"]
    result = by_name["stock_level"].call({"sku": "A-1"}, call_context(tenant="globex"))
    assert (result.outcome, json.loads(result.content)) == (OK, {"sku": "A-1", "units": 12})
    headers = mcp_server.seen()[-1]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert (headers["x-request-id"], headers["x-contexis-tenant"]) == ("req-123", "globex")
    # The server's own failure, bad arguments, a slow call and a huge answer are results, not exceptions.
    failing = by_name["stock_level"].call({"sku": "NOPE"}, call_context())
    assert failing.outcome == "error" and "Error executing tool stock_level" in failing.content
    assert by_name["stock_level"].call({"sku": 5}, call_context()).outcome == INVALID
    started = time.monotonic()
    assert by_name["slow_count"].call({"seconds": 5}, call_context(seconds=0.5)).outcome == TIMEOUT
    assert time.monotonic() - started < 3.5  # the tool counts for 5 s
    huge = by_name["big_report"].call({"size": 300_000}, call_context())
    assert json.loads(huge.content) == {"error": "answer larger than 262144 bytes"}


def test_the_allow_list_limits_what_the_model_is_offered(mcp_server: McpProcess) -> None:
    server = McpServer({"mcp": {"url": mcp_server.url, "tools": ["stock_level"]}}, Settings(), RuntimeMetrics())
    tools, _ = server.tools(call_context())
    assert [tool.name for tool in tools] == ["stock_level"]


def test_the_listing_is_cached_for_its_ttl(mcp_server: McpProcess) -> None:
    server = McpServer({"mcp": {"url": mcp_server.url}}, Settings(mcp_list_ttl=300), RuntimeMetrics())
    before = len(mcp_server.seen())
    server.tools(call_context())
    asked = len(mcp_server.seen())
    server.tools(call_context())
    assert len(mcp_server.seen()) == asked > before
    expired = McpServer({"mcp": {"url": mcp_server.url}}, Settings(mcp_list_ttl=0), RuntimeMetrics())
    expired.tools(call_context())
    asked = len(mcp_server.seen())
    expired.tools(call_context())
    assert len(mcp_server.seen()) > asked


def test_an_mcp_server_that_is_down_makes_its_tools_fail_as_results() -> None:
    metrics = RuntimeMetrics()
    url = f"http://127.0.0.1:{free_port()}/mcp"
    server = McpServer({"mcp": {"url": url, "tools": ["stock_level"], "timeout": 2}}, Settings(), metrics)
    started = time.monotonic()
    tools, failed = server.tools(call_context())
    assert failed and [tool.name for tool in tools] == ["stock_level"]
    result = tools[0].call({"sku": "A-1"}, call_context())
    assert result.outcome == "error" and "the MCP server failed" in result.content
    assert time.monotonic() - started < 5
    label = {"server": f"127.0.0.1:{url.split(':')[2].split('/')[0]}"}
    assert metrics.registry.get_sample_value("cmp_mcp_list_errors_total", label) == 1
    # Asked again only after a while: a down server does not cost every request a connection attempt.
    server.tools(call_context())
    assert metrics.registry.get_sample_value("cmp_mcp_list_errors_total", label) == 1


def test_mcp_calls_from_many_threads_share_the_loop(mcp_server: McpProcess) -> None:
    server = McpServer({"mcp": {"url": mcp_server.url}}, Settings(), RuntimeMetrics())
    results: list[str] = []

    def call() -> None:
        results.append(server.call("stock_level", {"sku": "B-2"}, call_context()).content)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert [json.loads(r) for r in results] == [{"sku": "B-2", "units": 0}] * 6


def test_mcp_calls_load_the_ca_bundle_once_per_process_not_per_call(
    mcp_server: McpProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call is a session of its own; a TLS context built for each (the CA bundle read and parsed: ~80 ms of
    CPU) made a call on a loaded machine slower than a 0.5 s tool's timeout."""
    server = McpServer({"mcp": {"url": mcp_server.url}}, Settings(), RuntimeMetrics())
    assert server.call("stock_level", {"sku": "B-2"}, call_context()).outcome == OK  # the process's may be built here
    loads: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(context: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args)
        load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    again = McpServer({"mcp": {"url": mcp_server.url}}, Settings(), RuntimeMetrics())
    for _ in range(3):
        assert again.call("stock_level", {"sku": "B-2"}, call_context()).outcome == OK
    assert again.tools(call_context())[1] is False
    assert loads == []


# -- running a step's calls ---------------------------------------------------------------------------------


class Sleepy:
    """A tool that ignores every deadline (as a buggy one would): the step must not wait for it."""

    kind = "builtin"

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds

    def definition(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "parameters": {"type": "object"}}}

    def call(self, arguments: dict, context: CallContext) -> ToolResult:
        time.sleep(self.seconds)
        return ToolResult('"done"')


def test_a_step_ends_at_the_request_deadline_whatever_a_tool_does() -> None:
    metrics = RuntimeMetrics()
    tools = {"quick": Sleepy("quick", 0), "stuck": Sleepy("stuck", 3)}
    toolset = Toolset(tools, [], 5, metrics, ToolThreads())
    offer = toolset.offer(call_context())
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}} for i, n in
             enumerate(["stuck", "quick", "nope"])]  # fmt: skip
    started = time.monotonic()
    ran = list(toolset.run(offer, calls, call_context(seconds=0.5)))
    assert time.monotonic() - started < 2.5  # not the stuck tool's 3 s
    outcomes = {r.call["id"]: (r.name, r.result.outcome) for r in ran}
    assert outcomes == {"c0": ("stuck", TIMEOUT), "c1": ("quick", OK), "c2": ("unknown", INVALID)}
    assert json.loads(ran[-1].result.content) == {"error": "no answer before the request's deadline"}


def test_a_tool_schemas_ref_to_another_host_is_never_fetched(backend: ToolBackend) -> None:
    """An MCP server's tool schema is checked as it came, but its `$ref`s reach no host: the server checks."""
    check = ArgumentCheck({"type": "object", "properties": {"a": {"$ref": f"{backend.url}/schema"}}})
    assert check.problem({"a": 1}) == ""
    assert backend.seen == []


def test_a_server_that_drips_its_answer_is_cut_off_at_the_timeout(backend: ToolBackend) -> None:
    """Each byte arriving within the read timeout must not keep the tool's thread past its own timeout."""
    started = time.monotonic()
    result = http_tool(f"{backend.url}/drip", timeout=0.5).call({"order_id": "A-1"}, call_context())
    assert result.outcome == TIMEOUT
    assert time.monotonic() - started < 2  # the backend takes 10 s to send its 100 bytes


def test_a_request_waiting_for_another_ones_listing_leaves_at_its_deadline() -> None:
    """A listing of a server that never answers holds its lock for the server's timeout; a request with less time
    left than that must not wait for it past its own deadline."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are queued, never answered
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        server = McpServer({"mcp": {"url": url, "tools": ["stock_level"], "timeout": 3}}, Settings(), RuntimeMetrics())
        first = threading.Thread(target=server.tools, args=(call_context(),))
        first.start()
        time.sleep(0.2)  # the first request is listing, holding the lock
        started = time.monotonic()
        tools, failed = server.tools(call_context(seconds=0.3))
        waited = time.monotonic() - started
        first.join()
    finally:
        silent.close()
    assert waited < 1.5  # not the first listing's 3 s
    assert failed and [tool.name for tool in tools] == ["stock_level"]

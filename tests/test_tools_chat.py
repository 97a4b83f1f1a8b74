"""Context tools through the chat pipeline: the tool loop, both APIs, whole and streamed, against real parts.

The model is fake_hf's `ToolModel` (a real local OpenAI-compatible server that calls the tools the user's message
names, then answers from their results); the tools are a real HTTP backend, real MCP servers (the SDK's, 2.x and
1.x) and the memory of the project; the example project (examples/tools) runs with its own servers.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from fake_hf import FakeHF, Reply, ToolModel
from helpers import (
    EMAIL,
    PLANTED_NOTICE,
    REPO,
    TOKEN,
    McpProcess,
    ToolBackend,
    audit_lines,
    free_port,
    leaks,
    metric,
    run,
    sse_events,
)

from app import create_app
from app.config import Settings
from app.guardrails import Guard

SECRET = "orders-SECRET-token-0123456789"
TOOLS_EXAMPLE = REPO / "examples" / "tools"


def use(name: str, **arguments: Any) -> str:
    """How a user's message makes the ToolModel call a tool."""
    return f"use:{name}{json.dumps(arguments) if arguments else ''}"


def context_file(backend: str, mcp: str, extra: str = "", tools: str = "") -> str:
    return f"""\
name: Desk
role: {{persona: An order desk.}}
tools:
  - name: order_status
    description: Status of an order
    parameters: {{type: object, properties: {{order_id: {{type: string}}}}, required: [order_id]}}
    http:
      url: "{backend}/orders/{{order_id}}"
      headers: {{Authorization: "Bearer ${{ORDERS_TOKEN}}"}}
  - name: flaky
    http: {{url: "{backend}/fail"}}
  - name: slow
    http: {{url: "{backend}/slow", timeout: 0.5}}
  - mcp: {{url: "{mcp}", tools: [stock_level], timeout: 3}}
  - builtin: memory_search
{tools}guardrails:
  max_tool_steps: 3
{extra}memory:
  component: CustomerDocs
"""


@pytest.fixture
def model() -> Iterator[ToolModel]:
    with ToolModel() as server:
        yield server


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[ToolBackend]:
    monkeypatch.setenv("ORDERS_TOKEN", SECRET)
    with ToolBackend() as server:
        yield server


def desk_app(
    project: Path,
    model: ToolModel,
    backend: ToolBackend,
    mcp_url: str,
    guardrails: str = "",
    tools: str = "",
    **settings: Any,
):
    path = project / "contexts" / "Desk" / "desk.ctx"
    path.parent.mkdir(parents=True)
    path.write_text(context_file(backend.url, mcp_url, guardrails, tools))
    prompt = project / "prompts" / "Desk" / "agent_response.md"
    prompt.parent.mkdir(parents=True)
    prompt.write_text("You are {{ context.name }}.\n\nUser: {{ user_input }}\n")
    base = Settings.from_env({"CMP_PROJECT_ROOT": str(project)}, dotenv_path=None)
    model_settings = {"hf_token": TOKEN, "hf_model_id": "m", "hf_endpoint": model.url, "hf_api": "chat-completion"}
    return create_app(base.replace(**{**model_settings, "hf_backoff_factor": 0, **settings}))


@pytest.fixture
def app(project: Path, model: ToolModel, backend: ToolBackend, mcp_server: McpProcess):
    return desk_app(project, model, backend, mcp_server.url)


def ask(app, text: str, **extra: Any):
    return app.test_client().post("/api/v1/chat", json={"context": "Desk", "data": {"user_input": text}, **extra})


def tool_results(model: ToolModel, request: int = -1) -> list[Any]:
    """The tool results the model read in the `request`th call."""
    return [json.loads(m["content"]) for m in model.seen[request]["messages"] if m["role"] == "tool"]


def test_a_single_call_runs_and_the_model_answers_from_its_result(app, model: ToolModel, backend: ToolBackend):
    response = ask(app, use("order_status", order_id="A-1"), tenant_id="acme")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["rendered"] == 'Tool results: {"order": "A-1", "status": "shipped"}'
    assert [(t["name"], t["ok"]) for t in body["tools"]] == [("order_status", True)]
    assert isinstance(body["tools"][0]["ms"], int)
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 8}  # both model calls
    # Every tool is offered; the second call carries the assistant's tool call and the result after the input.
    assert set(model.offered(0)) == {"order_status", "flaky", "slow", "stock_level", "memory_search"}
    roles = [m["role"] for m in model.seen[1]["messages"]]
    assert roles[-3:] == ["user", "assistant", "tool"]
    assert model.seen[1]["messages"][-2]["tool_calls"][0]["function"]["name"] == "order_status"
    (seen,) = backend.seen
    assert seen["headers"]["X-Contexis-Tenant"] == "acme"
    assert seen["headers"]["X-Request-ID"] == body["request_id"]
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_parallel_calls_run_concurrently(app, model: ToolModel, backend: ToolBackend):
    text = " ".join([use("slow"), use("order_status", order_id="B-2"), use("flaky"), use("stock_level", sku="A-1")])
    body = ask(app, text).json
    # All sent at once: one after the other, each would wait for the slow one's 0.5 s timeout.
    arrivals = [seen["at"] for seen in backend.seen]
    assert len(arrivals) == 3 and max(arrivals) - min(arrivals) < 0.4
    # Listed as they finished: the slow one last.
    assert sorted((t["name"], t["ok"]) for t in body["tools"]) == [
        ("flaky", False), ("order_status", True), ("slow", False), ("stock_level", True)
    ]  # fmt: skip
    assert body["tools"][-1]["name"] == "slow"
    results = tool_results(model)
    # The results follow the calls' order, whichever finished first.
    assert [results[0], results[1], results[3]] == [
        {"error": "no answer within 0.5s"},
        {"order": "B-2", "status": "shipped"},
        {"sku": "A-1", "units": 12},
    ]
    assert results[2]["status"] == 500


def test_a_failing_tool_is_a_result_the_model_reads(app, model: ToolModel):
    response = ask(app, use("flaky"))
    assert response.status_code == 200
    assert response.json["tools"][0] == {"name": "flaky", "ok": False, "ms": response.json["tools"][0]["ms"]}
    (result,) = tool_results(model)
    assert result["status"] == 500 and "the orders database is down" in result["error"]
    assert metric(app, "cmp_tool_calls_total", tool="flaky", outcome="error") == 1


def test_encoded_arguments_cannot_leave_the_path(app, model: ToolModel, backend: ToolBackend):
    ask(app, use("order_status", order_id="../../admin?x=1"))
    assert backend.seen[-1]["path"] == "/orders/..%2F..%2Fadmin%3Fx%3D1"
    assert backend.seen[-1]["query"] == ""
    ask(app, use("order_status", order_id=".."))
    assert "cannot be path segments" in tool_results(model)[0]["error"]


def test_an_unknown_tool_and_bad_arguments_are_results(app, model: ToolModel):
    body = ask(app, use("drop_tables") + " " + use("order_status", order_id=5)).json
    assert sorted(t["name"] for t in body["tools"]) == ["order_status", "unknown"]  # as they ended
    unknown, invalid = tool_results(model)
    assert unknown["error"].startswith("no tool named 'drop_tables'; the tools are: order_status, flaky, slow")
    assert invalid == {"error": "order_id: 5 is not of type 'string'"}
    assert metric(app, "cmp_tool_calls_total", tool="unknown", outcome="invalid") == 1
    assert metric(app, "cmp_tool_calls_total", tool="drop_tables", outcome="invalid") == 0


def test_the_step_limit_ends_the_loop_with_a_502_naming_the_tools(app, model: ToolModel):
    response = ask(app, use("order_status", order_id="A-1") + " use:again")
    assert response.status_code == 502
    assert response.json["error"]["code"] == "tool_steps_exceeded"
    assert "3 steps" in response.json["error"]["message"]
    assert "tools called: order_status" in response.json["error"]["message"]
    assert len(model.seen) == 3
    openai = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "Desk", "messages": [{"role": "user", "content": use("stock_level", sku="A-1") + " use:again"}]},
    )
    assert openai.status_code == 502
    assert openai.json["error"]["code"] == "tool_steps_exceeded"
    assert openai.json["error"]["type"] == "server_error"


def test_memory_search_is_the_tenants_own(app, model: ToolModel, project: Path):
    private = project / "acme-only" / "zebra.md"
    private.parent.mkdir()
    private.write_text("# Zebra policy\n\nAcme's zebra crossings are painted every spring.\n")
    ingest = run("memory", "ingest", "--root", str(project), "--component", "CustomerDocs", "--tenant", "acme",
                 str(private.parent))  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr
    ask(app, use("memory_search", query="zebra crossings", top_k=2), tenant_id="acme")
    (found,) = tool_results(model)
    assert [r["source"] for r in found["results"]] == ["acme-only/zebra.md"]
    assert "painted every spring" in found["results"][0]["content"]
    ask(app, use("memory_search", query="zebra crossings"), tenant_id="globex")  # not Acme's documents
    assert tool_results(model) == [{"results": []}]


def ingest(project: Path, tenant: str, name: str, text: str) -> None:
    """`text` as a document of `tenant` in the Desk's memory component."""
    folder = project / f"{tenant}-docs"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    done = run("memory", "ingest", "--root", str(project), "--component", "CustomerDocs", "--tenant", tenant,
               str(folder))  # fmt: skip
    assert done.returncode == 0, done.stderr


GUARDED_TOOLS = """\
  - name: customer
    http: {{url: "{backend}/customer"}}
  - name: notice
    http: {{url: "{backend}/notice"}}
"""
WITHHELD_INJECTION = {
    "error": "the result was withheld by the prompt_injection guardrail: it holds instructions to the assistant"
}
# One step: an API's record with personal data, one with instructions, a document whose address starts a line.
THREE_RESULTS = " ".join([use("customer"), use("notice"), use("memory_search", query="zebra", top_k=1)])


def guarded_desk(project: Path, model: ToolModel, backend: ToolBackend, guardrails: str, **settings: Any):
    """The Desk with the `customer` and `notice` tools, `guardrails`, and acme's document holding an address."""
    ingest(project, "acme", "returns.md", f"# Returns\n\nWrite to\n{EMAIL}\nto return a zebra.\n")
    no_mcp = f"http://127.0.0.1:{free_port()}/mcp"  # not needed here
    tools = GUARDED_TOOLS.format(backend=backend.url)
    return desk_app(project, model, backend, no_mcp, guardrails, tools, **settings)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("pii", ["redact", "block"])
def test_tool_results_pass_the_guardrails_before_the_model_reads_them(
    project: Path, model: ToolModel, backend: ToolBackend, pii: str, stream: bool, caplog
):
    caplog.set_level(logging.INFO, logger="contexis.audit")
    app = guarded_desk(project, model, backend, f"  pii: {pii}\n  prompt_injection: block\n")
    response = ask(app, THREE_RESULTS, tenant_id="acme", stream=stream)
    answered = response.get_data(as_text=True)  # a stream's loop runs as it is read
    assert response.status_code == 200, answered
    customer, notice, found = tool_results(model)  # each still JSON
    if pii == "redact":
        assert customer == {
            "name": "J. Roe", "email": "<EMAIL_ADDRESS>", "card": "<CREDIT_CARD>", "note": "Call:\n<PHONE_NUMBER>"
        }  # fmt: skip
        assert found["results"][0]["content"].endswith("Write to\n<EMAIL_ADDRESS>\nto return a zebra.")
    else:
        assert customer == {"error": "the result was withheld by the pii guardrail: it holds personal data "
                                     "(CREDIT_CARD: 1, EMAIL_ADDRESS: 1, PHONE_NUMBER: 1)"}  # fmt: skip
        assert found == {"error": "the result was withheld by the pii guardrail: it holds personal data "
                                  "(EMAIL_ADDRESS: 1)"}  # fmt: skip
    assert notice == WITHHELD_INJECTION
    seen = json.dumps(model.seen) + answered
    assert leaks(seen) == [] and PLANTED_NOTICE not in seen
    decisions = [(line["guardrail"], line["action"], line["entities"]) for line in audit_lines(caplog)]
    pii_action = "redact" if pii == "redact" else "drop"  # a result left out is no refusal (the blocks alert)
    assert decisions == [
        ("pii", pii_action, {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}),
        ("pii", pii_action, {"EMAIL_ADDRESS": 1}),
        ("prompt_injection", "drop", {"tool_results": 1}),
    ]
    assert {line.get("reason") for line in audit_lines(caplog)} == {"tool_result"}
    assert metric(app, "cmp_guardrail_actions_total", guardrail="pii", action="block", stage="in") == 0


def test_the_classifier_judges_a_steps_results_at_once_without_their_values(
    project: Path, model: ToolModel, backend: ToolBackend
):
    safe = [{"label": "INJECTION", "score": 0.01}, {"label": "SAFE", "score": 0.99}]
    with FakeHF(Reply(body=[safe]), Reply(body=[safe, safe])) as classifier:
        settings = {"pi_model": "some/classifier", "pi_model_endpoint": classifier.url}
        app = guarded_desk(project, model, backend, "  pii: redact\n  prompt_injection: block\n", **settings)
        assert ask(app, THREE_RESULTS, tenant_id="acme").status_code == 200
    request, step = (seen.body["inputs"] for seen in classifier.seen)
    assert request == [THREE_RESULTS]
    # The step's two results the patterns passed, in one call (the notice the patterns caught is not asked about).
    assert len(step) == 2 and "<EMAIL_ADDRESS>" in step[0] and "<EMAIL_ADDRESS>" in step[1]
    assert leaks(json.dumps(step)) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_classifier_failing_closed_mid_loop_refuses_the_answer(
    project: Path, model: ToolModel, backend: ToolBackend, stream: bool
):
    safe = [{"label": "INJECTION", "score": 0.01}, {"label": "SAFE", "score": 0.99}]
    with FakeHF(Reply(body=[safe]), Reply(503, {"error": "loading"})) as classifier:
        settings = {"pi_model": "some/classifier", "pi_model_endpoint": classifier.url, "pi_model_failure": "closed"}
        app = guarded_desk(project, model, backend, "  prompt_injection: block\n", **settings)
        response = ask(app, use("customer"), stream=stream)
        answered = response.get_data(as_text=True)
    if stream:
        assert response.status_code == 200
        (error,) = [data["error"] for event, data in sse_events(answered) if event == "error"]
    else:
        assert response.status_code == 503
        error = response.json["error"]
    assert error["code"] == "guardrail_unavailable"
    assert len(model.seen) == 1  # the result the classifier could not judge never reached the model
    assert EMAIL not in answered


@pytest.mark.parametrize(
    ("guardrails", "screened"),
    [("  deny_output: ['internal']\n  require_citation: false\n", False), ("  pii: redact\n", True)],
    ids=["output-only", "pii"],
)
def test_only_contexts_with_input_guardrails_screen_tool_results(
    project: Path, model: ToolModel, backend: ToolBackend, guardrails: str, screened: bool, monkeypatch
):
    steps: list[int] = []
    check = Guard.check_tool_results

    def counted(guard: Guard, contents: Sequence[str]) -> list[str]:
        steps.append(len(contents))
        return check(guard, contents)

    monkeypatch.setattr(Guard, "check_tool_results", counted)
    app = guarded_desk(project, model, backend, guardrails)
    assert ask(app, use("customer")).status_code == 200
    (customer,) = tool_results(model)
    assert steps == ([1] if screened else [])
    assert (customer["email"] != EMAIL) is screened


def test_the_openai_api_answers_after_the_tools(app, model: ToolModel):
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "Desk", "messages": [{"role": "user", "content": use("stock_level", sku="A-1")}]},
    )
    assert response.status_code == 200, response.json
    message = response.json["choices"][0]["message"]
    assert message["content"] == 'Tool results: {"sku": "A-1", "units": 12}'
    assert "tool_calls" not in message or not message["tool_calls"]
    assert response.json["choices"][0]["finish_reason"] == "stop"


def test_the_native_stream_shows_each_call_before_the_text(app, model: ToolModel):
    response = ask(app, use("order_status", order_id="A-1") + " " + use("flaky"), stream=True)
    assert response.status_code == 200
    events = [data for _, data in sse_events(response)]
    tools = [e for e in events if "tool" in e]
    assert sorted((e["tool"], e["ok"]) for e in tools) == [("flaky", False), ("order_status", True)]
    first_text = next(i for i, e in enumerate(events) if "delta" in e)
    assert all(events.index(e) < first_text for e in tools)
    text = "".join(e["delta"] for e in events if "delta" in e)
    assert text.startswith('Tool results: {"order": "A-1", "status": "shipped"} | {"error":')
    done = events[-1]
    assert done["done"] is True and [t["name"] for t in done["tools"]] == [t["tool"] for t in tools]
    assert "tool_calls" not in done  # the context's own calls are not the client's to run


def test_the_openai_stream_stays_standard(app, model: ToolModel):
    response = app.test_client().post(
        "/v1/chat/completions",
        json={
            "model": "Desk",
            "stream": True,
            "messages": [{"role": "user", "content": use("stock_level", sku="B-2")}],
        },
    )
    assert response.status_code == 200
    chunks = [data for _, data in sse_events(response.get_data(as_text=True).replace("data: [DONE]\n\n", ""))]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any("tool_calls" in d for d in deltas)
    assert "".join(d.get("content", "") for d in deltas) == 'Tool results: {"sku": "B-2", "units": 0}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_mcp_server_that_is_down_degrades_the_answer_not_the_service(
    project: Path, model: ToolModel, backend: ToolBackend
):
    app = desk_app(project, model, backend, f"http://127.0.0.1:{free_port()}/mcp")
    response = ask(app, use("stock_level", sku="A-1"))
    assert response.status_code == 200
    assert response.headers["X-Contexis-Degraded"] == "mcp-unavailable"
    assert "stock_level" in model.offered(0)  # allow-listed: offered, and its calls fail as results
    assert "the MCP server failed" in tool_results(model)[0]["error"]
    assert app.test_client().get("/readyz").status_code == 200


def test_secrets_never_reach_logs_spans_errors_or_answers(
    app, model: ToolModel, spans, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
):
    caplog.set_level(logging.DEBUG)
    private = "patient Jane Doe, born 1970"
    text = " ".join([use("order_status", order_id=private), use("flaky"), use("slow"), use("stock_level", sku=private)])
    body = ask(app, text).json
    lines = [r for r in caplog.records if r.name == "contexis.tools"]
    assert sorted(r.fields["tool"] for r in lines) == ["flaky", "order_status", "slow", "stock_level"]
    assert {r.fields["outcome"] for r in lines} == {"ok", "error", "timeout"}
    finished = spans.get_finished_spans()
    logged = [[r.getMessage(), getattr(r, "fields", {})] for r in caplog.records]
    traced = [[s.name, dict(s.attributes or {}), [dict(e.attributes or {}) for e in s.events]] for s in finished]
    everything = json.dumps([logged, traced, body]) + capsys.readouterr().err
    assert SECRET not in everything
    # Arguments are not traced either: not as given, nor percent-encoded in a URL (no requests span for tools).
    attributes = json.dumps([r.fields for r in lines]) + json.dumps([dict(s.attributes or {}) for s in finished])
    assert private not in attributes and quote(private, safe="") not in attributes
    tool_spans = [s for s in spans.get_finished_spans() if s.name.startswith("execute_tool ")]
    assert {s.name for s in tool_spans} == {
        "execute_tool order_status", "execute_tool flaky", "execute_tool slow", "execute_tool stock_level"
    }  # fmt: skip
    by_name = {s.name: s for s in tool_spans}
    span = by_name["execute_tool order_status"]
    assert span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert span.attributes["gen_ai.tool.name"] == "order_status"
    assert span.attributes["gen_ai.tool.call.id"] == "call_1"
    assert by_name["execute_tool slow"].attributes["error.type"] == "timeout"
    request_span = next(s for s in finished if s.name == "POST /api/v1/chat")
    assert all(s.parent is not None and s.parent.trace_id == request_span.context.trace_id for s in tool_spans)
    # The MCP SDK's own spans (on the event-loop thread) nest under the MCP tool's span.
    mcp_call = by_name["execute_tool stock_level"]
    sdk = [s for s in finished if s.name == "MCP send tools/call stock_level"]
    assert sdk and all(s.parent is not None and s.parent.span_id == mcp_call.context.span_id for s in sdk)


def test_a_context_without_tools_offers_none_and_lists_none(project: Path, model: ToolModel):
    base = Settings.from_env({"CMP_PROJECT_ROOT": str(project)}, dotenv_path=None)
    app = create_app(base.replace(hf_token=TOKEN, hf_model_id="m", hf_endpoint=model.url, hf_api="chat-completion"))
    body = app.test_client().post("/api/v1/chat", json={"context": "SupportBot", "data": {"user_input": "hi"}}).json
    assert body["rendered"] == "No tools needed."
    assert "tools" not in body
    assert "tools" not in model.seen[0]


# -- the example project, from a fresh copy, with its own servers --------------------------------------------


@pytest.fixture
def example(tmp_path: Path, model: ToolModel) -> Iterator[tuple[Any, dict[str, str]]]:
    project = tmp_path / "tools"
    shutil.copytree(TOOLS_EXAMPLE, project)
    orders, warehouse = free_port(), free_port()
    env = {"ORDERS_TOKEN": SECRET, "ORDERS_HOST": f"127.0.0.1:{orders}", "WAREHOUSE_HOST": f"127.0.0.1:{warehouse}"}
    procs = [
        subprocess.Popen([sys.executable, str(project / "servers" / "orders.py"), str(orders)], env=env),
        subprocess.Popen([sys.executable, str(project / "servers" / "warehouse.py"), str(warehouse)]),
    ]
    try:
        for port in (orders, warehouse):
            _wait_for_port(port)
        yield project, env
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on {port}")


def test_the_example_answers_through_both_apis_whole_and_streamed(
    example, model: ToolModel, monkeypatch: pytest.MonkeyPatch
):
    project, env = example
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    validate = run("context", "validate", "--root", str(project), env=env)
    assert validate.returncode == 0, validate.stderr
    ingest = run(
        "memory", "ingest", "--root", str(project), "--component", "ShopDocs", str(project / "docs" / "ShopDocs")
    )
    assert ingest.returncode == 0, ingest.stderr
    base = Settings.from_env({"CMP_PROJECT_ROOT": str(project)}, dotenv_path=None)
    app = create_app(base.replace(hf_token=TOKEN, hf_model_id="m", hf_endpoint=model.url, hf_api="chat-completion"))
    client = app.test_client()
    text = " ".join([use("order_status", order_id="A-1001"), use("stock_level", sku="SKU-1"),
                     use("memory_search", query="returns")])  # fmt: skip
    native = client.post("/api/v1/chat", json={"context": "OrderDesk", "data": {"user_input": text}}).json
    assert sorted(t["name"] for t in native["tools"]) == ["memory_search", "order_status", "stock_level"]
    assert all(t["ok"] for t in native["tools"])
    assert '"carrier": "DHL"' in native["rendered"] and '"units": 42' in native["rendered"]
    assert "returns.md" in native["rendered"]
    assert "restock" not in model.offered(0)  # not allow-listed
    streamed = client.post("/api/v1/chat", json={"context": "OrderDesk", "stream": True, "data": {"user_input": text}})
    events = [data for _, data in sse_events(streamed)]
    assert sorted(e["tool"] for e in events if "tool" in e) == ["memory_search", "order_status", "stock_level"]
    openai_body = {"model": "OrderDesk", "messages": [{"role": "user", "content": text}]}
    whole = client.post("/v1/chat/completions", json=openai_body).json
    assert '"units": 42' in whole["choices"][0]["message"]["content"]
    raw = client.post("/v1/chat/completions", json={**openai_body, "stream": True}).get_data(as_text=True)
    chunks = [data for _, data in sse_events(raw.replace("data: [DONE]\n\n", ""))]
    assert '"units": 42' in "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    # `ctx test`: expect_tool_calls and expect_no_tool_calls, judged on what the runtime called.
    tested = run("test", "--root", str(project), env={**env, "HF_TOKEN": TOKEN, "HF_MODEL_ID": "m",
                 "HF_ENDPOINT": model.url, "HF_API": "chat-completion"})  # fmt: skip
    assert tested.returncode == 1, tested.stdout + tested.stderr  # the model stand-in calls no tool for plain words
    assert "looks-the-order-up" in tested.stdout and "expected calls of ['order_status']" in tested.stdout
    assert "greets-without-tools" in tested.stdout


CLIENT_TOOL = {
    "type": "function",
    "function": {"name": "open_ticket", "description": "The client's own", "parameters": {"type": "object"}},
}


def test_client_tools_and_context_tools_in_one_request(app, model: ToolModel):
    def complete(content: str):
        body = {"model": "Desk", "tools": [CLIENT_TOOL], "messages": [{"role": "user", "content": content}]}
        return app.test_client().post("/v1/chat/completions", json=body)

    # A context tool: run by the runtime; the model was offered the client's tool and the context's.
    ours = complete(use("stock_level", sku="A-1"))
    assert ours.status_code == 200, ours.json
    assert ours.json["choices"][0]["message"]["content"] == 'Tool results: {"sku": "A-1", "units": 12}'
    assert model.offered(0)[0] == "open_ticket" and "stock_level" in model.offered(0)
    # A client tool: the answer is the client's to act on, with only its own calls.
    theirs = complete(use("open_ticket") + " " + use("stock_level", sku="A-1"))
    assert theirs.status_code == 200, theirs.json
    choice = theirs.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["open_ticket"]
    assert len(model.seen) == 3  # no second model call for that answer: nothing ran


def test_a_context_with_tools_needs_a_model_route_that_carries_them(project: Path, model: ToolModel, backend):
    app = desk_app(project, model, backend, "http://127.0.0.1:9/mcp", hf_api="text-generation")
    response = ask(app, "hello")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "unsupported_by_endpoint"
    assert model.seen == []


def test_the_step_limit_in_streams(app, model: ToolModel):
    # OpenAI: no event is sent before the loop ends, so the limit is still a 502.
    openai = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "Desk", "stream": True, "messages": [{"role": "user", "content": use("flaky") + " use:again"}]},
    )
    assert openai.status_code == 502
    assert openai.json["error"]["code"] == "tool_steps_exceeded"
    # Native: the calls were already shown, so the stream ends with the error event.
    native = ask(app, use("flaky") + " use:again", stream=True)
    assert native.status_code == 200
    events = sse_events(native)
    assert [data["tool"] for _, data in events if "tool" in data] == ["flaky"] * 3
    assert events[-1] == (
        "error",
        {"error": {"code": "tool_steps_exceeded", "message": events[-1][1]["error"]["message"]}},
    )


def test_the_loop_shares_one_deadline(project: Path, model: ToolModel, backend: ToolBackend):
    app = desk_app(project, model, backend, "http://127.0.0.1:9/mcp", hf_deadline=0.4)
    ask(app, "hello")  # the first request of a process with MCP tools imports the SDK and lists them
    model.seen.clear()
    started = time.monotonic()
    # The tool (0.5 s timeout, a backend slower still) is cut at the deadline: the model's next call has no time.
    response = ask(app, use("slow"))
    assert time.monotonic() - started < 2.8  # the backend answers after 3 s
    assert response.status_code == 504, response.json
    assert response.json["error"]["code"] == "hf_timeout"


def test_a_context_with_a_model_chain_runs_its_tools_through_the_chain(project: Path, model: ToolModel, backend):
    app = desk_app(project, model, backend, "http://127.0.0.1:9/mcp")
    path = project / "contexts" / "Desk" / "desk.ctx"
    path.write_text(path.read_text() + "model:\n  id: org/chained-model\n")
    response = ask(app, use("order_status", order_id="C-3"))
    assert response.status_code == 200, response.json
    assert response.json["rendered"] == 'Tool results: {"order": "C-3", "status": "shipped"}'
    assert response.headers["X-Contexis-Model"] == "org/chained-model"
    assert [seen["model"] for seen in model.seen] == ["org/chained-model"] * 2
    streamed = ask(app, use("order_status", order_id="C-4"), stream=True)
    assert [data["tool"] for _, data in sse_events(streamed) if "tool" in data] == ["order_status"]

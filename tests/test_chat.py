"""The chat route: the guide's request, every error status, tenants and path safety."""

from __future__ import annotations

import json

import pytest
from helpers import GUIDE_BODY

from app import create_app


def post(client, body, **kwargs):
    return client.post("/api/v1/chat", json=body, **kwargs)


def test_guide_request_renders_the_prompt_with_the_user_input(client):
    response = post(client, GUIDE_BODY)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"rendered", "model", "sources", "request_id"}
    assert body["sources"] == []
    assert "User: hello" in body["rendered"]
    assert "A friendly, concise customer support agent" in body["rendered"]
    assert "Tone: warm and professional" in body["rendered"]
    assert body["model"] is None
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_component_defaults_to_context_and_unknown_keys_are_ignored(client):
    response = post(client, {"context": "SupportBot", "data": {"user_input": "hi"}, "extra": [1, 2]})
    assert response.status_code == 200
    assert "User: hi" in response.get_json()["rendered"]


def test_incoming_request_id_is_kept_when_safe_and_replaced_otherwise(client):
    kept = post(client, GUIDE_BODY, headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    replaced = post(client, GUIDE_BODY, headers={"X-Request-ID": "bad id <script>"})
    assert replaced.headers["X-Request-ID"] != "bad id"
    assert len(replaced.headers["X-Request-ID"]) == 32


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.headers.get("X-Request-ID")
    error = response.get_json()["error"]
    assert error["code"] == code
    assert "Traceback" not in error["message"]
    return error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"null"])
def test_malformed_json_is_400(client, raw):
    response = client.post("/api/v1/chat", data=raw, content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("route", ["/api/v1/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_400(client, route, constant):
    # Python's json would read them, and a temperature of NaN would be sent on to the model.
    raw = '{"context": "SupportBot", "model": "SupportBot", "messages": [{"role": "user", "content": "hi"}], '
    raw += f'"data": {{"user_input": "hi"}}, "temperature": {constant}}}'
    response = client.post(route, data=raw, content_type="application/json")
    assert response.status_code == 400
    assert f"{constant.lstrip('-')} is not valid JSON" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("route", ["/api/v1/chat", "/v1/chat/completions"])
@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_numbers_past_a_float_s_range_are_400(client, route, number):
    # They would read as infinity: as null to JSON writers (the cache key too), as inf in a template.
    raw = '{"context": "SupportBot", "model": "SupportBot", "messages": [{"role": "user", "content": "hi"}], '
    raw += f'"data": {{"user_input": "hi", "limit": {number}}}}}'
    response = client.post(route, data=raw, content_type="application/json")
    assert_error(response, 400, "invalid_json")
    assert f"{number} is out of range" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({}, "context"),
        ({"context": 5}, "context"),
        ({"context": "SupportBot", "top_k": -1}, "top_k"),
        ({"context": "SupportBot", "top_k": "3"}, "top_k"),
        ({"context": "SupportBot", "top_k": True}, "top_k"),
        ({"context": "SupportBot", "data": "x"}, "data"),
        ({"context": "SupportBot", "query": 7}, "query"),
    ],
)
def test_wrong_types_are_400_naming_the_field(client, body, field):
    message = assert_error(post(client, body), 400, "invalid_request")
    assert message.startswith(field) or f"{field}:" in message or "'context' is a required property" in message


@pytest.mark.parametrize("field", ["context", "component", "tenant_id", "prompt_file"])
@pytest.mark.parametrize(
    "name", ["..", ".", "../etc/passwd", "a/b", "a\\b", "/abs", "x" * 129, "%2e%2e", "ü", "SupportBot\n", "\n"]
)
def test_unsafe_names_are_400(client, field, name):
    body = {**GUIDE_BODY, field: name}
    message = assert_error(post(client, body), 400, "invalid_request")
    assert field in message


def test_unknown_context_component_and_prompt_file_are_404(client):
    assert_error(post(client, {**GUIDE_BODY, "context": "Nope", "component": "SupportBot"}), 404, "context_not_found")
    assert_error(post(client, {**GUIDE_BODY, "component": "Nope"}), 404, "component_not_found")
    assert_error(post(client, {**GUIDE_BODY, "prompt_file": "nope.md"}), 404, "prompt_not_found")


def test_prompt_file_picks_another_template_of_the_component(client, project):
    (project / "prompts" / "SupportBot" / "short.md").write_text("Short: {{ user_input }} for {{ context.name }}")
    response = post(client, {**GUIDE_BODY, "prompt_file": "short.md"})
    assert response.get_json()["rendered"] == "Short: hello for SupportBot"


def test_missing_template_variable_is_422_naming_it(client):
    message = assert_error(post(client, {**GUIDE_BODY, "data": {}}), 422, "missing_variable")
    assert "'user_input'" in message


def test_broken_template_is_500_naming_file_and_line(client, project):
    (project / "prompts" / "SupportBot" / "broken.md").write_text("line one\nline two {{ oops(\n")
    message = assert_error(post(client, {**GUIDE_BODY, "prompt_file": "broken.md"}), 500, "template_error")
    assert message.startswith("prompts/SupportBot/broken.md:2:")


def test_template_runtime_error_names_the_line(client, project):
    (project / "prompts" / "SupportBot" / "div.md").write_text("ok\n{{ 1 // 0 }}\n")
    message = assert_error(post(client, {**GUIDE_BODY, "prompt_file": "div.md"}), 500, "template_error")
    assert message.startswith("prompts/SupportBot/div.md:2:")


def test_sandbox_blocks_python_internals(client, project):
    (project / "prompts" / "SupportBot" / "evil.md").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert_error(post(client, {**GUIDE_BODY, "prompt_file": "evil.md"}), 500, "template_error")


def test_templates_cannot_modify_the_cached_context(client, project):
    (project / "prompts" / "SupportBot" / "mutate.md").write_text("{{ context.role.limitations.append('x') }}")
    assert_error(post(client, {**GUIDE_BODY, "prompt_file": "mutate.md"}), 500, "template_error")
    rendered = post(client, GUIDE_BODY).get_json()["rendered"]
    assert "\n- x\n" not in rendered


def test_edited_template_is_picked_up_without_restart(client, project):
    path = project / "prompts" / "SupportBot" / "live.md"
    path.write_text("v1 {{ user_input }}")
    assert post(client, {**GUIDE_BODY, "prompt_file": "live.md"}).get_json()["rendered"] == "v1 hello"
    path.write_text("version two {{ user_input }}")
    import os

    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert post(client, {**GUIDE_BODY, "prompt_file": "live.md"}).get_json()["rendered"] == "version two hello"


def test_symlink_out_of_the_root_is_not_followed(client, project, tmp_path):
    secret = tmp_path / "secret.md"
    secret.write_text("TOP SECRET")
    (project / "prompts" / "SupportBot" / "link.md").symlink_to(secret)
    assert_error(post(client, {**GUIDE_BODY, "prompt_file": "link.md"}), 404, "prompt_not_found")


def test_body_over_the_limit_is_413(settings):
    client = create_app(settings.replace(max_body_bytes=200)).test_client()
    body = {**GUIDE_BODY, "data": {"user_input": "x" * 500}}
    assert_error(post(client, body), 413, "request_entity_too_large")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/api/v1/chat")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_tenant_override_wins_and_other_tenants_get_the_shared_context(client, project):
    tenant_dir = project / "contexts" / "tenants" / "acme"
    tenant_dir.mkdir(parents=True)
    (tenant_dir / "SupportBot.ctx").write_text(
        "extends: ../../SupportBot/supportbot.ctx\nrole:\n  persona: Acme's own concierge.\n"
    )
    acme = post(client, {**GUIDE_BODY, "tenant_id": "acme"}).get_json()["rendered"]
    other = post(client, {**GUIDE_BODY, "tenant_id": "globex"}).get_json()["rendered"]
    assert "Acme's own concierge." in acme
    assert "Tone: warm and professional" in acme  # inherited from the shared context
    assert "Acme's own concierge." not in other
    assert "A friendly, concise customer support agent" in other


def test_reserved_variables_win_over_data(client, project):
    (project / "prompts" / "SupportBot" / "vars.md").write_text("{{ tenant_id }}|{{ query }}|{{ results|length }}")
    body = {**GUIDE_BODY, "tenant_id": "t1", "query": "q", "data": {"tenant_id": "spoof", "results": [1, 2]}}
    assert post(client, {**body, "prompt_file": "vars.md"}).get_json()["rendered"] == "t1|q|0"


def test_invalid_context_is_500_naming_file_and_field(client, project):
    ctx = project / "contexts" / "SupportBot" / "supportbot.ctx"
    ctx.write_text(ctx.read_text().replace("temperature: 0.3", "temperature: hot"))
    message = assert_error(post(client, GUIDE_BODY), 500, "invalid_context")
    assert "contexts/SupportBot/supportbot.ctx: guardrails.temperature:" in message


def test_unexpected_errors_are_json_without_traceback(client, monkeypatch, caplog):
    from app.observability import JsonFormatter
    from app.runtime import Runtime

    def boom(self, request, request_id=""):
        raise RuntimeError("internal detail /etc/secret")

    monkeypatch.setattr(Runtime, "answer", boom)
    response = post(client, GUIDE_BODY)
    message = assert_error(response, 500, "internal_error")
    assert "secret" not in message
    # The operator's side: the traceback is logged, with the request id the client was given.
    (record,) = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert "RuntimeError: internal detail" in line["exc_info"]


def test_integral_float_top_k_is_taken_as_an_integer(client, settings, project):
    # Found by fuzzing: JSON Schema accepts 2.0 as an integer, and memory search then failed with a 500.
    from app.memory import open_memory

    open_memory(settings).store("CustomerDocs").ingest([project / "docs" / "CustomerDocs"])
    body = {**GUIDE_BODY, "component": "CustomerDocs", "prompt_file": "search_response.md", "query": "refund"}
    response = post(client, {**body, "top_k": 2.0})
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["sources"]) == 2

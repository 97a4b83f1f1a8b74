"""Template variables on both APIs: `{{ key }}` and `{{ data.key }}`, defaults for what OpenAI clients never send."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from app.config import Settings


def with_template(project: Path, text: str):
    (project / "prompts" / "SupportBot" / "agent_response.md").write_text(text)
    return create_app(Settings(project_root=project)).test_client()


def both(client, data: dict | None = None) -> tuple[tuple[int, object], tuple[int, object]]:
    """(status, rendered or error) of the native and the OpenAI chat, each with the question 'hello'."""
    data = data or {}
    native = client.post("/api/v1/chat", json={"context": "SupportBot", "data": {"user_input": "hello", **data}})
    body = {"model": "SupportBot", "messages": [{"role": "user", "content": "hello"}]}
    if data:
        body["data"] = data
    openai = client.post("/v1/chat/completions", json=body)
    native_out = native.get_json().get("rendered") or native.get_json()["error"]
    openai_json = openai.get_json()
    openai_out = openai_json["choices"][0]["message"]["content"] if openai.status_code == 200 else openai_json["error"]
    return (native.status_code, native_out), (openai.status_code, openai_out)


def test_a_template_written_with_defaults_serves_both_apis_from_messages_alone(project):
    client = with_template(
        project,
        'Say "{{ data.text | default(user_input) }}" in {{ lang | default("English") }}.\n',
    )
    assert both(client) == ((200, 'Say "hello" in English.\n'), (200, 'Say "hello" in English.\n'))
    # A client that sends the variables (OpenAI: `data` in the body, extra_body in the SDK) overrides the defaults.
    sent = {"text": "bonjour", "lang": "French"}
    assert both(client, sent) == ((200, 'Say "bonjour" in French.\n'), (200, 'Say "bonjour" in French.\n'))


@pytest.mark.parametrize(("template", "variable"), [("{{ lang }}", "lang"), ("{{ data.text }}", "data.text")])
def test_a_variable_without_a_default_is_a_422_that_says_the_two_ways_on(project, template, variable):
    client = with_template(project, template + "\n")
    _, (status, error) = both(client)
    assert status == 422
    assert error["code"] == "missing_variable"
    assert error["message"] == (
        f"prompts/SupportBot/agent_response.md needs the variable {variable!r}, which the request's data does not "
        f"provide: give it a default in the template ({{{{ {variable} | default(...) }}}}) or send "
        f"data.{variable.removeprefix('data.')}; an OpenAI client sends only messages (the last user message is "
        "user_input) unless it adds data in its body (extra_body)"
    )


def test_a_missing_attribute_of_the_context_is_still_the_template_s_fault(project):
    client = with_template(project, "{{ context.role.nosuch }}\n")
    (status, error), _ = both(client)
    assert status == 500 and error["code"] == "template_error"

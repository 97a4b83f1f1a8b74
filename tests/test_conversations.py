"""Conversations on `/api/v1/chat`: `messages` reach the template, and a chat model as turns; they are bounded."""

from __future__ import annotations

import pytest
from fake_hf import FakeHF, Reply, Stream, chat_events, completion
from helpers import GUIDE_BODY, MODEL, SUPPORTBOT_SYSTEM, TOKEN, chat, guardrails_off, sse_events

from app import create_app

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi, I ordered a router."},
    {"role": "assistant", "content": "Thanks! What is your order number?"},
]
BODY = {**GUIDE_BODY, "messages": HISTORY, "data": {"user_input": "It is 1234."}}


def test_the_quickstart_template_renders_earlier_turns_when_no_model_takes_them_as_turns(client):
    rendered = chat(client, BODY).get_json()["rendered"]
    assert rendered.endswith(
        "Conversation so far:\n"
        "System: Be brief.\n"
        "User: Hi, I ordered a router.\n"
        "Assistant: Thanks! What is your order number?\n"
        "\nUser: It is 1234.\nAssistant:\n"
    )
    assert "Conversation so far" not in chat(client).get_json()["rendered"]


def test_a_chat_model_gets_context_system_client_system_turns_then_the_prompt(hf_settings):
    # Keys besides role and content are dropped: history never changes the model, endpoint or token.
    sneaky = {**HISTORY[1], "model": "evil/model", "name": "x", "url": "http://evil.test"}
    with FakeHF(Reply(body=completion("Order 1234 ships today."))) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))
        answer = chat(app, {**BODY, "messages": [HISTORY[0], sneaky, HISTORY[2]]}).get_json()
    assert answer["rendered"] == "Order 1234 ships today."
    seen = fake.seen[0]
    assert (seen.path, seen.body["model"], seen.headers["Authorization"]) == (
        "/v1/chat/completions",
        MODEL,
        f"Bearer {TOKEN}",
    )
    assert seen.body["messages"][:4] == [
        {"role": "system", "content": SUPPORTBOT_SYSTEM},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, I ordered a router."},
        {"role": "assistant", "content": "Thanks! What is your order number?"},
    ]
    prompt = seen.body["messages"][4]
    assert prompt["role"] == "user"
    assert prompt["content"].endswith("\nUser: It is 1234.\nAssistant:\n")
    assert "Conversation so far" not in prompt["content"]
    assert len(seen.body["messages"]) == 5


def test_a_streamed_answer_sends_the_same_turns(hf_settings):
    guardrails_off(hf_settings.project_root)
    with FakeHF(Stream(chat_events(["Ships ", "today."]))) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))
        events = sse_events(chat(app, {**BODY, "stream": True}))
    assert [data.get("delta") for _, data in events[:-1]] == ["Ships ", "today."]
    assert [m["role"] for m in fake.seen[0].body["messages"]] == ["system", "system", "user", "assistant", "user"]


def test_the_text_generation_route_sends_the_template_alone(hf_settings):
    with FakeHF(Reply()) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url))
        assert chat(app, BODY).status_code == 200
    body = fake.seen[0].body
    assert set(body) == {"inputs", "parameters"}
    assert "User: Hi, I ordered a router.\nAssistant: Thanks! What is your order number?\n" in body["inputs"]


@pytest.mark.parametrize(
    ("changes", "messages", "status", "needle"),
    [
        ({"max_messages": 2}, HISTORY, 413, "CMP_MAX_MESSAGES=2"),
        ({"max_string_chars": 30}, HISTORY, 413, "messages.2.content: longer than CMP_MAX_STRING_CHARS=30"),
        ({"max_history_chars": 40}, HISTORY, 413, "CMP_MAX_HISTORY_CHARS=40"),
        ({}, [{"role": "tool", "content": "42"}], 400, "messages.0: 'tool_call_id' is a required property"),
        ({}, [{"role": "robot", "content": "42"}], 400, "messages.0.role"),
        ({}, [{"role": "user"}], 400, "'content' is a required property"),
        ({}, [{"role": "user", "content": ["hi"]}], 400, "messages.0.content"),
        ({}, {"role": "user", "content": "hi"}, 400, "is not of type 'array'"),
    ],
)
def test_history_is_bounded_and_its_roles_checked(settings, changes, messages, status, needle):
    response = chat(create_app(settings.replace(**changes)), {**BODY, "messages": messages})
    assert response.status_code == status
    assert needle in response.get_json()["error"]["message"]

"""Tools and structured output on the native API (`/api/v1/chat`): `tools`, `tool_choice`, `parallel_tool_calls`,
`response_format` and `after` in the body, `tool_calls` in the answer and the stream, in the native shapes."""

from __future__ import annotations

import json

import pytest
from fake_hf import FakeHF, Reply, Stream, chat_events, completion, openai_model, openai_stream
from helpers import GUIDE_BODY, chat, sse_events

from app import create_app

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = {**GUIDE_BODY, "data": {"user_input": "Wear? get_weather(city=Paris) get_weather(city=Rome)"}}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "Person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}


@pytest.fixture
def agent(hf_settings):
    """The app in front of the stand-in model (`fake_hf.openai_model`), with `replies` instead when given."""
    fakes = []

    def start(*replies: Reply | Stream):
        fake = FakeHF(*(replies or (Reply(body=openai_model),))).__enter__()
        fakes.append(fake)
        return fake, create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))

    yield start
    for fake in fakes:
        fake.__exit__(None, None, None)


def test_a_native_request_with_tools_gets_the_calls_and_sends_the_results_back_with_after(agent):
    fake, app = agent()
    first = chat(app, {**ASK, "tools": [WEATHER], "parallel_tool_calls": True}).get_json()
    assert first["finish_reason"] == "tool_calls"
    assert first["rendered"] == ""
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in first["tool_calls"]] == [
        ("call_0_get_weather", {"city": "Paris"}),
        ("call_1_get_weather", {"city": "Rome"}),
    ]
    assert fake.seen[0].body["parallel_tool_calls"] is True
    after = [
        {"role": "assistant", "content": None, "tool_calls": first["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_0_get_weather", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_1_get_weather", "content": "25C"},
    ]
    second = chat(app, {**ASK, "tools": [WEATHER], "after": after}).get_json()
    assert second["rendered"] == "Tool results: call_0_get_weather=18C; call_1_get_weather=25C"
    assert "tool_calls" not in second
    sent = fake.seen[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
    assert sent[2:] == after


def test_native_stream_events_carry_the_tool_call_pieces_and_the_done_event_the_calls(agent):
    _, app = agent(Stream(openai_stream))
    events = sse_events(chat(app, {**ASK, "tools": [WEATHER], "stream": True}))
    pieces = [data["tool_calls"][0] for _, data in events if "tool_calls" in data and "done" not in data]
    assert pieces[0] == {
        "index": 0,
        "id": "call_0_get_weather",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(p["function"]["arguments"] for p in pieces if p["index"] == 1) == '{"city": "Rome"}'
    done = events[-1][1]
    assert done["done"] is True
    assert done["finish_reason"] == "tool_calls"
    assert [c["function"]["arguments"] for c in done["tool_calls"]] == ['{"city": "Paris"}', '{"city": "Rome"}']


def test_a_native_response_format_is_forwarded_and_checked(agent):
    fake, app = agent(Reply(body=openai_model), Reply(body=completion("not json")))
    ok = chat(app, {**GUIDE_BODY, "data": {"user_input": "name=Ada age=36"}, "response_format": PERSON})
    assert json.loads(ok.get_json()["rendered"]) == {"name": "Ada", "age": 36}
    assert fake.seen[0].body["response_format"] == PERSON
    bad = chat(app, {**GUIDE_BODY, "response_format": PERSON})
    assert bad.status_code == 502
    assert bad.get_json()["error"]["code"] == "structured_output_invalid"
    assert set(bad.get_json()["error"]) == {"code", "message"}
    assert len(fake.seen) == 3


def test_a_native_stream_whose_answer_breaks_the_schema_ends_with_an_error_event(agent):
    _, app = agent(Stream(chat_events(['{"name": ', '"Ada"}'])))
    events = sse_events(chat(app, {**GUIDE_BODY, "response_format": PERSON, "stream": True}))
    assert [data["delta"] for _, data in events[:-1]] == ['{"name": ', '"Ada"}']
    name, data = events[-1]
    assert name == "error"
    assert data["error"]["code"] == "structured_output_invalid"
    assert "$: 'age' is a required property" in data["error"]["message"]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"after": [{"role": "tool", "content": "x"}]}, "after.0"),
        ({"n": 2}, None),  # not a native field: ignored like any unknown key
    ],
)
def test_native_tool_fields_are_checked(agent, changes, needle):
    fake, app = agent()
    response = chat(app, {**GUIDE_BODY, **changes})
    if needle is None:
        assert response.status_code == 200
        assert "n" not in fake.seen[0].body
        return
    assert response.status_code == 400
    assert needle in response.get_json()["error"]["message"]
    assert fake.seen == []


def test_an_invalid_json_schema_is_a_400_before_any_call(agent):
    fake, app = agent()
    broken = {"type": "json_schema", "json_schema": {"name": "X", "schema": {"type": "nonsense"}}}
    response = chat(app, {**GUIDE_BODY, "response_format": broken})
    assert response.status_code == 400
    assert "not a valid JSON Schema" in response.get_json()["error"]["message"]
    assert fake.seen == []

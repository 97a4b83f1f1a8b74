"""What agents need, relayed exactly over `/v1/chat/completions`: tools and their results, structured output,
`n`, logprobs and OpenAI's other fields, whole and streamed, driven by the real `openai` SDK.

The upstream is the stand-in model of `fake_hf` (`openai_model`, `openai_stream`): it honours what a request asks
(it calls only the tools it is sent, answers the schema it is sent), so every assertion on the SDK's result is
also one on what the runtime forwarded; `fake.seen` shows the forwarded bodies themselves.
"""

from __future__ import annotations

import functools
import json
import time

import openai
import pytest
import requests
from fake_hf import Reply, Stream, chat_events, completion, openai_model, openai_stream, sse
from helpers import SUPPORTBOT_SYSTEM, TOKEN, ToolBackend, guardrails_off, sdk
from pydantic import BaseModel

from app.errors import StructuredOutputInvalid
from app.providers import structured
from app.providers.base import Generation, GenerationParams

AGENT = Reply(body=openai_model)
AGENT_STREAM = Stream(openai_stream)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


class Person(BaseModel):
    name: str
    age: int


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_parse_with_a_pydantic_model_returns_the_validated_object(serve):
    fake, live, _ = serve(AGENT)
    answer = sdk(live).chat.completions.parse(
        model="SupportBot", messages=ask("Who is it? name=Ada age=36"), response_format=Person
    )
    assert answer.choices[0].message.parsed == Person(name="Ada", age=36)
    sent = fake.seen[0].body["response_format"]
    assert (sent["type"], sent["json_schema"]["name"], sent["json_schema"]["strict"]) == ("json_schema", "Person", True)
    assert sent["json_schema"]["schema"]["required"] == ["name", "age"]


def test_a_tool_round_trip_call_then_result_then_answer(serve):
    fake, live, _ = serve(AGENT)
    client = sdk(live)
    question = ask("What should I wear? get_weather(city=Paris)")
    first = client.chat.completions.create(model="SupportBot", messages=question, tools=[WEATHER, TIME])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_0_get_weather", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.seen[0].body["tools"] == [WEATHER, TIME]

    conversation = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    second = client.chat.completions.create(model="SupportBot", messages=conversation, tools=[WEATHER, TIME])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool results: call_0_get_weather=18C and sunny"
    # The upstream got the turns in the order sent: the tool call and its result after the input.
    sent = fake.seen[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert sent[1]["content"].endswith("User: What should I wear? get_weather(city=Paris)\nAssistant:\n")
    assert sent[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0_get_weather",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert sent[3] == {"role": "tool", "content": "18C and sunny", "tool_call_id": "call_0_get_weather"}


def test_the_sdks_stream_helper_rebuilds_two_parallel_calls(serve):
    _fake, live, _ = serve(AGENT_STREAM)
    question = ask("get_weather(city=Paris) and get_weather(city=Rome), please")
    with sdk(live).chat.completions.stream(model="SupportBot", messages=question, tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0_get_weather", "get_weather", {"city": "Paris"}),
        ("call_1_get_weather", "get_weather", {"city": "Rome"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, e.arguments) for e in done] == [
        (0, "get_weather", '{"city": "Paris"}'),
        (1, "get_weather", '{"city": "Rome"}'),
    ]
    # The arguments arrived as they were generated, in pieces, not in one late burst.
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert [e.index for e in deltas] == [0] * 4 + [1] * 4  # the first delta's "" and three pieces each


def test_calls_interleaved_by_index_are_relayed_so_the_accumulator_rebuilds_them(serve):
    _, live, _ = serve(Stream(functools.partial(openai_stream, interleave=True)))
    question = ask("get_weather(city=Paris) and get_weather(city=Rome), please")
    with sdk(live).chat.completions.stream(model="SupportBot", messages=question, tools=[WEATHER]) as stream:
        deltas = [e.index for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert deltas == [0, 1] * 4
    calls = final.choices[0].message.tool_calls
    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0_get_weather", {"city": "Paris"}),
        ("call_1_get_weather", {"city": "Rome"}),
    ]


def test_a_streamed_call_is_framed_as_openai_frames_it(serve):
    """The raw chunks: a call's first delta has index, id, type and name; the later ones only its arguments."""
    _, live, _ = serve(AGENT_STREAM)
    chunks = list(
        sdk(live).chat.completions.create(
            model="SupportBot", messages=ask("get_weather(city=Oslo)"), tools=[WEATHER], stream=True
        )
    )
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, *rest = deltas
    assert (first.index, first.id, first.type, first.function.name, first.function.arguments) == (
        0,
        "call_0_get_weather",
        "function",
        "get_weather",
        "",
    )
    assert all(d.id is None and d.function.name is None for d in rest)
    assert "".join(d.function.arguments for d in rest) == '{"city": "Oslo"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_choice_and_parallel_tool_calls_reach_the_model(serve):
    fake, live, _ = serve(AGENT)
    client = sdk(live)
    forced = client.chat.completions.create(
        model="SupportBot",
        messages=ask("hello"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_time"
    one = client.chat.completions.create(
        model="SupportBot",
        messages=ask("get_weather(city=A) get_weather(city=B)"),
        tools=[WEATHER],
        parallel_tool_calls=False,
    )
    assert len(one.choices[0].message.tool_calls) == 1
    none = client.chat.completions.create(
        model="SupportBot", messages=ask("get_weather(city=A)"), tools=[WEATHER], tool_choice="none"
    )
    assert (none.choices[0].message.tool_calls, none.choices[0].finish_reason) == (None, "stop")
    assert [s.body.get("tool_choice") for s in fake.seen] == [
        {"type": "function", "function": {"name": "get_time"}},
        None,
        "none",
    ]
    assert fake.seen[1].body["parallel_tool_calls"] is False


def test_n_returns_every_choice_whole_and_streamed(serve):
    fake, live, _ = serve(AGENT, AGENT_STREAM)
    client = sdk(live)
    whole = client.chat.completions.create(model="SupportBot", messages=ask("hi"), n=2)
    assert [c.index for c in whole.choices] == [0, 1]
    assert [c.message.content[-3:] for c in whole.choices] == [" #0", " #1"]
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in client.chat.completions.create(model="SupportBot", messages=ask("hi"), n=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert finishes == {0: "stop", 1: "stop"}
    assert [s.body["n"] for s in fake.seen] == [2, 2]


def test_an_integral_float_n_is_the_integer_whole_and_streamed(serve):
    # JSON Schema counts 2.0 as an integer: it must reach the choices and the upstream as 2, not break range().
    fake, live, _ = serve(AGENT, AGENT_STREAM)
    body = {"model": "SupportBot", "messages": ask("hi"), "n": 2.0}
    whole = requests.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
    assert whole.status_code == 200
    assert [c["index"] for c in whole.json()["choices"]] == [0, 1]
    streamed = requests.post(f"{live.url}/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    assert [s.body["n"] for s in fake.seen] == [2, 2]
    assert all(isinstance(s.body["n"], int) for s in fake.seen)


def test_logprobs_are_relayed_whole_and_streamed(serve):
    _, live, _ = serve(AGENT, AGENT_STREAM)
    client = sdk(live)
    whole = client.chat.completions.create(model="SupportBot", messages=ask("hi"), logprobs=True, top_logprobs=2)
    content = whole.choices[0].logprobs.content
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    assert [len(t.top_logprobs) for t in content] == [2] * len(content)
    streamed = list(
        client.chat.completions.create(
            model="SupportBot", messages=ask("hi"), logprobs=True, top_logprobs=1, stream=True
        )
    )
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert "".join(t.token for t in tokens) == text == whole.choices[0].message.content
    assert all(len(t.top_logprobs) == 1 for t in tokens)


def test_the_other_fields_are_forwarded_and_a_plain_request_sends_what_it_always_did(serve):
    fake, live, _ = serve(AGENT)
    client = sdk(live)
    client.chat.completions.create(
        model="SupportBot",
        messages=ask("hi"),
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="end-user-7",
        response_format={"type": "text"},  # the default: nothing to forward
    )
    client.chat.completions.create(model="SupportBot", messages=ask("hi"))
    forwarded, plain = (s.body for s in fake.seen)
    assert {k: forwarded[k] for k in ("seed", "presence_penalty", "frequency_penalty", "user")} == {
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "user": "end-user-7",
    }
    assert set(plain) == {"model", "messages", "max_tokens", "temperature", "top_p"}
    assert set(forwarded) == set(plain) | {"seed", "presence_penalty", "frequency_penalty", "user"}


def test_a_trailing_assistant_message_stays_last(serve):
    fake, live, _ = serve(AGENT)
    conversation = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once upon a time"},
        {"role": "user", "content": "Go on."},
        {"role": "assistant", "content": "there was a router"},
    ]
    answer = sdk(live).chat.completions.create(model="SupportBot", messages=conversation)
    assert answer.choices[0].message.content == " and so on, after 'there was a router'"
    sent = fake.seen[0].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant"]
    assert sent[3]["content"].endswith("User: Go on.\nAssistant:\n")
    assert sent[4] == {"role": "assistant", "content": "there was a router"}


def test_image_parts_are_forwarded_as_parts(serve):
    fake, live, _ = serve(AGENT)
    image = {"type": "image_url", "image_url": {"url": "https://example.test/router.png", "detail": "low"}}
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Earlier:"}, image]},
        {"role": "assistant", "content": "A router."},
    ]
    question = {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}
    answer = sdk(live).chat.completions.create(model="SupportBot", messages=[*history, question])
    assert answer.choices[0].message.content.endswith("seeing 1 image(s)")
    sent = fake.seen[0].body["messages"]
    assert sent[1] == {"role": "user", "content": [{"type": "text", "text": "Earlier:"}, image]}
    text, part = sent[3]["content"]
    assert text["type"] == "text" and text["text"].endswith("User: What is this?\nAssistant:\n")
    assert part == image


def test_a_schema_mismatch_is_asked_once_more_with_the_validators_message(serve):
    valid = completion('{"name": "Ada", "age": 36}')
    fake, live, _ = serve(Reply(body=completion('{"name": "Ada", "age": "old"}')), Reply(body=valid))
    answer = sdk(live).chat.completions.parse(model="SupportBot", messages=ask("Who?"), response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="Ada", age=36)
    first, again = (s.body["messages"] for s in fake.seen)
    assert again[: len(first)] == first
    assert again[len(first)] == {"role": "assistant", "content": '{"name": "Ada", "age": "old"}'}
    assert again[-1]["role"] == "user"
    assert "$.age: 'old' is not of type 'integer'" in again[-1]["content"]


@pytest.mark.parametrize(
    ("response_format", "answer", "problem"),
    [
        (Person, '{"name": "Ada"}', "$: 'age' is a required property"),
        ({"type": "json_object"}, "Sure! Here it is.", "the answer is not JSON"),
        ({"type": "json_object"}, "[1, 2]", "the answer is not a JSON object"),
    ],
)
def test_an_answer_that_stays_invalid_is_a_502_structured_output_invalid(serve, response_format, answer, problem):
    fake, live, _ = serve(Reply(body=completion(answer)))
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=2, timeout=10)
    create = client.chat.completions.parse if isinstance(response_format, type) else client.chat.completions.create
    with pytest.raises(openai.InternalServerError) as raised:
        create(model="SupportBot", messages=ask("Who?"), response_format=response_format)
    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "structured_output_invalid"
    assert problem in raised.value.body["message"]
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(fake.seen) == 2  # one more try by the runtime, none by the SDK


def test_a_streamed_structured_answer_is_relayed_as_it_comes_and_checked_at_its_end(serve, project):
    guardrails_off(project)  # each delta as the model sent it: no guardrail hold-back
    pieces = ['{"name": ', '"Ada", ', '"age": 36}']
    fake, live, _ = serve(Stream(chat_events(pieces)), Stream(chat_events(['{"name": ', '"Ada"}'])))
    client = sdk(live)
    chunks = list(
        client.chat.completions.create(
            model="SupportBot",
            messages=ask("Who?"),
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
            },
            stream=True,
        )
    )
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == pieces
    received = []
    with (
        pytest.raises(openai.APIError) as raised,
        client.chat.completions.stream(model="SupportBot", messages=ask("Who?"), response_format=Person) as stream,
    ):
        for event in stream:
            if event.type == "content.delta" and event.delta:
                received.append(event.delta)
    assert received == ['{"name": ', '"Ada"}']  # relayed before the end, then the error event
    assert (
        "structured_output_invalid" in str(raised.value.body) or "'age' is a required property" in raised.value.message
    )
    assert len(fake.seen) == 2


def test_the_contexts_max_tokens_is_the_ceiling_and_its_temperature_the_default(serve):
    fake, live, _ = serve(AGENT)
    sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"), max_tokens=4096)
    sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"), max_completion_tokens=100)
    assert [(s.body["max_tokens"], s.body["temperature"]) for s in fake.seen] == [(256, 0.3), (100, 0.3)]


def test_a_stream_the_upstream_cuts_is_hf_stream_interrupted(serve):
    events = chat_events(["Hel", "lo"])
    _fake, live, _ = serve(Stream(events[:2], then="drop"), Stream(events[:3]))
    for _ in range(2):  # cut mid-body, and closed cleanly before the end of the answer
        with pytest.raises(openai.APIError) as raised:
            list(sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"), stream=True))
        assert "broke off mid-answer" in raised.value.message
        assert raised.value.body["code"] == "hf_stream_interrupted"


def test_a_stream_the_upstream_cuts_before_answering_is_a_json_error(serve):
    _fake, live, _ = serve(Stream([], then="drop"))
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"), stream=True)
    assert raised.value.body["code"] == "hf_stream_interrupted"


def test_retry_after_of_an_upstream_429_passes_through(serve):
    _fake, live, _ = serve(
        Reply(status=429, body={"error": "slow down"}, headers={"Retry-After": "7"}), hf_max_retries=0
    )
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"))
    assert raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.body["code"] == "hf_rate_limited"


def test_a_retry_after_that_is_not_a_delay_is_not_passed_on(serve):
    _fake, live, _ = serve(
        Reply(status=503, body={"error": "busy"}, headers={"Retry-After": "soon\u00e9"}), hf_max_retries=0
    )
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"))
    assert "Retry-After" not in raised.value.response.headers


def test_a_tool_conversation_is_bounded_like_any_history(serve):
    fake, live, _ = serve(AGENT, max_history_chars=100)
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": "x" * 200})},
    }
    conversation = [
        *ask("hi"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=conversation, tools=[WEATHER])
    assert raised.value.status_code == 413
    assert fake.seen == []


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"role": "tool", "content": "42"}, "'tool_call_id' is a required property"),
        ({"role": "user", "content": "x", "tool_calls": []}, "messages.1.role"),
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
            "'function' is a required property",
        ),
    ],
)
def test_malformed_tool_turns_are_400s(serve, message, needle):
    fake, live, _ = serve(AGENT)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=[*ask("hi"), message])
    assert needle in raised.value.body["message"]
    assert fake.seen == []


def test_a_system_message_mid_conversation_keeps_its_place(serve):
    fake, live, _ = serve(AGENT)
    conversation = [
        *ask("a"),
        {"role": "assistant", "content": "b"},
        {"role": "developer", "content": "Be brief."},
        *ask("c"),
    ]
    sdk(live).chat.completions.create(model="SupportBot", messages=conversation)
    sent = fake.seen[0].body["messages"]
    assert [(m["role"], m["content"] if m["role"] != "user" else "") for m in sent] == [
        ("system", SUPPORTBOT_SYSTEM),
        ("user", ""),
        ("assistant", "b"),
        ("system", "Be brief."),
        ("user", ""),
    ]


def test_an_upstream_error_event_mid_stream_never_shows_the_token(serve):
    _fake, live, _ = serve(Stream([*chat_events(["a"])[:2], sse({"error": {"message": f"bad token {TOKEN}"}})]))
    with pytest.raises(openai.APIError) as raised:
        list(sdk(live).chat.completions.create(model="SupportBot", messages=ask("hi"), tools=[WEATHER], stream=True))
    assert TOKEN not in str(raised.value.body)


def test_tool_calls_from_a_tgi_style_server_are_made_openai_shaped(serve):
    """TGI answers `arguments` as an object and some servers send no call id: clients get JSON text and an id."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
    }
    body = {
        **completion(None, finish_reason="tool_calls"),
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    }
    first = {"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": '}}
    more = {"index": 0, "function": {"arguments": '"Oslo"}'}}
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    events = [
        sse({**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}),
        sse({**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [more]}, "finish_reason": "tool_calls"}]}),
        sse("[DONE]"),
    ]
    _, live, _ = serve(Reply(body=body), Stream(events))
    client = sdk(live)
    [call] = (
        client.chat.completions.create(model="SupportBot", messages=ask("x"), tools=[WEATHER])
        .choices[0]
        .message.tool_calls
    )
    assert (call.function.arguments, call.id.startswith("call_")) == ('{"city": "Oslo"}', True)
    with client.chat.completions.stream(model="SupportBot", messages=ask("x"), tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.arguments, call.id.startswith("call_")) == ('{"city": "Oslo"}', True)
    assert final.choices[0].finish_reason == "tool_calls"


def test_the_second_try_shares_the_requests_deadline(serve):
    """HF_DEADLINE bounds the request, not each try: without a second left there is no second try."""
    fake, live, _ = serve(Reply(body=completion("not json"), delay=0.5), hf_deadline=1.2)
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(live).chat.completions.create(
            model="SupportBot", messages=ask("hi"), response_format={"type": "json_object"}
        )
    assert raised.value.body["code"] == "structured_output_invalid"
    assert "no time left to ask once more" in raised.value.body["message"]
    assert len(fake.seen) == 1


def _schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "Thing", "schema": schema}}


def test_a_schemas_ref_to_another_host_is_refused_and_never_fetched(serve):
    """jsonschema's default registry fetches any URL a `$ref` names: a client's schema must reach no host."""
    with ToolBackend() as elsewhere:
        fake, live, _ = serve(Reply(body=completion('{"a": 1}')))
        remote = {"type": "object", "properties": {"a": {"$ref": f"{elsewhere.url}/internal/schema"}}}
        with pytest.raises(openai.BadRequestError) as raised:
            sdk(live).chat.completions.create(
                model="SupportBot", messages=ask("hi"), response_format=_schema_format(remote)
            )
        assert raised.value.body["param"] == "response_format"
        assert "only references within the schema" in raised.value.body["message"]
        assert elsewhere.seen == []
        assert fake.seen == []


def test_a_local_ref_to_nothing_is_a_400_not_a_traceback(serve):
    _fake, live, _ = serve(Reply(body=completion('{"a": 1}')))
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(live).chat.completions.create(
            model="SupportBot", messages=ask("hi"), response_format=_schema_format(dangling)
        )
    assert raised.value.body["param"] == "response_format"
    assert "names nothing in the schema" in raised.value.body["message"]


def test_a_local_ref_is_followed(serve):
    fake, live, _ = serve(Reply(body=completion('{"a": "one"}')), Reply(body=completion('{"a": 1}')))
    local = {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}
    answer = sdk(live).chat.completions.create(
        model="SupportBot", messages=ask("hi"), response_format=_schema_format(local)
    )
    assert answer.choices[0].message.content == '{"a": 1}'
    assert "$.a: 'one' is not of type 'integer'" in fake.seen[1].body["messages"][-1]["content"]


def test_the_second_try_never_outlives_the_deadline_the_params_carry():
    """In a tool loop each step's params carry the request's deadline: a re-ask must not get a fresh HF_DEADLINE."""
    sent: list[float | None] = []

    def call(prompt, params, system, history, after):
        sent.append(params.deadline_at)
        return Generation("not json")

    ends_at = time.monotonic() + 0.5
    params = GenerationParams(response_format={"type": "json_object"}, deadline_at=ends_at)
    with pytest.raises(StructuredOutputInvalid, match="no time left to ask once more"):
        structured.generate(call, "hi", params, budget=30)
    assert sent == [ends_at]

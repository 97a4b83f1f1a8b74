"""The Responses API (`/v1/responses`), driven by the real `openai` SDK against the app on a local port.

The model is a fake chat-completion endpoint on 127.0.0.1 (`FakeHF`): each test asserts what the upstream
received (the one pipeline: context, system message, history as turns) and what the SDK made of the answer.
"""

from __future__ import annotations

import functools
import json
from contextlib import ExitStack

import openai
import pytest
import requests
import yaml
from fake_hf import CREDITS_BODY, FakeHF, Reply, Stream, chat_events, completion, openai_model, openai_stream, sse
from helpers import (
    ACME_KEY,
    CARD,
    EMAIL,
    IBAN,
    KEYS_JSON,
    MODEL,
    PHONE,
    PLANTED,
    SSN,
    STAR_KEY,
    SUPPORTBOT_SYSTEM,
    TOKEN,
    LiveApp,
    access_lines,
    guardrails_off,
    metric,
    planted_in,
    sse_events,
)

from app import create_app
from app.keys import keys_from_json
from app.responses_store import open_response_store

USAGE = {"prompt_tokens": 87, "completion_tokens": 12}


@pytest.fixture
def serve(hf_settings):
    """Start a fake chat model with `replies` and the app in front of it: returns (fake, live app, app)."""
    stack = ExitStack()

    def start(*replies: Reply | Stream, **changes):
        fake = stack.enter_context(FakeHF(*replies))
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1", **changes))
        return fake, stack.enter_context(LiveApp(app)), app

    yield start
    stack.close()


def post(live: LiveApp, body: dict) -> requests.Response:
    """POST a Responses body as it is, past the SDK's own checks."""
    return requests.post(f"{live.url}/v1/responses", json=body, timeout=10)


def sdk(live: LiveApp, key: str = "no-key-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_a_whole_answer_is_a_response_object_and_the_upstream_gets_the_contexts_system_then_instructions(serve):
    fake, live, _ = serve(Reply(body=completion("Hello from the chat model", USAGE)))
    answer = sdk(live).responses.create(model="SupportBot", input="hello", instructions="Answer in one sentence.")
    assert answer.object == "response"
    assert answer.id.startswith("resp_")
    assert (answer.status, answer.model, answer.output_text) == ("completed", "SupportBot", "Hello from the chat model")
    assert [(item.type, item.role, item.status) for item in answer.output] == [("message", "assistant", "completed")]
    assert answer.output[0].content[0].type == "output_text"
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.total_tokens) == (87, 12, 99)
    assert (answer.instructions, answer.store, answer.error) == ("Answer in one sentence.", True, None)
    upstream = fake.seen[0].body
    assert upstream["model"] == MODEL
    assert (upstream["max_tokens"], upstream["temperature"]) == (256, 0.3)  # the context's guardrails
    assert [m["role"] for m in upstream["messages"]] == ["system", "system", "user"]
    assert upstream["messages"][0]["content"] == SUPPORTBOT_SYSTEM
    assert upstream["messages"][1]["content"] == "Answer in one sentence."
    assert upstream["messages"][2]["content"].endswith("User: hello\nAssistant:\n")


def test_input_items_are_the_conversation_in_order_and_the_last_user_message_is_the_input(serve):
    fake, live, _ = serve(Reply(body=completion("It ships tomorrow.")))
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi, I ordered a router."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Order number?"}]},
        {"role": "user", "content": "It is 1234. When does it ship?"},
    ]
    answer = sdk(live).responses.create(model="SupportBot", input=items, max_output_tokens=50, temperature=0.1)
    assert answer.output_text == "It ships tomorrow."
    assert (answer.max_output_tokens, answer.temperature) == (50, 0.1)
    sent = fake.seen[0].body
    assert sent["messages"][:4] == [
        {"role": "system", "content": SUPPORTBOT_SYSTEM},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, I ordered a router."},
        {"role": "assistant", "content": "Order number?"},
    ]
    assert sent["messages"][4]["content"].endswith("User: It is 1234. When does it ship?\nAssistant:\n")
    assert (sent["max_tokens"], sent["temperature"]) == (50, 0.1)


def test_a_stream_is_the_exact_event_sequence_the_sdks_stream_helper_accumulates(serve, project):
    guardrails_off(project)  # each delta as the model sent it: no guardrail hold-back
    fake, live, _ = serve(Stream(chat_events(["Hel", "lo", "!"], USAGE)))
    client = sdk(live)
    with client.responses.stream(model="SupportBot", input="hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.snapshot for e in events if e.type == "response.output_text.delta"] == ["Hel", "Hello", "Hello!"]
    assert events[0].response.status == "in_progress"
    assert next(e for e in events if e.type == "response.output_text.done").text == "Hello!"
    assert (final.status, final.output_text, final.usage.total_tokens) == ("completed", "Hello!", 99)
    assert fake.seen[0].body["stream"] is True
    # The streamed response is stored as completed, and reads back the same.
    assert client.responses.retrieve(final.id).output_text == "Hello!"


def test_the_wire_names_each_event_and_its_items_ids_name_the_response(serve):
    _, live, _ = serve(Stream(chat_events(["Hi"])))
    answered = post(live, {"model": "SupportBot", "input": "x", "stream": True})
    assert answered.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(answered.text)
    assert all(name == data["type"] for name, data in events)
    response_id = events[0][1]["response"]["id"]
    added = next(data for name, data in events if name == "response.output_item.added")
    assert added["item"]["id"].startswith(f"msg_{response_id.removeprefix('resp_')}_")
    assert events[-1][1]["response"]["sources"] == []


def test_previous_response_id_continues_the_stored_conversation_without_its_instructions(serve):
    fake, live, _ = serve(Reply(body=completion("Order 1234 is packed.")), Reply(body=completion("Tomorrow.")))
    client = sdk(live)
    first = client.responses.create(model="SupportBot", input="Where is order 1234?", instructions="Be brief.")
    second = client.responses.create(model="SupportBot", input="When does it ship?", previous_response_id=first.id)
    assert (second.output_text, second.previous_response_id) == ("Tomorrow.", first.id)
    sent = fake.seen[1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1:3] == [
        {"role": "user", "content": "Where is order 1234?"},
        {"role": "assistant", "content": "Order 1234 is packed."},
    ]
    assert sent[3]["content"].endswith("User: When does it ship?\nAssistant:\n")
    # The chain goes on: the third turn sees both earlier ones.
    client.responses.create(model="SupportBot", input="Thanks", previous_response_id=second.id)
    assert [m["role"] for m in fake.seen[2].body["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


def test_an_item_reference_names_a_stored_output_item(serve):
    fake, live, _ = serve(Reply(body=completion("Order 1234 is packed.")), Reply(body=completion("Tomorrow.")))
    client = sdk(live)
    first = client.responses.create(model="SupportBot", input="Where is order 1234?")
    items = [
        {"role": "user", "content": "Where is order 1234?"},
        {"type": "item_reference", "id": first.output[0].id},
        {"role": "user", "content": "When?"},
    ]
    client.responses.create(model="SupportBot", input=items)
    assert fake.seen[1].body["messages"][2] == {"role": "assistant", "content": "Order 1234 is packed."}
    with pytest.raises(openai.NotFoundError, match=r"input\.0: no stored item"):
        client.responses.create(model="SupportBot", input=[{"type": "item_reference", "id": "msg_x"}, *items[2:]])


def test_store_false_keeps_nothing_and_get_and_delete_act_on_stored_responses(serve):
    _, live, _ = serve(Reply(body=completion("ok")))
    client = sdk(live)
    unstored = client.responses.create(model="SupportBot", input="hi", store=False)
    assert unstored.store is False
    for call in (
        lambda: client.responses.retrieve(unstored.id),
        lambda: client.responses.create(model="SupportBot", input="again", previous_response_id=unstored.id),
    ):
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert raised.value.body["code"] == "response_not_found"
    kept = client.responses.create(model="SupportBot", input="hi", metadata={"ticket": "42"})
    assert client.responses.retrieve(kept.id).model_dump() == kept.model_dump()
    assert kept.metadata == {"ticket": "42"}
    deleted = requests.delete(f"{live.url}/v1/responses/{kept.id}", timeout=10)
    assert deleted.json() == {"id": kept.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(kept.id)


LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


def test_under_pii_redact_a_stored_response_keeps_the_conversation_as_the_model_got_it(serve, hf_settings):
    # SupportBot redacts personal data: what is stored, read back and continued is what the model got.
    fake, live, _ = serve(Reply(body=completion(f"Sent to {EMAIL}.")), Stream(chat_events(["Done", "."])))
    client = sdk(live)
    items = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "My mail is "}, {"type": "input_text", "text": EMAIL}],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Noted."}]},
        {"role": "user", "content": f"Pay it to {IBAN}, please."},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": json.dumps({"phone": PHONE})},
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_text", "text": f"card {CARD}"}],
        },
    ]
    first = client.responses.create(
        model="SupportBot", input=items, instructions=f"The customer's phone is {PHONE}.", tools=[LOOKUP]
    )
    assert not any(value in json.dumps(fake.seen[0].body) for value in PLANTED)
    assert (first.instructions, first.output_text) == (
        "The customer's phone is <PHONE_NUMBER>.",
        "Sent to <EMAIL_ADDRESS>.",
    )
    read = client.responses.retrieve(first.id)
    assert (read.instructions, read.output_text) == (first.instructions, first.output_text)
    with client.responses.stream(model="SupportBot", input=f"My SSN is {SSN}", previous_response_id=first.id) as stream:
        second = stream.get_final_response()
    assert second.output_text == "Done."
    store = open_response_store(hf_settings)  # the app's own SQLite file, read anew
    first_items = [
        {"type": "message", "role": "user", "content": "My mail is <EMAIL_ADDRESS>"},  # as the model got it: one text
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Noted."}]},
        {"type": "message", "role": "user", "content": "Pay it to <IBAN_CODE>, please."},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"phone": "<PHONE_NUMBER>"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "card <CREDIT_CARD>"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Sent to <EMAIL_ADDRESS>."}],
        },
    ]
    assert store.get("", first.id).items == first_items
    assert store.get("", second.id).items == [
        *first_items,
        {"type": "message", "role": "user", "content": "My SSN is <US_SSN>"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]},
    ]
    assert planted_in(hf_settings.state_path) == []


@pytest.fixture
def authed(serve):
    keys = tuple(keys_from_json(KEYS_JSON, "CMP_API_KEYS"))
    return serve(Reply(body=completion("Hi")), auth_enabled=True, api_keys=keys)


def test_a_tenant_never_reads_continues_or_deletes_another_tenants_response(authed):
    _, live, _ = authed
    acme, operator = sdk(live, ACME_KEY), sdk(live, STAR_KEY)
    mine = acme.responses.create(model="SupportBot", input="hi")
    other = {"tenant_id": "globex"}
    attempts = [
        lambda: operator.responses.retrieve(mine.id, extra_query=other),
        lambda: operator.responses.retrieve(mine.id),  # the shared tenant ("") is another tenant too
        lambda: operator.responses.delete(mine.id, extra_query=other),
        lambda: operator.responses.create(
            model="SupportBot", input="go on", previous_response_id=mine.id, extra_body=other
        ),
        lambda: operator.responses.create(
            model="SupportBot",
            input=[{"type": "item_reference", "id": mine.output[0].id}, {"role": "user", "content": "x"}],
            extra_body=other,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.PermissionDeniedError, match="tenant 'globex'"):
        acme.responses.retrieve(mine.id, extra_query=other)
    # The owner, and a key acting for the owner's tenant, still can.
    assert operator.responses.retrieve(mine.id, extra_query={"tenant_id": "acme"}).id == mine.id
    assert acme.responses.create(model="SupportBot", input="go on", previous_response_id=mine.id).status == "completed"
    acme.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        acme.responses.retrieve(mine.id)
    with pytest.raises(openai.AuthenticationError):
        sdk(live, "ctx_live_WRONG").responses.create(model="SupportBot", input="hi")


def test_an_answer_cut_at_max_output_tokens_is_incomplete_whole_and_streamed(serve):
    cut = chat_events(["Once upon"])
    cut[-2] = sse(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
        }
    )
    _, live, _ = serve(Reply(body=completion("Once upon", finish_reason="length")), Stream(cut))
    whole = sdk(live).responses.create(model="SupportBot", input="a story", max_output_tokens=3)
    assert (whole.status, whole.incomplete_details.reason, whole.output[0].status) == (
        "incomplete",
        "max_output_tokens",
        "incomplete",
    )
    events = sse_events(post(live, {"model": "SupportBot", "input": "x", "stream": True}).text)
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_failure_before_the_first_event_is_an_http_error_and_after_it_response_failed(serve):
    events = [*chat_events(["Hel"])[:2], sse({"error": {"message": "CUDA out of memory"}})]
    _, live, _ = serve(Reply(status=401, body={"error": "Invalid credentials"}), Stream(events), hf_max_retries=0)
    client = sdk(live)
    with pytest.raises(openai.InternalServerError) as raised:
        client.responses.create(model="SupportBot", input="hi", stream=True)
    assert (raised.value.status_code, raised.value.body["code"]) == (502, "hf_unauthorized")
    assert TOKEN not in raised.value.message
    with client.responses.stream(model="SupportBot", input="hi") as stream:
        received = list(stream)
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()
    failed = received[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error.code.startswith("hf_")
    assert "CUDA out of memory" in failed.response.error.message
    assert failed.response.output[0].content[0].text == "Hel"  # the output so far
    assert [e.sequence_number for e in received] == list(range(len(received)))
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        client.responses.retrieve(failed.response.id)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"input": "hi"}, None, "'model' is a required property"),
        ({"model": "SupportBot"}, None, "needs a user message in `input`"),
        ({"model": "SupportBot", "input": [{"role": "assistant", "content": "x"}]}, None, "needs a user message"),
        ({"model": "SupportBot", "input": [{"role": "user"}]}, "input", "'content' is a required property"),
        ({"model": "SupportBot", "input": "hi", "tools": [{"type": "web_search"}]}, "tools", "'function' was expected"),
        ({"model": "SupportBot", "input": "hi", "max_output_tokens": 0}, "max_output_tokens", "less than the minimum"),
        (
            {
                "model": "SupportBot",
                "input": [
                    {"role": "user", "content": "x"},
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image", "image_url": "u"}],
                    },
                ],
            },
            "input",
            "input.1.output.0.type: the value is not one of",
        ),
        ({"model": "../etc", "input": "hi"}, "model", "not a valid name"),
        (
            {"model": "SupportBot", "input": "hi", "background": True},
            "background",
            "background: the value is not one of",
        ),
        ({"model": "SupportBot", "input": "hi", "conversation": "conv_1"}, "conversation", "is not of type 'null'"),
    ],
)
def test_bad_requests_are_bad_request_errors_in_openais_shape(serve, body, param, needle):
    fake, live, _ = serve(Reply(body=completion("never")))
    answered = post(live, body)
    assert answered.status_code == 400
    error = answered.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert needle in error["message"]
    assert fake.seen == []


def test_an_unknown_context_is_not_found_and_without_a_model_the_prompt_is_the_text(serve, client):
    _, live, _ = serve(Reply(body=completion("never")))
    with pytest.raises(openai.NotFoundError):
        sdk(live).responses.create(model="NoSuchBot", input="hi")
    answered = client.post("/v1/responses", json={"model": "SupportBot", "input": "hello"}).get_json()
    assert answered["output_text"].endswith("User: hello\nAssistant:\n")
    assert answered["usage"] is None


def test_the_access_line_metrics_and_spans_are_the_chat_routes_and_keep_no_content(serve, capsys, spans):
    _, live, app = serve(Reply(body=completion("the secret answer")))
    answer = sdk(live).responses.create(model="SupportBot", input="my card is 4111 1111 1111 1111")
    access = next(line for line in access_lines(capsys) if line["path"] == "/v1/responses")
    assert {k: access[k] for k in ("status", "context", "component", "model", "response_id")} == {
        "status": 200,
        "context": "SupportBot",
        "component": "SupportBot",
        "model": MODEL,
        "response_id": answer.id,
    }
    assert "4111" not in json.dumps(access) and "secret answer" not in json.dumps(access)
    assert "huggingface.generate" in {span.name for span in spans.get_finished_spans()}
    labels = {"method": "POST", "url_rule": "/v1/responses", "status": "200"}
    assert metric(app, "flask_http_request_duration_seconds_count", **labels) == 1


def test_stored_responses_on_postgresql_work_end_to_end(serve, postgres):
    postgres.reset()
    fake, live, _ = serve(
        Reply(body=completion("Order 1234 is packed.")), Reply(body=completion("Tomorrow.")), memory_url=postgres.url
    )
    client = sdk(live)
    first = client.responses.create(model="SupportBot", input="Where is order 1234?")
    client.responses.create(model="SupportBot", input="When?", previous_response_id=first.id)
    assert fake.seen[1].body["messages"][2] == {"role": "assistant", "content": "Order 1234 is packed."}
    rows = postgres.admin("SELECT tenant, id FROM stored_responses", database=postgres.ROLE)
    assert ("", first.id) in rows


def test_cors_preflight_allows_the_responses_routes_for_an_allowed_origin(hf_settings):
    app = create_app(hf_settings.replace(cors_origins=("https://chat.example.com",)))
    client = app.test_client()
    for path, method in (("/v1/responses", "POST"), ("/v1/responses/resp_1", "DELETE")):
        preflight = client.options(
            path, headers={"Origin": "https://chat.example.com", "Access-Control-Request-Method": method}
        )
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
        assert method in preflight.headers["Access-Control-Allow-Methods"]


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_a_function_call_round_trip_with_function_call_output_whole_and_by_previous_response_id(serve):
    # The stand-in model calls the tools its input names, and answers tool results with them.
    fake, live, _ = serve(Reply(body=openai_model))
    client = sdk(live)
    asked = "Weather? get_weather(city=Paris)"
    first = client.responses.create(
        model="SupportBot", input=asked, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    [call] = first.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city": "Paris"}')
    assert call.call_id == "call_0_get_weather"
    assert (first.status, first.output_text) == ("completed", "")
    upstream = fake.seen[0].body
    assert upstream["tools"] == [
        {"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}
    ]
    assert upstream["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    # The client runs the function and answers with its output, sending the conversation back (store or not).
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    second = client.responses.create(
        model="SupportBot", input=[{"role": "user", "content": asked}, *first.output, result], tools=[WEATHER]
    )
    continued = client.responses.create(
        model="SupportBot", input=[result], previous_response_id=first.id, tools=[WEATHER]
    )
    for answer in (second, continued):
        assert answer.output_text == "Tool results: call_0_get_weather=sunny"
    for seen in fake.seen[1:]:
        sent = seen.body["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]  # the turns after the input
        assert sent[2]["tool_calls"] == [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}
        ]
        assert sent[3] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_streamed_parallel_function_calls_are_rebuilt_by_the_sdks_stream_helper(serve):
    # Both calls' first deltas, then their argument pieces in turn, as some servers interleave them.
    _, live, _ = serve(Stream(functools.partial(openai_stream, interleave=True)))
    asked = "get_weather(city=Paris) and get_weather(city=Oslo)"
    with sdk(live).responses.stream(model="SupportBot", input=asked, tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [(c.call_id, c.name, c.arguments) for c in final.output] == [
        ("call_0_get_weather", "get_weather", '{"city": "Paris"}'),
        ("call_1_get_weather", "get_weather", '{"city": "Oslo"}'),
    ]
    kinds = [e.type for e in events]
    assert kinds.count("response.output_item.added") == 2
    assert kinds.count("response.function_call_arguments.done") == 2
    assert kinds[-1] == "response.completed"
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert [e.output_index for e in deltas] == [0, 1, 0, 1, 0, 1]  # interleaved, each by its item
    assert [e.snapshot for e in deltas if e.output_index == 0][-1] == '{"city": "Paris"}'
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [(e.output_index, e.item.status) for e in done] == [(0, "completed"), (1, "completed")]


def test_responses_parse_with_a_pydantic_model_sends_the_json_schema_and_parses_the_answer(serve):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    fake, live, _ = serve(Reply(body=openai_model))
    parsed = sdk(live).responses.parse(model="SupportBot", input="name=Paris country=France", text_format=City)
    assert parsed.output_parsed == City(name="Paris", country="France")
    response_format = fake.seen[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "City"
    assert response_format["json_schema"]["schema"]["required"] == ["name", "country"]
    assert response_format["json_schema"]["strict"] is True


def test_an_input_image_goes_with_the_rendered_prompt_as_an_image_part(serve):
    fake, live, _ = serve(Reply(body=completion("A cat.")))
    content = [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
    ]
    answer = sdk(live).responses.create(model="SupportBot", input=[{"role": "user", "content": content}])
    assert answer.output_text == "A cat."
    sent = fake.seen[0].body["messages"][-1]["content"]
    assert sent[0]["type"] == "text"
    assert sent[0]["text"].endswith("User: What is in this picture?\nAssistant:\n")
    assert sent[1:] == [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}]


def test_echoed_values_orjson_cannot_write_are_still_answered_as_the_client_sent_them(client):
    # An integer past 64 bits is valid JSON; the response echoes the tools as sent.
    raw = (
        '{"model": "SupportBot", "input": "hi", "metadata": {"note": "n"},'
        ' "tools": [{"type": "function", "name": "f", "parameters": {"maximum": 123456789012345678901234567890}}]}'
    )
    for stream in ("false", "true"):
        answered = client.post(
            "/v1/responses", data=raw.replace("}]}", f'}}], "stream": {stream}}}'), content_type="application/json"
        )
        assert answered.status_code == 200
        assert b"123456789012345678901234567890" in answered.data


def test_a_lone_surrogate_is_a_400_invalid_json_as_on_the_chat_routes(client):
    raw = '{"model": "SupportBot", "input": "hi", "metadata": {"note": "\\ud800"}}'
    answered = client.post("/v1/responses", data=raw, content_type="application/json")
    assert answered.status_code == 400
    assert answered.get_json()["error"]["code"] == "invalid_json"


def test_a_store_that_cannot_be_written_is_503_whole_and_response_failed_streamed(serve, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be")
    _, live, _ = serve(
        Reply(body=completion("ok")),
        Stream(chat_events(["o", "k"])),
        Reply(body=completion("ok")),
        state_dir=blocked,
        usage_url="off",  # the usage ledger would refuse to start there
    )
    client = sdk(live)
    with pytest.raises(openai.APIStatusError) as raised:
        client.responses.create(model="SupportBot", input="hi")
    assert (raised.value.status_code, raised.value.body["code"]) == (503, "store_unavailable")
    with client.responses.stream(model="SupportBot", input="hi") as stream:
        last = list(stream)[-1]
    assert (last.type, last.response.error.code) == ("response.failed", "store_unavailable")
    # Nothing to keep, nothing to read: the route still answers.
    assert client.responses.create(model="SupportBot", input="hi", store=False).output_text == "ok"


def test_a_context_that_names_its_models_answers_as_the_entry_that_served(project, hf_settings, monkeypatch):
    monkeypatch.setenv("TGI_TOKEN", "tgi_SECRET_local_token_42")
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    with (
        FakeHF(Reply(402, CREDITS_BODY)) as failing,
        FakeHF(Reply(body=completion("From the backup")), Stream(chat_events(["From ", "the backup"]))) as healthy,
    ):
        backup = {"id": "local-llama", "endpoint": f"{healthy.url}/v1", "token_env": "TGI_TOKEN"}
        model = {"id": "meta-llama/Llama-3.3-70B-Instruct:groq", "fallbacks": [backup]}
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "model": model}))
        client = create_app(hf_settings.replace(hf_endpoint=f"{failing.url}/v1")).test_client()
        whole = client.post("/v1/responses", json={"model": "SupportBot", "input": "hello"})
        assert (whole.get_json()["model"], whole.get_json()["output_text"]) == ("local-llama", "From the backup")
        assert whole.headers["X-Contexis-Model"] == "local-llama"
        streamed = client.post("/v1/responses", json={"model": "SupportBot", "input": "hello", "stream": True})
        assert streamed.headers["X-Contexis-Model"] == "local-llama"
        events = sse_events(streamed)
        assert events[-1][1]["response"]["model"] == "local-llama"
        assert events[-1][1]["response"]["output_text"] == "From the backup"

"""Both wire formats at the HTTP level (recorded shapes with `responses`): choice, payloads, answers, usage, errors."""

from __future__ import annotations

import json

import pytest
import responses
from fake_hf import chat_events, completion, sse, tgi_events
from helpers import GUIDE_BODY, MODEL, SUPPORTBOT_SYSTEM, TOKEN, chat, guardrails_off, metric, sse_events

from app import create_app
from app.config import Settings, SettingsError
from app.memory import open_memory
from app.providers.base import GenerationParams, Usage
from app.providers.huggingface import HuggingFaceClient
from app.providers.huggingface.errors import HINT_UNAVAILABLE

V1 = "https://router.test/v1"
CHAT_URL = f"{V1}/chat/completions"
PROVIDER_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct:novita"
@pytest.fixture
def chat_app(hf_settings: Settings):
    return create_app(hf_settings.replace(hf_endpoint=V1, hf_model_id=PROVIDER_MODEL))





@pytest.mark.parametrize(
    ("env", "api"),
    [
        ({}, "chat-completion"),  # the default endpoint is the router's /v1
        ({"HF_ENDPOINT": "https://router.huggingface.co/v1"}, "chat-completion"),
        ({"HF_ENDPOINT": "http://127.0.0.1:8080/v1/"}, "chat-completion"),
        ({"HF_ENDPOINT": "http://127.0.0.1:8080/v1beta"}, "text-generation"),
        ({"HF_ENDPOINT": "http://127.0.0.1:8080/v1", "HF_API": "text-generation"}, "text-generation"),
        ({"HF_API": "Chat-Completion"}, "chat-completion"),
        ({"HF_API": "auto"}, "chat-completion"),
        ({"HF_ENDPOINT": "https://router.huggingface.co/hf-inference/models"}, "text-generation"),
    ],
)
def test_hf_api_auto_picks_chat_completion_for_a_v1_endpoint(env, api):
    assert Settings.from_env(env, dotenv_path=None).hf_wire_api == api


def test_unknown_hf_api_is_a_settings_error_naming_the_choices():
    with pytest.raises(SettingsError, match="HF_API must be one of text-generation, chat-completion, auto"):
        Settings.from_env({"HF_API": "completions"}, dotenv_path=None)


@responses.activate
def test_chat_completion_payload_answer_and_usage(chat_app, spans):
    responses.post(CHAT_URL, json=completion(usage={"prompt_tokens": 87, "completion_tokens": 12}))
    response = chat(chat_app)
    assert response.status_code == 200
    body = response.get_json()
    assert body["rendered"] == "Hello from the chat model"
    assert body["model"] == PROVIDER_MODEL
    assert body["usage"] == {"prompt_tokens": 87, "completion_tokens": 12}
    call = responses.calls[0].request
    assert call.url == CHAT_URL
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(call.body)
    # The provider suffix goes through untouched; sampling comes from SupportBot's guardrails.
    assert {k: v for k, v in sent.items() if k != "messages"} == {
        "model": PROVIDER_MODEL,
        "max_tokens": 256,
        "temperature": 0.3,
        "top_p": 0.95,
    }
    system, user = sent["messages"]
    assert system == {"role": "system", "content": SUPPORTBOT_SYSTEM}
    assert user["role"] == "user"
    assert user["content"].startswith("You are SupportBot.") and user["content"].endswith("User: hello\nAssistant:\n")
    assert metric(chat_app, "cmp_hf_tokens_total", model=PROVIDER_MODEL, kind="prompt") == 87
    assert metric(chat_app, "cmp_hf_tokens_total", model=PROVIDER_MODEL, kind="completion") == 12
    assert metric(chat_app, "cmp_hf_inference_latency_seconds_count", model=PROVIDER_MODEL) == 1
    span = next(s for s in spans.get_finished_spans() if s.name == "huggingface.generate")
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.usage.input_tokens"] == 87
    assert span.attributes["gen_ai.usage.output_tokens"] == 12


@responses.activate
def test_answer_without_usage_has_no_usage_key_and_counts_no_tokens(chat_app):
    responses.post(CHAT_URL, json=completion())
    body = chat(chat_app).get_json()
    assert set(body) == {"rendered", "model", "sources", "request_id"}
    assert metric(chat_app, "cmp_hf_tokens_total", model=PROVIDER_MODEL, kind="completion") == 0


@responses.activate
def test_text_generation_reports_tgi_generated_tokens(hf_app, spans):
    responses.post(f"https://hf.test/models/{MODEL}", json={"generated_text": "hi", "details": {"generated_tokens": 5}})
    assert chat(hf_app).get_json()["usage"] == {"completion_tokens": 5}
    assert metric(hf_app, "cmp_hf_tokens_total", model=MODEL, kind="completion") == 5
    span = next(s for s in spans.get_finished_spans() if s.name == "huggingface.generate")
    assert span.attributes["gen_ai.operation.name"] == "text_completion"
    assert "gen_ai.usage.input_tokens" not in span.attributes


@responses.activate
def test_cli_style_call_has_no_system_message(hf_settings):
    responses.post(CHAT_URL, json=completion("ok"))
    client = HuggingFaceClient(hf_settings.replace(hf_endpoint=V1))
    assert client.generate("Hello from Contexis!", GenerationParams()).text == "ok"
    assert json.loads(responses.calls[0].request.body)["messages"] == [
        {"role": "user", "content": "Hello from Contexis!"}
    ]


@responses.activate
@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        completion(content=None),
        {"choices": [{"text": "legacy completion"}]},
        [{"generated_text": "wrong format"}],
        "not json",
    ],
)
def test_unexpected_chat_answers_are_bad_response(chat_app, body):
    kwargs = {"body": body} if isinstance(body, str) else {"json": body}
    responses.post(CHAT_URL, **kwargs)
    response = chat(chat_app)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "hf_bad_response"
    assert "HF_API" in response.get_json()["error"]["message"]
    assert metric(chat_app, "cmp_hf_inference_errors_total", code="invalid_response") == 1


@responses.activate
@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "hf_bad_request"), (401, "hf_unauthorized"), (404, "hf_model_not_found"), (429, "hf_rate_limited")],
)
def test_openai_style_errors_keep_their_message_and_status_code(chat_app, status, code):
    upstream = {"error": {"message": f"model {PROVIDER_MODEL} says no, token {TOKEN}", "type": "invalid_request"}}
    responses.post(CHAT_URL, status=status, json=upstream)
    response = chat(chat_app)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == code
    assert f"returned {status}" in error["message"]
    assert f"model {PROVIDER_MODEL} says no, token ***" in error["message"]
    assert TOKEN not in response.get_data(as_text=True)


@responses.activate
def test_chat_completion_retries_like_the_classic_route(chat_app):
    responses.post(CHAT_URL, status=503, json={"error": "overloaded"})
    responses.post(CHAT_URL, status=429, json={"error": {"message": "slow down"}})
    responses.post(CHAT_URL, json=completion("after retries"))
    assert chat(chat_app).get_json()["rendered"] == "after retries"
    assert len(responses.calls) == 3


@responses.activate
def test_streamed_chat_payload_events_and_usage(chat_app, project):
    guardrails_off(project)  # each delta as relayed: no guardrail window
    usage = {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}
    responses.post(CHAT_URL, body="".join(chat_events(["Hel", "lo", "!"], usage)), content_type="text/event-stream")
    response = chat(chat_app, stream=True)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-cache"
    events = sse_events(response)
    assert events[:-1] == [("message", {"delta": "Hel"}), ("message", {"delta": "lo"}), ("message", {"delta": "!"})]
    assert events[-1][0] == "message"
    done = events[-1][1]
    assert done == {
        "done": True,
        "model": PROVIDER_MODEL,
        "usage": {"prompt_tokens": 40, "completion_tokens": 3},
        "sources": [],
        "request_id": response.headers["X-Request-ID"],
    }
    sent = json.loads(responses.calls[0].request.body)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert metric(chat_app, "cmp_hf_tokens_total", model=PROVIDER_MODEL, kind="prompt") == 40
    assert metric(chat_app, "cmp_hf_time_to_first_token_seconds_count", model=PROVIDER_MODEL) == 1
    assert metric(chat_app, "cmp_hf_inference_latency_seconds_count", model=PROVIDER_MODEL) == 1


@responses.activate
def test_streamed_text_generation_skips_special_tokens_and_ends_at_generated_text(hf_app):
    events = tgi_events(["Hi", " there"], generated_tokens=3)
    special = sse({"token": {"id": 2, "text": "</s>", "special": True}, "generated_text": None, "details": None})
    after_end = sse({"token": {"id": 9, "text": "never read", "special": False}, "generated_text": None})
    body = events[0] + special + events[1] + after_end
    responses.post(f"https://hf.test/models/{MODEL}", body=body, content_type="text/event-stream")
    response = chat(hf_app, stream=True)
    assert [data for _, data in sse_events(response)] == [
        {"delta": "Hi"},
        {"delta": " there"},
        {
            "done": True,
            "model": MODEL,
            "usage": {"completion_tokens": 3},
            "sources": [],
            "request_id": response.headers["X-Request-ID"],
        },
    ]
    sent = json.loads(responses.calls[0].request.body)
    assert sent["stream"] is True
    assert sent["parameters"]["max_new_tokens"] == 256


@responses.activate
@pytest.mark.parametrize(
    ("status", "http", "code"),
    [(401, 502, "hf_unauthorized"), (404, 502, "hf_model_not_found"), (503, 502, "hf_unavailable")],
)
def test_stream_failing_before_the_first_event_is_an_ordinary_json_error(chat_app, status, http, code):
    responses.post(CHAT_URL, status=status, json={"error": {"message": "nope"}})
    response = chat(chat_app, stream=True)
    assert response.status_code == http
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == code
    assert metric(chat_app, "cmp_hf_inference_errors_total", code=str(status)) == 1


@responses.activate
def test_stream_whose_first_event_is_an_error_is_an_ordinary_json_error(chat_app):
    responses.post(CHAT_URL, body=sse({"error": {"message": "CUDA out of memory"}}), content_type="text/event-stream")
    response = chat(chat_app, stream=True)
    assert response.status_code == 502
    assert response.get_json()["error"] == {
        "code": "hf_unavailable",
        "message": "Hugging Face failed during generation: CUDA out of memory. " + HINT_UNAVAILABLE,
    }
    assert metric(chat_app, "cmp_hf_inference_errors_total", code="stream_error") == 1


@responses.activate
@pytest.mark.parametrize("event", [sse("not json"), sse({"choices": "x"}), sse(["a list"])])
def test_malformed_first_event_is_a_json_bad_response(chat_app, event):
    responses.post(CHAT_URL, body=event, content_type="text/event-stream")
    response = chat(chat_app, stream=True)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "hf_bad_response"
    assert metric(chat_app, "cmp_hf_inference_errors_total", code="invalid_response") == 1


@responses.activate
def test_malformed_event_after_a_delta_ends_the_stream_with_an_error_event(chat_app):
    responses.post(CHAT_URL, body=chat_events(["ok"])[1] + sse("not json"), content_type="text/event-stream")
    events = sse_events(chat(chat_app, stream=True))
    assert events[0] == ("message", {"delta": "ok"})
    assert events[1][0] == "error"
    assert events[1][1]["error"]["code"] == "hf_bad_response"
    assert len(events) == 2


def test_usage_as_dict_drops_missing_counts():
    assert Usage(prompt_tokens=3).as_dict() == {"prompt_tokens": 3}
    assert Usage().as_dict() == {}


def test_stream_flag_must_be_boolean(client):
    response = client.post("/api/v1/chat", json={**GUIDE_BODY, "stream": "yes"})
    assert response.status_code == 400
    assert response.get_json()["error"]["message"].startswith("stream:")


def test_stream_without_a_model_sends_the_rendered_prompt_as_one_delta(client):
    response = client.post("/api/v1/chat", json={**GUIDE_BODY, "stream": True})
    events = sse_events(response)
    assert len(events) == 2
    assert events[0][1]["delta"] == client.post("/api/v1/chat", json=GUIDE_BODY).get_json()["rendered"]
    assert events[1][1] == {"done": True, "model": None, "sources": [], "request_id": response.headers["X-Request-ID"]}


def test_streamed_done_event_names_the_memory_sources(client, settings, project):
    open_memory(settings).store("CustomerDocs").ingest([project / "docs" / "CustomerDocs"])
    body = {**GUIDE_BODY, "component": "CustomerDocs", "prompt_file": "search_response.md", "query": "refund"}
    plain = client.post("/api/v1/chat", json=body).get_json()
    events = sse_events(client.post("/api/v1/chat", json={**body, "stream": True}))
    assert plain["sources"], "the example docs should match a refund question"
    assert events[-1][1]["sources"] == plain["sources"]
    assert events[0][1]["delta"] == plain["rendered"]

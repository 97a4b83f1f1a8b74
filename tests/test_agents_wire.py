"""What a wire format cannot carry or an upstream refuses: a clear 400 naming the field, never a silent drop.

`responses` plays the endpoints with the bodies they send: the classic text-generation route, and the router's
400 from a provider without tool calling.
"""

from __future__ import annotations

import json
import time

import pytest
import responses
import yaml
from fake_hf import FakeHF, RawHF, Reply, completion, drip, openai_model
from helpers import ENDPOINT, GUIDE_BODY, MODEL, TOKEN, chat

from app import create_app
from app.providers.base import GenerationParams
from app.providers.huggingface import HFError, HuggingFaceClient

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
ROUTER = "https://router.test/v1"
# What the router answers when the provider it picked does not do tool calling.
NO_TOOLS_BODY = {
    "error": {
        "message": f"Provider 'featherless-ai' does not support tools for model '{MODEL}' (token {TOKEN})",
        "type": "invalid_request_error",
        "param": "tools",
        "code": None,
    }
}


def openai(client, **body):
    return client.post("/v1/chat/completions", json={"model": "SupportBot", **body})


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI, "tools": [WEATHER]}, "tools"),
        ({"messages": HI, "tool_choice": "required"}, "tool_choice"),
        ({"messages": HI, "parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"messages": HI, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": HI, "n": 2}, "n"),
        ({"messages": HI, "logprobs": True}, "logprobs"),
        ({"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": HI, "presence_penalty": 1}, "presence_penalty"),
        ({"messages": HI, "frequency_penalty": 1}, "frequency_penalty"),
        ({"messages": HI, "user": "u1"}, "user"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, IMAGE]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "ok"}, *HI]}, "messages"),
        ({"messages": [*HI, {"role": "assistant", "content": "Sure, "}]}, "messages"),
        (
            {
                "messages": [
                    *HI,
                    {"role": "assistant", "content": None, "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": "c1", "content": "sun"},
                    *HI,
                ]
            },
            "messages",
        ),
    ],
)
@responses.activate
def test_the_text_generation_route_refuses_what_it_cannot_carry_by_name(hf_settings, body, param):
    response = openai(create_app(hf_settings).test_client(), **body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("unsupported_by_endpoint", param, "invalid_request_error")
    assert "HF_API=chat-completion" in error["message"]
    assert len(responses.calls) == 0  # refused before any call


@responses.activate
def test_the_native_api_on_text_generation_refuses_tools_in_its_own_shape(hf_settings):
    response = chat(create_app(hf_settings), {**GUIDE_BODY, "tools": [WEATHER]})
    assert response.status_code == 400
    assert response.get_json() == {
        "error": {
            "code": "unsupported_by_endpoint",
            "message": "tools: tools cannot be sent with HF_API=text-generation, which carries only a prompt and "
            "sampling parameters; HF_API=chat-completion (the router, TGI's and vLLM's /v1) serves it.",
        }
    }
    assert len(responses.calls) == 0


@responses.activate
def test_seed_and_stop_are_the_classic_routes_own(hf_settings):
    responses.post(f"{ENDPOINT}/{MODEL}", json=[{"generated_text": "ok"}])
    response = openai(create_app(hf_settings).test_client(), messages=HI, seed=11, stop=["\n"])
    assert response.status_code == 200
    parameters = json.loads(responses.calls[0].request.body)["parameters"]
    assert (parameters["seed"], parameters["stop"]) == (11, ["\n"])


@responses.activate
def test_a_provider_without_tools_is_a_clear_400_naming_tools_not_a_502(hf_settings):
    responses.post(f"{ROUTER}/chat/completions", status=400, json=NO_TOOLS_BODY)
    app = create_app(hf_settings.replace(hf_endpoint=ROUTER))
    response = openai(app.test_client(), messages=HI, tools=[WEATHER])
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("unsupported_by_model", "tools", "invalid_request_error")
    assert "does not support tools" in error["message"]
    assert "supports_tools" in error["message"]  # the hint says how to find a provider that does
    assert TOKEN not in json.dumps(response.get_json())
    assert response.headers["x-should-retry"] == "false"
    assert len(responses.calls) == 1  # a refusal is not retried
    native = chat(app, {**GUIDE_BODY, "tools": [WEATHER]})
    assert (native.status_code, native.get_json()["error"]["code"]) == (400, "unsupported_by_model")


@responses.activate
def test_a_400_naming_another_field_stays_the_endpoints_refusal(hf_settings):
    body = {"error": {"message": "model is not supported", "type": "invalid_request_error", "param": "model"}}
    responses.post(f"{ROUTER}/chat/completions", status=400, json=body)
    response = openai(create_app(hf_settings.replace(hf_endpoint=ROUTER)).test_client(), messages=HI)
    assert (response.status_code, response.get_json()["error"]["code"]) == (502, "hf_bad_request")


def test_a_call_ends_at_the_requests_deadline_when_it_is_sooner_than_hf_deadline(hf_settings):
    with RawHF(drip(5, 0.05)) as raw:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=raw.url, hf_deadline=30), pool_size=1)
        started = time.monotonic()
        with pytest.raises(HFError) as raised:
            client.generate("p", GenerationParams(deadline_at=started + 0.5))
        client.close()
    assert raised.value.code == "hf_timeout"
    assert time.monotonic() - started < 2


def test_a_chain_moves_past_a_provider_without_tools_and_checks_structured_output(project, hf_settings):
    """With a `model:` chain the provider that refuses `tools` is passed for the next entry (not counted
    against its circuit), and a structured answer is checked whichever entry gives it."""
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    with FakeHF(Reply(400, NO_TOOLS_BODY)) as refusing, FakeHF(Reply(body=openai_model)) as agent:
        chain = {"id": "org/model:featherless-ai", "fallbacks": [{"id": "local", "endpoint": f"{agent.url}/v1"}]}
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "model": chain}))
        app = create_app(hf_settings.replace(hf_endpoint=f"{refusing.url}/v1"))
        client = app.test_client()
        asked = [{"role": "user", "content": "get_weather(city=Oslo)"}]
        answer = openai(client, messages=asked, tools=[WEATHER]).get_json()
        assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert answer["model"] == "local"
        assert len(refusing.seen) == 1 and agent.seen[0].body["tools"] == [WEATHER]
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        response_format = {"type": "json_schema", "json_schema": {"name": "N", "schema": schema}}
        ok = openai(client, messages=[{"role": "user", "content": "n=3"}], response_format=response_format)
        assert json.loads(ok.get_json()["choices"][0]["message"]["content"]) == {"n": 3}
        agent.replies = [Reply(body=completion('{"n": "three"}'))]
        bad = openai(client, messages=[{"role": "user", "content": "n=3"}], response_format=response_format)
        assert (bad.status_code, bad.get_json()["error"]["code"]) == (502, "structured_output_invalid")

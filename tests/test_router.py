"""Hugging Face as it is today: the router by default, the retired host moved, and the router's own answers.

Bodies are the ones Hugging Face sends. `responses` plays the router and the Hub (no test reaches the
internet); `ctx hf test-model` runs in-process for those cases, and as a subprocess against local sockets.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import requests
import responses
from fake_hf import CREDITS_BODY, FakeHF, Reply, Stream, chat_events
from helpers import ENDPOINT, EXAMPLE, MODEL, TOKEN, Server, chat, free_port, metric, run

import cli
from app import create_app
from app.config import Settings
from app.providers.base import GenerationParams
from app.providers.huggingface import HFError, HuggingFaceClient

ROUTER_CHAT = "https://router.huggingface.co/v1/chat/completions"
CURRENT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
RETIRED = "https://api-inference.huggingface.co/models"
HUB_MODEL = f"https://huggingface.co/api/models/{CURRENT_MODEL}"
# The router answers with the serving provider's own id for the model, not the id asked for.
ROUTER_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764100000,
    "model": "llama-3.1-8b-instruct",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello from the router!"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}
RETIRED_BODY = {
    "error": "https://api-inference.huggingface.co is no longer supported. "
    "Please use https://router.huggingface.co instead."
}
RETIRED_BODY_SLASHES = {
    "error": "https://api-inference.huggingface.co/ is no longer supported. "
    "Please use https://router.huggingface.co/ instead."
}
KWARGS_BODY = {
    "error": "The following `model_kwargs` are not used by the model: ['return_full_text', 'watermark'] "
    "(note: typos in the generate arguments will also show up in this list)"
}
NOT_SUPPORTED_BODY = {
    "error": {
        "message": f"The requested model '{CURRENT_MODEL}' is not supported by any provider you have enabled.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_supported",
    }
}


def env_settings(**env: str) -> Settings:
    return Settings.from_env({"HF_TOKEN": TOKEN, "HF_MODEL_ID": CURRENT_MODEL, **env}, dotenv_path=None)


def ctx_test_model(monkeypatch, capsys, tmp_path, **env: str) -> tuple[int, str, str]:
    """`ctx hf test-model` in this process (so `responses` plays the router), in an empty directory."""
    for name in [name for name in os.environ if name.startswith(("HF_", "CMP_"))]:
        monkeypatch.delenv(name)
    for name, value in {"HF_TOKEN": TOKEN, "HF_MODEL_ID": CURRENT_MODEL, **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    code = cli.main(["hf", "test-model", "Hello from Contexis!"])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out, err


@responses.activate
def test_without_hf_endpoint_the_chat_goes_to_the_routers_chat_completions(settings):
    responses.post(ROUTER_CHAT, json=ROUTER_ANSWER)
    app = create_app(env_settings(CMP_PROJECT_ROOT=str(settings.project_root)))
    response = chat(app)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["rendered"] == "Hello from the router!"
    assert [call.request.url for call in responses.calls] == [ROUTER_CHAT]
    assert json.loads(responses.calls[0].request.body)["model"] == CURRENT_MODEL
    version = app.test_client().get("/version").get_json()
    assert version["hf_endpoint"] == "https://router.huggingface.co/v1"
    assert (version["hf_api"], version["hf_url"]) == ("chat-completion", ROUTER_CHAT)


@responses.activate
@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"HF_ENDPOINT": RETIRED}, ROUTER_CHAT),
        ({"HF_ENDPOINT": "https://api-inference.huggingface.co/"}, ROUTER_CHAT),
        ({"HF_ENDPOINT": RETIRED + "/", "HF_API": "chat-completion"}, ROUTER_CHAT),
        (
            {"HF_ENDPOINT": RETIRED, "HF_API": "text-generation"},
            f"https://router.huggingface.co/hf-inference/models/{CURRENT_MODEL}",
        ),
    ],
)
def test_the_retired_host_is_moved_to_the_router(env, url):
    responses.post(url, json=ROUTER_ANSWER if url == ROUTER_CHAT else [{"generated_text": "classic"}])
    client = HuggingFaceClient(env_settings(**env))
    assert client.url == url
    client.generate("hi", GenerationParams())
    assert [call.request.url for call in responses.calls] == [url]


@responses.activate
def test_test_model_with_the_guides_commands_warns_once_and_says_where_it_went(monkeypatch, capsys, tmp_path):
    responses.post(ROUTER_CHAT, json=ROUTER_ANSWER)
    code, out, err = ctx_test_model(
        monkeypatch, capsys, tmp_path, HF_ENDPOINT=RETIRED, HF_MODEL_ID="meta-llama/Meta-Llama-3.1-8B-Instruct"
    )
    assert code == 0, err
    assert out == "Hello from the router!\n"
    lines = err.splitlines()
    warning = [line for line in lines if line.startswith("ctx: warning:")]
    assert warning == [
        f"ctx: warning: HF_ENDPOINT={RETIRED} is retired by Hugging Face (every call answers 410 Gone); using "
        "https://router.huggingface.co/v1 instead. Set HF_ENDPOINT=https://router.huggingface.co/v1 to silence "
        "this warning."
    ]
    assert f"ctx: POST {ROUTER_CHAT} (chat-completion, model meta-llama/Meta-Llama-3.1-8B-Instruct)" in lines
    answered = [line for line in lines if line.startswith("ctx: answered in ")]
    assert len(answered) == 1 and answered[0].endswith("s by model llama-3.1-8b-instruct")
    assert [call.request.url for call in responses.calls] == [ROUTER_CHAT]


@responses.activate
def test_test_model_without_hf_endpoint_calls_the_router_without_a_warning(monkeypatch, capsys, tmp_path):
    responses.post(ROUTER_CHAT, json=ROUTER_ANSWER)
    code, out, err = ctx_test_model(monkeypatch, capsys, tmp_path)
    assert (code, out) == (0, "Hello from the router!\n")
    assert "warning" not in err
    assert err.startswith(f"ctx: POST {ROUTER_CHAT} (chat-completion, model {CURRENT_MODEL})\n")


def test_serve_with_the_retired_host_warns_once_and_version_shows_the_router():
    env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": RETIRED + "/", "CMP_PROJECT_ROOT": str(EXAMPLE)}
    server = Server(env=env)
    try:
        version = requests.get(f"{server.url}/version", timeout=5).json()
    finally:
        _, output = server.stop()
    assert version["hf_endpoint"] == "https://router.huggingface.co/v1"
    assert version["hf_url"] == ROUTER_CHAT
    assert output.count("is retired by Hugging Face") == 1
    assert f"ctx: warning: HF_ENDPOINT={RETIRED} is retired" in output
    assert TOKEN not in output


def test_wsgi_entry_logs_the_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)
    for name, value in {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": RETIRED}.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="app"):
        app = create_app()
    assert [r.getMessage() for r in caplog.records if "is retired by Hugging Face" in r.getMessage()]
    assert app.test_client().get("/version").get_json()["hf_url"] == ROUTER_CHAT


@responses.activate
@pytest.mark.parametrize("body", [RETIRED_BODY, RETIRED_BODY_SLASHES])
def test_410_is_hf_endpoint_retired_with_the_routers_url(hf_app, body):
    responses.post(f"{ENDPOINT}/{MODEL}", status=410, json=body)
    response = chat(hf_app)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "hf_endpoint_retired"
    assert "is no longer supported" in error["message"]
    assert error["message"].endswith("set HF_ENDPOINT=https://router.huggingface.co/v1.")
    assert len(responses.calls) == 1  # not retried
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="410") == 1


@responses.activate
def test_402_is_hf_payment_required_with_a_billing_hint(hf_app):
    responses.post(f"{ENDPOINT}/{MODEL}", status=402, json=CREDITS_BODY)
    response = chat(hf_app)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "hf_payment_required"
    assert "exceeded your monthly included credits" in error["message"]
    assert "Inference Providers credits" in error["message"] and "billing" in error["message"]
    assert len(responses.calls) == 1
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="402") == 1


def test_test_model_410_from_a_real_socket_exits_1_with_the_hint():
    with FakeHF(Reply(410, RETIRED_BODY)) as fake:
        result = run("hf", "test-model", "hi", env={"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": fake.url})
    assert result.returncode == 1
    assert "ctx: hf_endpoint_retired: Hugging Face returned 410" in result.stderr
    assert "set HF_ENDPOINT=https://router.huggingface.co/v1." in result.stderr


@responses.activate
def test_model_kwargs_rejected_by_a_pipeline_model_are_dropped_and_remembered(hf_app):
    url = f"{ENDPOINT}/{MODEL}"
    responses.post(url, status=400, json=KWARGS_BODY)
    responses.post(url, json=[{"generated_text": "from the pipeline"}])
    first = chat(hf_app)
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["rendered"] == "from the pipeline"
    assert len(responses.calls) == 2
    sent = [json.loads(call.request.body)["parameters"] for call in responses.calls]
    assert sent[0]["return_full_text"] is False
    assert sent[1] == {"max_new_tokens": 256, "temperature": 0.3, "top_p": 0.95}

    second = chat(hf_app)
    assert second.status_code == 200
    assert len(responses.calls) == 3  # one request: the model's answer is remembered
    assert json.loads(responses.calls[2].request.body)["parameters"] == sent[1]
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="400") == 0


def test_model_kwargs_recovery_on_a_real_socket_streams_too(hf_settings):
    events = 'data: {"token": {"id": 0, "text": "ok", "special": false}, "generated_text": "ok", "details": null}\n\n'
    with FakeHF(Reply(400, KWARGS_BODY), Stream([events])) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url))
        assert list(client.stream("hi", GenerationParams())) == ["ok"]
    assert len(fake.seen) == 2
    assert "return_full_text" not in fake.seen[1].body["parameters"]


@responses.activate
def test_a_400_naming_only_parameters_not_sent_is_not_retried(hf_app):
    body = {"error": "The following `model_kwargs` are not used by the model: ['watermark'] (note: typos ...)"}
    responses.post(f"{ENDPOINT}/{MODEL}", status=400, json=body)
    response = chat(hf_app)
    assert response.get_json()["error"]["code"] == "hf_bad_request"
    assert len(responses.calls) == 1


@responses.activate
@pytest.mark.parametrize(("bill_to", "sent"), [("acme-corp", "acme-corp"), ("", None)])
def test_hf_bill_to_is_sent_on_every_inference_call(bill_to, sent):
    responses.post(ROUTER_CHAT, json=ROUTER_ANSWER)
    client = HuggingFaceClient(env_settings(HF_BILL_TO=bill_to))
    client.generate("a", GenerationParams())
    client.generate("b", GenerationParams())
    assert [call.request.headers.get("X-HF-Bill-To") for call in responses.calls] == [sent, sent]


@responses.activate
@pytest.mark.parametrize(
    "mapping",
    [
        {
            "together": {"status": "live", "providerId": "meta-llama/Llama-3-8b-Turbo", "task": "conversational"},
            "novita": {"status": "live", "providerId": "meta-llama/llama-3.1-8b-instruct", "task": "conversational"},
            "nscale": {"status": "staging", "providerId": "meta-llama/Llama-3.1-8B", "task": "conversational"},
        },
        [
            {"provider": "together", "providerId": "x", "status": "live", "task": "conversational"},
            {"provider": "novita", "providerId": "y", "status": "live", "task": "conversational"},
            {"provider": "nscale", "providerId": "z", "status": "staging", "task": "conversational"},
        ],
    ],
    ids=["object", "list"],
)
def test_a_refused_model_lists_the_live_providers_from_the_hub(monkeypatch, capsys, tmp_path, mapping):
    responses.post(ROUTER_CHAT, status=400, json=NOT_SUPPORTED_BODY)
    hub = responses.get(HUB_MODEL, json={"id": CURRENT_MODEL, "inferenceProviderMapping": mapping})
    code, out, err = ctx_test_model(monkeypatch, capsys, tmp_path, HF_MODEL_ID=f"{CURRENT_MODEL}:nscale")
    assert (code, out) == (1, "")
    assert "ctx: hf_bad_request: Hugging Face returned 400" in err and "not supported by any provider" in err
    assert f"try HF_MODEL_ID={CURRENT_MODEL}:together" in err
    assert f"try HF_MODEL_ID={CURRENT_MODEL}:novita" in err
    assert "ctx:   together (conversational, as " in err
    assert ":nscale" not in err.split("Inference Providers serving")[1]  # staging is not live
    request = hub.calls[0].request
    assert request.url == f"{HUB_MODEL}?expand=inferenceProviderMapping"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


@responses.activate
def test_the_guides_renamed_model_is_suggested_under_its_current_id(monkeypatch, capsys, tmp_path):
    responses.post(ROUTER_CHAT, status=400, json=NOT_SUPPORTED_BODY)
    old = "https://huggingface.co/api/models/meta-llama/Meta-Llama-3.1-8B-Instruct"
    responses.get(old, status=307, headers={"Location": f"{HUB_MODEL}?expand=inferenceProviderMapping"})
    mapping = {"together": {"status": "live", "providerId": "x", "task": "conversational"}}
    responses.get(HUB_MODEL, json={"id": CURRENT_MODEL, "inferenceProviderMapping": mapping})
    code, _, err = ctx_test_model(monkeypatch, capsys, tmp_path, HF_MODEL_ID="meta-llama/Meta-Llama-3.1-8B-Instruct")
    assert code == 1
    assert f"ctx: the Hub knows meta-llama/Meta-Llama-3.1-8B-Instruct as {CURRENT_MODEL}" in err
    assert f"try HF_MODEL_ID={CURRENT_MODEL}:together" in err


@responses.activate
@pytest.mark.parametrize("mapping", [{}, [], None])
def test_a_model_no_provider_serves_says_so(monkeypatch, capsys, tmp_path, mapping):
    responses.post(ROUTER_CHAT, status=404, json={"error": "Model not found"})
    responses.get(HUB_MODEL, json={"id": CURRENT_MODEL, "inferenceProviderMapping": mapping})
    code, _, err = ctx_test_model(monkeypatch, capsys, tmp_path)
    assert code == 1
    assert "ctx: hf_model_not_found:" in err
    assert f"ctx: no Inference Provider serves {CURRENT_MODEL} right now" in err


@responses.activate
def test_a_hub_that_is_down_never_hides_the_original_error(monkeypatch, capsys, tmp_path):
    responses.post(ROUTER_CHAT, status=400, json=NOT_SUPPORTED_BODY)
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens: a real refused connection
    responses.add_passthru(hub)
    code, _, err = ctx_test_model(monkeypatch, capsys, tmp_path, HF_HUB_ENDPOINT=hub)
    assert code == 1
    assert "ctx: hf_bad_request: Hugging Face returned 400" in err
    assert f"ctx: could not look up which Inference Providers serve {CURRENT_MODEL}: the Hub is unreachable" in err


@responses.activate
def test_a_hub_error_status_never_hides_the_original_error(monkeypatch, capsys, tmp_path):
    responses.post(ROUTER_CHAT, status=404, json={"error": "Model not found"})
    responses.get(HUB_MODEL, status=500, body="<html>oops</html>")
    code, _, err = ctx_test_model(monkeypatch, capsys, tmp_path)
    assert code == 1
    assert "ctx: hf_model_not_found:" in err
    assert "the Hub answered 500" in err


@responses.activate
def test_other_endpoints_and_other_errors_do_not_ask_the_hub(monkeypatch, capsys, tmp_path):
    responses.post(f"{ENDPOINT}/v1/chat/completions", status=404, json={"error": "Model not found"})
    responses.post(ROUTER_CHAT, status=401, json={"error": "Invalid credentials in Authorization header"})
    assert ctx_test_model(monkeypatch, capsys, tmp_path, HF_ENDPOINT=f"{ENDPOINT}/v1")[0] == 1
    assert ctx_test_model(monkeypatch, capsys, tmp_path)[0] == 1
    assert all("huggingface.co/api" not in call.request.url for call in responses.calls)


def test_a_provider_suffix_with_text_generation_is_a_startup_error():
    env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": f"{CURRENT_MODEL}:together", "HF_API": "text-generation"}
    result = run("hf", "test-model", "hi", env=env)
    assert result.returncode == 2
    assert "picks an Inference Provider (':together'), which only the chat-completion route" in result.stderr


def test_hf_error_keeps_the_upstream_explanation_for_callers():
    with FakeHF(Reply(400, KWARGS_BODY)) as fake:
        client = HuggingFaceClient(env_settings(HF_ENDPOINT=fake.url, HF_API="chat-completion"))
        with pytest.raises(HFError) as raised:
            client.generate("hi", GenerationParams())
    assert raised.value.upstream_error.startswith("The following `model_kwargs`")
    assert len(fake.seen) == 1  # the chat route learns nothing from it: no retry


def test_test_model_stream_reports_the_model_the_stream_names():
    with FakeHF(Stream(chat_events(["Hel", "lo"]))) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": CURRENT_MODEL, "HF_ENDPOINT": f"{fake.url}/v1"}
        result = run("hf", "test-model", "hi", "--stream", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello\n"
    lines = result.stderr.splitlines()
    assert lines[0] == f"ctx: POST {fake.url}/v1/chat/completions (chat-completion, model {CURRENT_MODEL})"
    assert lines[1].startswith("ctx: answered in ") and lines[1].endswith("s by model m")

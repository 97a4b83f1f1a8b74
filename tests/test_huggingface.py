"""The Hugging Face client: the guide's payload, response shapes, errors, retries, timeouts, secrecy."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
import responses
from fake_hf import FakeHF, Reply
from helpers import ENDPOINT, GUIDE_BODY, MODEL, TOKEN, chat, metric
from opentelemetry.trace import StatusCode

from app import create_app
from app.providers.base import GenerationParams
from app.providers.huggingface import HFError, HuggingFaceClient

URL = f"{ENDPOINT}/{MODEL}"




@responses.activate
def test_guide_payload_url_and_token(hf_app):
    responses.post(URL, json=[{"generated_text": "Hello! How can I help?"}])
    response = chat(hf_app)
    assert response.status_code == 200
    assert response.get_json()["rendered"] == "Hello! How can I help?"
    assert response.get_json()["model"] == MODEL
    call = responses.calls[0].request
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    sent = json.loads(call.body)
    assert set(sent) == {"inputs", "parameters"}
    assert "User: hello" in sent["inputs"]
    # max_tokens and temperature come from the SupportBot context's guardrails.
    assert sent["parameters"] == {"max_new_tokens": 256, "temperature": 0.3, "top_p": 0.95, "return_full_text": False}


@responses.activate
def test_a_cookie_an_upstream_sets_is_never_sent_back(hf_app):
    # One session serves every tenant's calls: a cookie from one answer must not ride on the next call.
    answer = [{"generated_text": "Hi"}]
    responses.post(URL, json=answer, headers={"Set-Cookie": "AWSALB=sticky-1; Path=/"})
    responses.post(URL, status=307, headers={"Location": f"{URL}-moved"})  # nor on a redirected call
    responses.post(f"{URL}-moved", json=answer)
    assert chat(hf_app).status_code == chat(hf_app).status_code == 200
    assert [call.request.headers.get("Cookie") for call in responses.calls] == [None, None, None]


@responses.activate
def test_request_body_cannot_change_endpoint_model_or_token(hf_app):
    responses.post(URL, json=[{"generated_text": "ok"}])
    body = {**GUIDE_BODY, "model": "evil/model", "endpoint": "http://evil", "hf_token": "x", "HF_TOKEN": "x"}
    assert chat(hf_app, body).status_code == 200
    assert responses.calls[0].request.url == URL
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


@responses.activate
@pytest.mark.parametrize("shape", [[{"generated_text": "text"}], {"generated_text": "text"}])
def test_both_answer_shapes_are_parsed(hf_settings, shape):
    responses.post(URL, json=shape)
    assert HuggingFaceClient(hf_settings).generate("p", GenerationParams()).text == "text"


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "http", "code", "hint"),
    [
        (401, {"error": "Invalid credentials"}, 502, "hf_unauthorized", "Verify HF_TOKEN scope and validity"),
        (403, {"error": "gated model"}, 502, "hf_forbidden", "Verify HF_TOKEN scope and validity"),
        (404, {"error": "Model not found"}, 502, "hf_model_not_found", "Check HF_MODEL_ID spelling and access"),
        (429, {"error": "Rate limit reached"}, 502, "hf_rate_limited", "rate limiting"),
        (503, {"error": "Model is loading", "estimated_time": 20.0}, 502, "hf_unavailable", "retry shortly"),
        (500, "<html>oops</html>", 502, "hf_unavailable", "retry shortly"),
        (422, {"error": "temperature must be positive"}, 502, "hf_bad_request", "guardrails"),
        (418, "teapot", 502, "hf_bad_response", "check HF_ENDPOINT"),
    ],
)
def test_upstream_statuses_map_to_typed_errors_with_hints(hf_app, status, body, http, code, hint):
    kwargs = {"json": body} if isinstance(body, dict) else {"body": body}
    responses.post(URL, status=status, **kwargs)
    response = chat(hf_app)
    assert response.status_code == http
    error = response.get_json()["error"]
    assert error["code"] == code
    assert hint in error["message"]
    assert str(status) in error["message"]
    assert "<html>" not in error["message"]
    assert metric(hf_app, "cmp_hf_inference_errors_total", code=str(status)) == 1
    if isinstance(body, dict) and "estimated_time" in body:
        assert "estimated time 20s" in error["message"]


@responses.activate
@pytest.mark.parametrize("raw", [b"not json", b"[]", b"{}", b'[{"generated_text": 5}]', b'"text"'])
def test_unexpected_answers_are_bad_response_not_a_crash(hf_app, raw):
    responses.post(URL, body=raw, status=200)
    response = chat(hf_app)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "hf_bad_response"
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="invalid_response") == 1


@responses.activate
def test_json_that_only_the_standard_library_reads_is_still_an_answer(hf_app):
    # orjson reads answers first; a NaN (which Python's json accepts and TGI's details may hold) still parses.
    responses.post(URL, body=b'[{"generated_text": "Hi", "details": {"top_logprob": NaN}}]', status=200)
    response = chat(hf_app)
    assert response.status_code == 200
    assert response.get_json()["rendered"] == "Hi"


@responses.activate
def test_retries_stop_after_hf_max_retries(hf_app):
    responses.post(URL, status=503, json={"error": "overloaded"})
    assert chat(hf_app).status_code == 502
    assert len(responses.calls) == 3  # the first try and HF_MAX_RETRIES=2 retries
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="503") == 1


@responses.activate
def test_retry_then_success_counts_no_error(hf_app):
    responses.post(URL, status=502, body="bad gateway")
    responses.post(URL, status=429, json={"error": "slow down"})
    responses.post(URL, json=[{"generated_text": "finally"}])
    response = chat(hf_app)
    assert response.get_json()["rendered"] == "finally"
    assert len(responses.calls) == 3
    assert metric(hf_app, "cmp_hf_inference_errors_total", code="502") == 0
    assert metric(hf_app, "cmp_hf_inference_latency_seconds_count", model=MODEL) == 1


@responses.activate
def test_client_errors_are_not_retried(hf_app):
    responses.post(URL, status=401, json={"error": "bad token"})
    chat(hf_app)
    assert len(responses.calls) == 1


def test_retry_after_is_honoured_on_a_real_socket(hf_settings):
    with FakeHF(Reply(429, {"error": "rate"}, {"Retry-After": "1"}), Reply()) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url))
        started = time.monotonic()
        assert client.generate("p", GenerationParams()).text == "Hi from the fake model"
        assert time.monotonic() - started >= 0.95
        assert len(fake.seen) == 2


def test_503_while_loading_waits_and_retries(hf_settings):
    loading = Reply(503, {"error": "Model is currently loading", "estimated_time": 1.0})
    with FakeHF(loading, loading, Reply()) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url, hf_backoff_factor=0.1))
        assert client.generate("p", GenerationParams()).text == "Hi from the fake model"
        assert len(fake.seen) == 3
        assert fake.seen[0].path == f"/{MODEL}"


def test_deadline_stops_a_retry_that_would_wait_too_long(hf_settings):
    with FakeHF(Reply(429, {"error": "rate"}, {"Retry-After": "30"}), Reply()) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url, hf_deadline=2))
        started = time.monotonic()
        with pytest.raises(HFError) as caught:
            client.generate("p", GenerationParams())
        assert time.monotonic() - started < 1.5
        assert caught.value.code == "hf_rate_limited"
        assert len(fake.seen) == 1


def test_read_timeout_is_504_and_not_retried(hf_settings):
    with FakeHF(Reply(delay=2)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url, hf_timeout=0.3))
        started = time.monotonic()
        response = chat(app)
        assert time.monotonic() - started < 1.5
        assert response.status_code == 504
        error = response.get_json()["error"]
        assert error["code"] == "hf_timeout"
        assert "Raise HF_TIMEOUT" in error["message"]
        assert metric(app, "cmp_hf_inference_errors_total", code="timeout") == 1
        assert len(fake.seen) == 1


def test_refused_connection_is_a_connection_error(hf_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    app = create_app(hf_settings.replace(hf_endpoint=f"http://127.0.0.1:{port}", hf_max_retries=1))
    response = chat(app)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "hf_connection_error"
    assert metric(app, "cmp_hf_inference_errors_total", code="connection_error") == 1


def test_connections_are_kept_alive_across_calls(hf_settings):
    with FakeHF(Reply()) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url))
        peers = set()
        original = fake.server.RequestHandlerClass.do_POST

        def tracking(handler):
            peers.add(handler.client_address)
            original(handler)

        fake.server.RequestHandlerClass.do_POST = tracking
        for _ in range(5):
            client.generate("p", GenerationParams())
        assert len(fake.seen) == 5
        assert len(peers) == 1


@responses.activate
def test_token_never_reaches_logs_errors_metrics_or_spans(hf_app, caplog, spans):
    responses.post(URL, status=401, json={"error": f"token {TOKEN} is invalid"})
    caplog.set_level(logging.DEBUG)
    response = chat(hf_app)
    client = hf_app.test_client()
    outputs = [
        response.get_data(as_text=True),
        caplog.text,
        client.get("/metrics").get_data(as_text=True),
        client.get("/version").get_data(as_text=True),
        repr(hf_app.extensions["contexis"].settings),
        json.dumps([dict(s.attributes) for s in spans.get_finished_spans()]),
        json.dumps([e.attributes for s in spans.get_finished_spans() for e in s.events], default=str),
    ]
    for text in outputs:
        assert TOKEN not in text
    assert "***" in response.get_json()["error"]["message"]


@responses.activate
def test_span_attributes_and_parentage(hf_app, spans):
    responses.post(URL, json=[{"generated_text": "ok"}])
    chat(hf_app)
    finished = spans.get_finished_spans()
    generate = next(s for s in finished if s.name == "huggingface.generate")
    assert generate.attributes["provider"] == "huggingface"
    assert generate.attributes["model_id"] == MODEL
    assert generate.attributes["gen_ai.request.model"] == MODEL
    assert generate.attributes["gen_ai.request.max_tokens"] == 256
    http_span = next(s for s in finished if s.name == "POST")
    assert http_span.parent.span_id == generate.context.span_id
    server_span = next(s for s in finished if s.name == "POST /api/v1/chat")
    assert generate.parent.span_id == server_span.context.span_id


@responses.activate
def test_failed_span_records_the_exception_and_error_status(hf_app, spans):
    responses.post(URL, status=404, json={"error": "nope"})
    chat(hf_app)
    generate = next(s for s in spans.get_finished_spans() if s.name == "huggingface.generate")
    assert generate.status.status_code == StatusCode.ERROR
    assert generate.attributes["error.type"] == "404"
    assert any(e.name == "exception" for e in generate.events)


@responses.activate
def test_metrics_endpoint_shows_both_hf_series(hf_app):
    responses.post(URL, json=[{"generated_text": "ok"}])
    responses.post(URL, status=404, json={"error": "nope"})
    chat(hf_app)
    chat(hf_app)
    text = hf_app.test_client().get("/metrics").get_data(as_text=True)
    assert f'cmp_hf_inference_latency_seconds_count{{model="{MODEL}"}} 2.0' in text
    assert 'cmp_hf_inference_errors_total{code="404"} 1.0' in text
    assert 'cmp_prompt_render_duration_seconds_count{component="SupportBot"} 2.0' in text
    assert "flask_http_request_total" in text


def test_one_session_serves_concurrent_threads(hf_settings):
    with FakeHF(Reply(delay=0.2)) as fake:
        client = HuggingFaceClient(hf_settings.replace(hf_endpoint=fake.url), pool_size=4)
        results: list[str] = []

        def call() -> None:
            results.append(client.generate("p", GenerationParams()).text)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == ["Hi from the fake model"] * 8

"""Hugging Face faults on real sockets: each maps to its error, is counted once, and the next request succeeds."""

from __future__ import annotations

import json
import time

import pytest
import requests
from fake_hf import RawHF, answer, chunked, drip, headers_then_stall, reset_mid_body
from helpers import EXAMPLE, GUIDE_BODY, MODEL, TOKEN, Server

from app import create_app

LOADING = json.dumps({"error": "Model is currently loading", "estimated_time": 20.0}).encode()
TEN_MB = 10 * 1024 * 1024


def errors_by_code(app) -> dict[str, float]:
    registry = app.extensions["contexis"].metrics.registry
    return {
        sample.labels["code"]: sample.value
        for metric in registry.collect()
        if metric.name == "cmp_hf_inference_errors"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }


@pytest.fixture
def fault_settings(hf_settings):
    # Tight timeouts keep the suite fast; the mapping logic is the same at production values.
    return hf_settings.replace(hf_timeout=0.5, hf_connect_timeout=0.5, hf_deadline=2.0, hf_max_retries=1)


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "metric", "detail", "calls"),
    [
        (reset_mid_body, 502, "hf_connection_error", "connection_error", "broke while reading", 1),
        (headers_then_stall(3), 504, "hf_timeout", "timeout", "stopped sending its answer for HF_TIMEOUT", 1),
        (drip(6, 0.05), 504, "hf_timeout", "timeout", "did not finish its answer within HF_DEADLINE=2s", 1),
        (answer(200, b"<html><body>Bad gateway</body></html>", {"Content-Type": "text/html"}), 502,
         "hf_bad_response", "invalid_response", "invalid JSON", 1),
        (answer(200, b'{"generated_text": "unterminated'), 502, "hf_bad_response", "invalid_response", "invalid JSON",
         1),
        (answer(200, b"[]"), 502, "hf_bad_response", "invalid_response", "without a generated_text", 1),
        (answer(200, b"not gzip at all", {"Content-Encoding": "gzip"}), 502, "hf_bad_response", "invalid_response",
         "cannot be decoded", 1),
        (answer(200, b"[" + b" " * TEN_MB + b"]"), 502, "hf_bad_response", "invalid_response",
         "more than HF_MAX_RESPONSE_BYTES=1048576", 1),
        (chunked(TEN_MB), 502, "hf_bad_response", "invalid_response", "more than HF_MAX_RESPONSE_BYTES=1048576", 1),
        (answer(429, b'{"error": "Rate limit reached"}', {"Retry-After": "1"}), 502, "hf_rate_limited", "429",
         "Rate limit reached", 2),
        (answer(503, LOADING), 502, "hf_unavailable", "503", "estimated time 20s", 2),
    ],
    ids=["reset", "stall", "drip", "html", "invalid-json", "empty-list", "bad-gzip", "10mb", "10mb-chunked", "429",
         "503"],
)  # fmt: skip
def test_fault_maps_to_its_error_counts_once_and_the_next_request_succeeds(
    fault_settings, behaviour, status, code, metric, detail, calls
):
    with RawHF(behaviour) as fake:
        app = create_app(fault_settings.replace(hf_endpoint=fake.url))
        client = app.test_client()
        started = time.monotonic()
        response = client.post("/api/v1/chat", json=GUIDE_BODY)
        elapsed = time.monotonic() - started
        assert response.status_code == status, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["code"] == code
        assert detail in error["message"]
        assert fake.hits == calls  # retried only where retrying can help
        # No fault holds a worker past the deadline plus one read timeout.
        assert elapsed < fault_settings.hf_deadline + fault_settings.hf_timeout + 0.5
        assert errors_by_code(app) == {metric: 1.0}

        fake.behaviour = answer()
        after = client.post("/api/v1/chat", json=GUIDE_BODY)
        assert after.status_code == 200
        assert after.get_json()["rendered"] == "Hi from the fake model"
        assert errors_by_code(app) == {metric: 1.0}


def test_refused_connection_then_the_endpoint_comes_up(fault_settings):
    with RawHF(answer(), listening=False) as fake:
        app = create_app(fault_settings.replace(hf_endpoint=fake.url))
        client = app.test_client()
        response = client.post("/api/v1/chat", json=GUIDE_BODY)
        assert response.status_code == 502
        assert response.get_json()["error"]["code"] == "hf_connection_error"
        assert "Could not reach the Hugging Face endpoint" in response.get_json()["error"]["message"]
        assert errors_by_code(app) == {"connection_error": 1.0}
        fake.listen()
        assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
        assert errors_by_code(app) == {"connection_error": 1.0}


def test_a_small_cap_applies_to_an_otherwise_valid_answer(fault_settings):
    body = json.dumps([{"generated_text": "x" * 500}]).encode()
    with RawHF(answer(200, body)) as fake:
        app = create_app(fault_settings.replace(hf_endpoint=fake.url, hf_max_response_bytes=len(body) - 1))
        assert app.test_client().post("/api/v1/chat", json=GUIDE_BODY).get_json()["error"]["code"] == "hf_bad_response"
        relaxed = create_app(fault_settings.replace(hf_endpoint=fake.url, hf_max_response_bytes=len(body)))
        assert relaxed.test_client().post("/api/v1/chat", json=GUIDE_BODY).get_json()["rendered"] == "x" * 500


def test_a_gunicorn_worker_survives_every_kind_of_fault():
    faults = [reset_mid_body, chunked(TEN_MB), drip(4, 0.05), headers_then_stall(3), answer(200, b"[]")]
    with RawHF(answer()) as fake:
        env = {
            "HF_TOKEN": TOKEN,
            "HF_MODEL_ID": MODEL,
            "HF_ENDPOINT": fake.url,
            "HF_TIMEOUT": "0.5",
            "HF_DEADLINE": "1",
            "HF_MAX_RETRIES": "0",
        }
        server = Server("--root", str(EXAMPLE), "--workers", "1", "--threads", "2", env=env)
        try:
            codes = []
            for behaviour in faults:
                fake.behaviour = behaviour
                codes.append(requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10).status_code)
            fake.behaviour = answer()
            after = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
            metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        finally:
            code, output = server.stop()
    assert codes == [502, 502, 504, 504, 502]
    assert after.json()["rendered"] == "Hi from the fake model"
    assert output.count("Booting worker") == 1, output
    for kind, count in [("connection_error", 1), ("invalid_response", 2), ("timeout", 2)]:
        assert f'cmp_hf_inference_errors_total{{code="{kind}"}} {count}.0' in metrics
    assert code == 0
    assert TOKEN not in output

"""Hardening found by a fault and abuse probe (issue 13): what one request may cost, and what it may see.

Streams that never end, templates that build without bound, memory stores that point outside the root,
credentials in `HF_ENDPOINT`, bodies that are not JSON.
"""

from __future__ import annotations

import logging
import time

from fake_hf import FakeHF, Stream, chat_events
from helpers import GUIDE_BODY, metric, sse_events

from app import create_app

STREAM_BODY = {**GUIDE_BODY, "stream": True}
KEEPALIVE = ": keepalive\n\n"


# -- 1. a stream that only sends comments ------------------------------------------------------------------


def read_stream(app) -> tuple[list[tuple[str, dict]], float]:
    started = time.monotonic()
    response = app.test_client().post("/api/v1/chat", json=STREAM_BODY, buffered=False)
    body = b"".join(response.response)
    response.close()
    return sse_events(body), time.monotonic() - started


def test_a_stream_of_comments_ends_at_the_deadline_with_an_error_event(hf_settings):
    one_delta_then_comments = chat_events(["Hel"])[:2] + [KEEPALIVE] * 400
    with FakeHF(Stream(one_delta_then_comments, gap=0.02)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1", hf_deadline=1.0, hf_timeout=5.0))
        events, elapsed = read_stream(app)
        assert fake.hung_up.wait(3)  # the upstream connection was closed, not left to run for 8 s
    assert events[0] == ("message", {"delta": "Hel"})
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "hf_timeout"
    assert "HF_DEADLINE=1s" in events[-1][1]["error"]["message"]
    assert elapsed < 2.0
    assert metric(app, "cmp_hf_inference_errors_total", code="timeout") == 1


def test_a_stream_is_capped_at_hf_max_response_bytes(hf_settings):
    padding = ": " + "x" * 1000 + "\n\n"
    with FakeHF(Stream(chat_events(["Hel"])[:2] + [padding] * 100)) as fake:
        settings = hf_settings.replace(hf_endpoint=f"{fake.url}/v1", hf_max_response_bytes=20_000)
        app = create_app(settings)
        events, _ = read_stream(app)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == "hf_bad_response"
    assert "HF_MAX_RESPONSE_BYTES=20000" in events[-1][1]["error"]["message"]
    assert fake.events_sent < 100
    assert metric(app, "cmp_hf_inference_errors_total", code="invalid_response") == 1


# -- 7. credentials in HF_ENDPOINT ---------------------------------------------------------------------------


def test_credentials_in_hf_endpoint_are_never_shown(hf_settings, spans, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeHF() as fake:
        endpoint = fake.url.replace("http://", "http://probe-user:s3cr3t-pass@") + "/models"
        app = create_app(hf_settings.replace(hf_endpoint=endpoint))
        client = app.test_client()
        version = client.get("/version")
        assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
    assert version.get_json()["hf_endpoint"] == f"{fake.url}/models"
    assert "s3cr3t" not in repr(app.config["SETTINGS"])
    seen = [version.get_data(as_text=True), caplog.text]
    seen += [str(dict(span.attributes or {})) for span in spans.get_finished_spans()]
    assert not [text for text in seen if "s3cr3t" in text]


# -- 8. bodies that are not JSON ------------------------------------------------------------------------------


def test_a_chat_body_not_sent_as_json_is_415(client):
    import json

    body = json.dumps(GUIDE_BODY)
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        response = client.post("/api/v1/chat", data=body, headers=headers)
        assert response.status_code == 415, headers
        assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert client.post("/api/v1/chat", data=body, content_type="application/json; charset=utf-8").status_code == 200

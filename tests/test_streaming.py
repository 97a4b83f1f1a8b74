"""Streaming on real sockets: a streaming upstream on 127.0.0.1, the app, gunicorn and the CLI.

What only real sockets show: deltas leave as they arrive (nothing buffers them), failures in the
middle of a stream, a client that hangs up closing the upstream connection, and slow tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from fake_hf import FakeHF, Reply, Stream, chat_events, completion, sse, tgi_events
from helpers import EXAMPLE, GUIDE_BODY, MODEL, REPO, TOKEN, Server, guardrails_off, metric, sse_events

from app import create_app

USAGE = {"prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54}
STREAM_BODY = {**GUIDE_BODY, "stream": True}


@pytest.fixture(autouse=True)
def _relay_only(project):
    """These tests are about the relay: each delta as the upstream sent it, with no guardrail window."""
    guardrails_off(project)


def open_stream(app):
    """The app's streamed answer, unbuffered: iterate `.response` to read each event as it is written."""
    return app.test_client().post("/api/v1/chat", json=STREAM_BODY, buffered=False)


def test_deltas_arrive_in_order_and_the_inference_span_covers_the_stream(hf_settings, spans):
    with FakeHF(Stream(chat_events(["The", " answer", " is", " 42"], USAGE), gap=0.02)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))
        response = open_stream(app)
        events = sse_events(b"".join(response.response))
        response.close()
    assert [data for _, data in events[:-1]] == [
        {"delta": "The"},
        {"delta": " answer"},
        {"delta": " is"},
        {"delta": " 42"},
    ]
    assert events[-1][1] == {
        "done": True,
        "model": MODEL,
        "usage": {"prompt_tokens": 50, "completion_tokens": 4},
        "sources": [],
        "request_id": response.headers["X-Request-ID"],
    }
    assert fake.seen[0].path == "/v1/chat/completions"
    finished = spans.get_finished_spans()
    generate = next(s for s in finished if s.name == "huggingface.generate")
    server = next(s for s in finished if s.name == "POST /api/v1/chat")
    assert generate.parent.span_id == server.context.span_id
    assert generate.attributes["gen_ai.usage.output_tokens"] == 4
    # The request's span ends when the view returns (Flask 3.1 tears the request down then);
    # the inference span goes on until the last delta: three gaps between four deltas.
    assert generate.end_time - generate.start_time >= 0.06e9


def test_an_upstream_that_answers_a_stream_whole_is_relayed_as_one_delta(hf_settings):
    with FakeHF(Reply(body=completion("The whole answer", usage={"prompt_tokens": 5, "completion_tokens": 3}))) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))
        response = open_stream(app)
        events = sse_events(b"".join(response.response))
    assert fake.seen[0].body["stream"] is True
    assert [data for _, data in events] == [
        {"delta": "The whole answer"},
        {
            "done": True,
            "model": MODEL,
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            "sources": [],
            "request_id": response.headers["X-Request-ID"],
        },
    ]
    assert metric(app, "cmp_hf_tokens_total", model=MODEL, kind="completion") == 3


def test_first_event_is_relayed_before_the_upstream_sends_the_rest(hf_settings):
    hold = threading.Event()
    with FakeHF(Stream(tgi_events(["first", " second"]), hold=hold)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url))
        response = open_stream(app)
        chunks = iter(response.response)
        first = next(chunks)
        sent_when_first_arrived = fake.events_sent
        hold.set()
        rest = b"".join(chunks)
        response.close()
    assert sse_events(first) == [("message", {"delta": "first"})]
    assert sent_when_first_arrived == 1
    assert [data.get("delta") for _, data in sse_events(rest)] == [" second", None]


def test_upstream_error_mid_stream_ends_with_an_error_event(hf_settings, spans):
    failure = sse({"error": f"Request failed during generation: out of memory ({TOKEN})", "error_type": "generation"})
    with FakeHF(Stream([*tgi_events(["a", "b", "c"])[:2], failure])) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url))
        response = open_stream(app)
        raw = b"".join(response.response)
        response.close()
    events = sse_events(raw)
    assert events[:2] == [("message", {"delta": "a"}), ("message", {"delta": "b"})]
    name, data = events[2]
    assert name == "error"
    assert data["error"]["code"] == "hf_unavailable"
    assert "out of memory (***)" in data["error"]["message"]
    assert len(events) == 3
    assert TOKEN not in raw.decode()
    assert metric(app, "cmp_hf_inference_errors_total", code="stream_error") == 1
    generate = next(s for s in spans.get_finished_spans() if s.name == "huggingface.generate")
    assert generate.attributes["error.type"] == "stream_error"


@pytest.mark.parametrize(
    ("stream", "timeout", "code", "metric_code"),
    [
        (Stream(tgi_events(["a", "b", "c"])[:2], then="drop"), 5.0, "hf_stream_interrupted", "stream_interrupted"),
        (Stream(tgi_events(["a", "b", "c"]), gap=1.5), 0.3, "hf_timeout", "timeout"),
    ],
    ids=["connection-dropped", "stalled"],
)
def test_transport_failure_mid_stream_is_an_error_event(hf_settings, stream, timeout, code, metric_code):
    with FakeHF(stream) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url, hf_timeout=timeout))
        response = open_stream(app)
        events = sse_events(b"".join(response.response))
        response.close()
    assert events[0] == ("message", {"delta": "a"})
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["code"] == code
    assert metric(app, "cmp_hf_inference_errors_total", code=metric_code) == 1
    assert metric(app, "cmp_hf_inference_latency_seconds_count", model=MODEL) == 1


def test_slow_first_token_within_the_timeout_streams_normally(hf_settings):
    with FakeHF(Stream(chat_events(["late", " but", " fine"]), first_delay=0.8)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1", hf_timeout=2))
        response = open_stream(app)
        events = sse_events(b"".join(response.response))
        response.close()
    assert "".join(data.get("delta", "") for _, data in events) == "late but fine"
    assert events[-1][1]["done"] is True
    assert metric(app, "cmp_hf_time_to_first_token_seconds_count", model=MODEL) == 1
    assert metric(app, "cmp_hf_time_to_first_token_seconds_sum", model=MODEL) >= 0.8


def test_first_token_later_than_the_timeout_is_a_json_504(hf_settings):
    with FakeHF(Stream(tgi_events(["too late"]), first_delay=1.5)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url, hf_timeout=0.3))
        response = app.test_client().post("/api/v1/chat", json=STREAM_BODY)
    assert response.status_code == 504
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "hf_timeout"


def test_client_that_hangs_up_closes_the_upstream_connection(hf_settings):
    with FakeHF(Stream(tgi_events(["tok"] * 200), gap=0.02)) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=fake.url))
        response = open_stream(app)
        assert sse_events(next(iter(response.response))) == [("message", {"delta": "tok"})]
        response.close()  # what the WSGI server does when the client goes away
        assert fake.hung_up.wait(5), "the upstream kept streaming to nobody"
        assert fake.events_sent < 200
    assert metric(app, "cmp_hf_inference_latency_seconds_count", model=MODEL) == 1
    assert metric(app, "cmp_hf_inference_errors_total", code="connection_error") == 0


def hf_env(url: str, root: Path = EXAMPLE) -> dict[str, str]:
    return {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": url, "CMP_PROJECT_ROOT": str(root)}


def cli_env(url: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CMP_"))}, **hf_env(url)}


def test_gunicorn_streams_each_event_as_it_arrives_and_hangs_up_upstream_with_the_client(project):
    hold = threading.Event()
    pieces = ["Hello", " from", " gunicorn"]
    first_stream = Stream(chat_events(pieces, USAGE), hold=hold, hold_at=2)
    endless = Stream(chat_events(["tick"] * 300), gap=0.02)
    with FakeHF(first_stream, endless) as fake:
        server = Server("--workers", "1", "--threads", "2", env=hf_env(f"{fake.url}/v1", project))
        try:
            with requests.post(f"{server.url}/api/v1/chat", json=STREAM_BODY, stream=True, timeout=10) as response:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                assert response.headers["X-Accel-Buffering"] == "no"
                lines = response.iter_lines()
                first = next(line for line in lines if line)
                sent_when_first_arrived = fake.events_sent
                hold.set()
                rest = [json.loads(line[6:]) for line in lines if line]
            assert json.loads(first[6:]) == {"delta": "Hello"}
            assert sent_when_first_arrived == 2  # the role chunk and "Hello": gthread did not wait for more
            assert [e.get("delta") for e in rest[:-1]] == [" from", " gunicorn"]
            assert rest[-1]["usage"] == {"prompt_tokens": 50, "completion_tokens": 4}

            with requests.post(f"{server.url}/api/v1/chat", json=STREAM_BODY, stream=True, timeout=10) as response:
                next(line for line in response.iter_lines() if line)
            assert fake.hung_up.wait(5), "gunicorn kept the upstream stream open after the client left"
            metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        finally:
            code, output = server.stop()
    assert fake.events_sent < len(first_stream.events) + len(endless.events)
    assert f'cmp_hf_time_to_first_token_seconds_count{{model="{MODEL}"}} 2.0' in metrics
    assert code == 0, output
    assert TOKEN not in output


def test_cli_stream_prints_tokens_as_they_arrive():
    hold = threading.Event()
    with FakeHF(Stream(tgi_events(["Hello", " there", "!"]), hold=hold)) as fake:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), "hf", "test-model", "hi", "--stream"],
            env=cli_env(fake.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        first = b""
        while len(first) < len("Hello"):
            first += proc.stdout.read(len("Hello") - len(first))
        sent_when_printed = fake.events_sent
        hold.set()
        rest, errors = proc.communicate(timeout=30)
    assert first == b"Hello"
    assert sent_when_printed == 1
    assert rest == b" there!\n"
    assert proc.returncode == 0, errors
    assert fake.seen[0].body["stream"] is True


def test_cli_stream_failure_mid_stream_exits_1_after_the_partial_text():
    failure = sse({"error": "generation crashed"})
    with FakeHF(Stream([*tgi_events(["partial", "x"])[:1], failure])) as fake:
        result = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "hf", "test-model", "hi", "--stream"],
            env=cli_env(fake.url),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stdout == "partial\n"
    assert "\nctx: hf_unavailable: Hugging Face failed during generation: generation crashed." in result.stderr

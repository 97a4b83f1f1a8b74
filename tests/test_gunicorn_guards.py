"""What gunicorn itself must withstand, on real sockets against a real `ctx serve`: clients that drip their
request head, request lines and headers it cannot parse, renders and streams that would outlive the request."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time

import openai
import pytest
import requests
from fake_hf import FakeHF, Stream, chat_events
from helpers import EXAMPLE, GUIDE_BODY, MODEL, TOKEN, Server, sdk, sse_events

HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards") / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    (root / "prompts" / "SupportBot" / "costly.md").write_text(loops)
    env = {"GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "CMP_RENDER_TIMEOUT": "1"}
    served = Server("--root", str(root), "--workers", "1", "--threads", "4", env=env)
    yield served
    served.stop()


def exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` on a new connection; the status, headers and body of what comes back."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_clients_dripping_their_headers_are_cut_off_and_hold_no_thread(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"d" * 100 + b"\r\n\r\n"
    drippers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    stop = threading.Event()

    def drip() -> None:  # one byte per connection every 0.2 s: the head would take 25 s to arrive
        for position in range(len(request)):
            for sock in drippers:
                with contextlib.suppress(OSError):  # the server hung up on this one
                    sock.send(request[position : position + 1])
            if stop.wait(0.2):
                return

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        slowest = 0.0
        while time.monotonic() - started < HEADER_TIMEOUT + 1:
            before = time.monotonic()
            assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - before)
            time.sleep(0.1)
        assert slowest < 1.0  # normal requests were served while 300 heads dripped
        time.sleep(1.2)  # the worker sweeps late heads once a second
        answers = []
        for sock in drippers:
            sock.settimeout(2)
            try:
                answers.append(sock.recv(65536))
            except ConnectionResetError:
                answers.append(b"")
    finally:
        stop.set()
        for sock in drippers:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") or answer == b"" for answer in answers)
    timed_out = next(answer for answer in answers if answer)
    body = json.loads(timed_out.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "request_timeout"
    assert "GUNICORN_HEADER_TIMEOUT=2s" in body["error"]["message"]


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431,
         "request_header_fields_too_large"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
    ],
    ids=["long-uri", "too-many-headers", "huge-header", "garbage-line", "malformed-header"],
)  # fmt: skip
def test_what_gunicorn_cannot_parse_is_answered_as_json(server, raw, status, code):
    got, headers, body = exchange(server, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]


def test_under_v1_what_gunicorn_cannot_parse_is_answered_in_openais_shape(server):
    client = sdk(server)
    with pytest.raises(openai.APIStatusError) as long_uri:
        client.models.retrieve("a" * 9000)
    with pytest.raises(openai.APIStatusError) as huge_header:
        client.with_options(default_headers={"X-Big": "v" * 9000}).models.list()
    got = [(e.value.status_code, e.value.type, e.value.code, e.value.param) for e in (long_uri, huge_header)]
    assert got == [
        (414, "invalid_request_error", "uri_too_long", None),
        (431, "invalid_request_error", "request_header_fields_too_large", None),
    ]
    assert "message" in long_uri.value.body and "param" in long_uri.value.body  # every field OpenAI's shape has
    status, _, body = exchange(server, b"GET http://x/v1/models/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    # the absolute form, as a proxy sends it
    assert (status, json.loads(body)["error"]["type"]) == (414, "invalid_request_error")


def test_a_pipelined_request_under_v1_gets_openais_shape_too(server):
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nBad\r\n\r\n"
    status, _, rest = exchange(server, pipelined)
    assert status == 200
    second = rest[rest.index(b"HTTP/1.1 ") :]  # the answer to the request sent behind the first
    assert second.startswith(b"HTTP/1.1 400 ")
    error = json.loads(second.partition(b"\r\n\r\n")[2])["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "bad_request", None)


def test_a_late_head_under_v1_gets_its_408_in_openais_shape(server):
    status, _, body = exchange(server, b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\n")
    error = json.loads(body)["error"]
    assert status == 408
    assert error == {
        "message": error["message"],
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
    assert "GUNICORN_HEADER_TIMEOUT=2s" in error["message"]


def test_a_render_past_its_time_ends_and_the_worker_goes_on(server):
    started = time.monotonic()
    body = {**GUIDE_BODY, "prompt_file": "costly.md"}
    response = requests.post(f"{server.url}/api/v1/chat", json=body, timeout=10)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "render_timeout"
    assert time.monotonic() - started < 2.5
    assert requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=5).status_code == 200


def test_streams_of_comments_give_their_threads_back_at_the_deadline():
    comments_forever = chat_events(["Hel"])[:2] + [": keepalive\n\n"] * 1000
    with FakeHF(Stream(comments_forever, gap=0.05)) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": f"{fake.url}/v1", "HF_DEADLINE": "1.5"}
        server = Server("--root", str(EXAMPLE), "--workers", "1", "--threads", "4", env=env)
        try:
            streams: list[bytes] = []

            def stream() -> None:
                body = {**GUIDE_BODY, "stream": True}
                streams.append(requests.post(f"{server.url}/api/v1/chat", json=body, timeout=10).content)

            threads = [threading.Thread(target=stream) for _ in range(4)]  # every thread of the worker
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(5)
            started = time.monotonic()
            assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 1
        finally:
            server.stop()
    assert len(streams) == 4
    assert all(sse_events(body)[-1][1]["error"]["code"] == "hf_timeout" for body in streams)

"""Hardening found by a fault and abuse probe (issue 13): what one request may cost, and what it may see.

Streams that never end, templates that build without bound, memory stores that point outside the root,
credentials in `HF_ENDPOINT`, bodies that are not JSON.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import pytest
from fake_hf import FakeHF, Stream, chat_events
from helpers import GUIDE_BODY, MODEL, SEARCH_BODY, TOKEN, chat, metric, run, sse_events

from app import create_app
from app.memory.sqlite import SqliteStore

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
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": endpoint, "HF_API": "text-generation"}
        tested = run("hf", "test-model", "hi", env=env)
    assert "s3cr3t" not in repr(app.config["SETTINGS"])
    assert tested.returncode == 0, tested.stderr
    assert f"ctx: POST {fake.url}/models/{MODEL} " in tested.stderr
    seen = [version.get_data(as_text=True), caplog.text, tested.stdout, tested.stderr]
    seen += [str(dict(span.attributes or {})) for span in spans.get_finished_spans()]
    assert not [text for text in seen if "s3cr3t" in text]


# -- 8. bodies that are not JSON ------------------------------------------------------------------------------


def test_a_chat_body_not_sent_as_json_is_415(client):
    body = json.dumps(GUIDE_BODY)
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        response = client.post("/api/v1/chat", data=body, headers=headers)
        assert response.status_code == 415, headers
        assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert client.post("/api/v1/chat", data=body, content_type="application/json; charset=utf-8").status_code == 200


# -- 6. symlinks under memory/ and contexts/ ------------------------------------------------------------------

REFUND_SEARCH = {**SEARCH_BODY, "query": "refund"}


@pytest.fixture
def outside_store(tmp_path):
    """A memory store of another project, outside the served root, holding a secret."""
    other = tmp_path / "other"
    (other / "docs").mkdir(parents=True)
    (other / "docs" / "secret.md").write_text("The refund override code is OUTSIDE-SECRET-42.\n")
    SqliteStore(other, "CustomerDocs").ingest([other / "docs"])
    return other / "memory" / "CustomerDocs"


def assert_refused(response, outside, wording: str) -> None:
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "memory_unavailable"
    assert wording in error["message"]
    assert "OUTSIDE-SECRET" not in response.get_data(as_text=True)
    assert str(outside) not in response.get_data(as_text=True)


def test_a_component_folder_linked_outside_the_root_is_refused(project, client, outside_store):
    shutil.rmtree(project / "memory" / "CustomerDocs")
    (project / "memory" / "CustomerDocs").symlink_to(outside_store, target_is_directory=True)
    response = chat(client, REFUND_SEARCH)
    assert_refused(response, outside_store, "memory/CustomerDocs leads outside the project root")


def test_a_memory_db_linked_outside_the_root_is_refused(project, client, outside_store):
    (project / "memory" / "CustomerDocs" / "memory.db").symlink_to(outside_store / "memory.db")
    response = chat(client, REFUND_SEARCH)
    assert_refused(response, outside_store, "memory/CustomerDocs/memory.db leads outside the project root")


def test_a_memory_db_that_is_no_database_is_a_clear_error_in_chat_and_stats(project, client):
    (project / "memory" / "CustomerDocs" / "memory.db").write_text("root:x:0:0:root:/root:/bin/bash\n" * 100)
    response = chat(client, REFUND_SEARCH)
    assert_refused(response, project, "memory/CustomerDocs/memory.db is not a usable memory database")
    stats = run("memory", "stats", "--root", str(project))
    assert stats.returncode == 1
    assert "memory_unavailable: memory/CustomerDocs/memory.db is not a usable memory database" in stats.stderr
    assert "Traceback" not in stats.stderr


def test_readyz_never_names_where_a_context_link_leads(project, client, tmp_path):
    outside = tmp_path / "elsewhere" / "evil.ctx"
    outside.parent.mkdir()
    outside.write_text("name: Evil\n")
    (project / "contexts" / "Evil").mkdir()
    (project / "contexts" / "Evil" / "evil.ctx").symlink_to(outside)
    response = client.get("/readyz")
    assert response.status_code == 503
    reason = response.get_json()["reason"]
    assert reason == "contexts/Evil/evil.ctx: file is outside the project root"
    assert chat(client, {**GUIDE_BODY, "context": "Evil"}).get_json()["error"]["message"] == reason


# -- 5. templates that build or loop without bound ----------------------------------------------------------


def costly(project, settings, template: str, **changes):
    """An app whose `SupportBot/costly.md` is `template`."""
    (project / "prompts" / "SupportBot" / "costly.md").write_text(template)
    return create_app(settings.replace(**changes)).test_client()


def render_costly(client, data: dict) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = chat(client, {**GUIDE_BODY, "prompt_file": "costly.md", "data": data})
    return response.status_code, response.get_json(), time.monotonic() - started


GROW = "[n, 40]|min"  # doublings: 40 would be 2**40 times the string


@pytest.mark.parametrize(
    "template",
    [
        '{{ ("a" * n)|length }}',
        "{{ ([0] * n)|length }}",
        "{{ (10 ** n)|string|length }}",
        '{{ ("%" ~ n ~ "s") % "x" }}',
        '{{ "%*s"|format(n, "x")|length }}',
        '{{ "{:>{}}".format("x", n)|length }}',
        '{{ "x".ljust(n)|length }}',
        '{{ "x"|center(n)|length }}',
        '{{ "x"|indent(n, true)|length }}',
        '{{ s|replace("a", s * 20)|length }}',
        '{{ s.replace("a", s * 20)|length }}',
        "{% set ns = namespace(t=s) %}{% for i in range(" + GROW + ") %}{% set ns.t = ns.t ~ ns.t %}{% endfor %}"
        "{{ ns.t|length }}",
        "{% macro grow(t, k) %}{% if k %}{{ grow(t ~ t, k - 1) }}{% else %}{{ t|length }}{% endif %}{% endmacro %}"
        "{{ grow(s, " + GROW + ") }}",
    ],
    ids=["str-times", "list-times", "power", "percent-width", "format-filter-star", "format-method", "ljust",
         "center", "indent", "replace-filter", "replace-method", "namespace-doubling", "macro-doubling"],
)  # fmt: skip
def test_a_template_cannot_build_a_value_past_the_prompt_bound(project, settings, template):
    client = costly(project, settings, template)
    status, body, elapsed = render_costly(client, {"n": 10**9, "s": "a" * 30000})
    assert status == 422, body
    assert body["error"]["code"] == "prompt_too_large"
    assert "prompts/SupportBot/costly.md:1: builds a value of" in body["error"]["message"]
    assert "over CMP_MAX_PROMPT_CHARS=1048576" in body["error"]["message"]
    assert elapsed < 1
    # The same template within bounds still renders.
    assert render_costly(client, {"n": 3, "s": "ab"})[0] == 200


def test_lipsum_is_not_offered_to_templates(project, settings):
    status, body, _ = render_costly(costly(project, settings, "{{ lipsum(n) }}"), {"n": 10**9})
    assert (status, body["error"]["code"]) == (422, "missing_variable")


def test_the_rendered_prompt_is_bounded(project, settings):
    client = costly(project, settings, "{% for i in range(n) %}{{ text }}{% endfor %}", max_prompt_chars=10_000)
    status, body, _ = render_costly(client, {"n": 1000, "text": "x" * 100})
    assert status == 422
    assert body["error"] == {
        "code": "prompt_too_large",
        "message": "prompts/SupportBot/costly.md: the rendered prompt is longer than CMP_MAX_PROMPT_CHARS=10000 "
        "characters",
    }
    assert render_costly(client, {"n": 10, "text": "x" * 100})[0] == 200


def test_a_render_past_its_time_is_stopped(project, settings):
    loops = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}done"
    client = costly(project, settings, loops, render_timeout=0.5)
    status, body, elapsed = render_costly(client, {"n": 100_000})
    assert status == 422
    assert body["error"] == {
        "code": "render_timeout",
        "message": "prompts/SupportBot/costly.md: rendering took longer than CMP_RENDER_TIMEOUT=0.5s",
    }
    assert elapsed < 1.5
    # The thread is not left with a stray exception: its next renders succeed.
    assert [render_costly(client, {"n": 10})[0] for _ in range(20)] == [200] * 20


def test_renders_stopped_in_some_threads_leave_the_others_alone(project, settings):
    loops = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}done"
    app = costly(project, settings, loops, render_timeout=0.3).application
    results: list[int] = []

    def render(n: int) -> None:
        client = app.test_client()
        results.extend(render_costly(client, {"n": n})[0] for _ in range(3))

    threads = [threading.Thread(target=render, args=(n,)) for n in (100_000, 10, 100_000, 10, 100_000, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [200] * 9 + [422] * 9

"""Liveness, readiness, version and the per-request JSON log line."""

from __future__ import annotations

import logging

from helpers import GUIDE_BODY, access_lines, json_lines

from app import create_app
from app.observability import AccessLog


def test_healthz_is_always_ok(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_is_ok_on_a_valid_project_and_503_with_the_reason_otherwise(client, project):
    assert client.get("/readyz").status_code == 200
    ctx = project / "contexts" / "SupportBot" / "supportbot.ctx"
    ctx.write_text("name: [broken\n")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "contexts/SupportBot/supportbot.ctx" in response.get_json()["reason"]


def test_readyz_is_503_when_the_root_is_missing(settings, tmp_path):
    client = create_app(settings.replace(project_root=tmp_path / "absent")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "contexts" in response.get_json()["reason"]


def test_version_names_the_model_but_not_the_token(hf_app):
    body = hf_app.test_client().get("/version").get_json()
    assert body["name"] == "contexis-runtime"
    assert body["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert body["version"]


def test_one_json_log_line_per_request(client, capsys):
    access_lines(capsys)
    client.post("/api/v1/chat", json={**GUIDE_BODY, "tenant_id": "acme"}, headers={"X-Request-ID": "req-1"})
    (line,) = access_lines(capsys)
    assert line | {"ts": None, "duration_ms": None} == {
        "ts": None,
        "level": "INFO",
        "logger": "contexis.access",
        "message": "request",
        "request_id": "req-1",
        "method": "POST",
        "path": "/api/v1/chat",
        "status": 200,
        "duration_ms": None,
        "tenant": "acme",
        "context": "SupportBot",
        "component": "SupportBot",
        "model": None,
    }
    assert line["duration_ms"] >= 0


def test_a_log_level_above_info_turns_the_access_lines_off(settings, capsys):
    root = logging.getLogger()
    level = root.level
    try:
        client = create_app(settings.replace(log_level="WARNING")).test_client()
        access_lines(capsys)
        assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
        assert access_lines(capsys) == []
    finally:
        root.setLevel(level)


def test_access_lines_queued_past_the_bound_are_written_by_the_request_thread(capsys):
    # stderr not keeping up must not grow a worker's memory without bound: the request's thread writes.
    log = AccessLog(interval=3600, max_queued=2)
    capsys.readouterr()
    for n in range(3):
        log.write({"request_id": f"r{n}"})
    assert [line["request_id"] for line in json_lines(capsys.readouterr().err)] == ["r0", "r1", "r2"]
    log.write({"request_id": "r3"})
    assert capsys.readouterr().err == ""  # queued for the writer thread
    log.flush()
    assert [line["request_id"] for line in json_lines(capsys.readouterr().err)] == ["r3"]

"""`ctx serve`: a real gunicorn with gthread workers, as `make serve` starts it."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fake_hf import FakeHF, Reply
from helpers import EXAMPLE, GUIDE_BODY, MODEL, TOKEN, Server, free_port, json_lines, run


def test_guide_curl_against_real_gunicorn_then_clean_sigterm():
    server = Server("--root", str(EXAMPLE), "--workers", "1", "--threads", "2")
    try:
        response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
        assert response.status_code == 200
        assert "User: hello" in response.json()["rendered"]
        assert response.json()["model"] is None
    finally:
        code, output = server.stop()
    assert code == 0, output
    assert "Using worker: app.gunicorn_worker.HeaderTimeoutWorker" in output


def test_packaged_settings_apply_from_any_directory():
    # gunicorn's settings are a module of the package (app/gunicorn_conf.py), not a file beside cli.py.
    server = Server("--root", str(EXAMPLE), "--workers", "1", cwd="/")
    code, output = server.stop()
    assert code == 0, output
    assert "Using worker: app.gunicorn_worker.HeaderTimeoutWorker" in output


def test_cmp_gunicorn_config_file_replaces_the_packaged_settings(tmp_path):
    config = tmp_path / "gunicorn_sync.py"
    config.write_text('worker_class = "sync"\nworkers = 1\n')
    server = Server("--root", str(EXAMPLE), env={"CMP_GUNICORN_CONFIG": str(config)})
    try:
        assert len(children(server.proc.pid)) == 1
    finally:
        code, output = server.stop()
    assert code == 0, output
    assert "Using worker: sync" in output


@pytest.mark.parametrize("config", ["{tmp}/missing.conf.py", "file:{tmp}/missing.conf.py", "python:app.no_such_conf"])
def test_a_configured_gunicorn_config_that_does_not_exist_is_a_startup_error(tmp_path, config):
    config = config.format(tmp=tmp_path)
    result = run("serve", "--root", str(EXAMPLE), "--addr", f"127.0.0.1:{free_port()}",
                 env={"CMP_GUNICORN_CONFIG": config})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(f"ctx: gunicorn config {config}")
    assert "Starting gunicorn" not in result.stdout + result.stderr


def test_model_text_and_hf_metrics_through_real_gunicorn():
    with FakeHF(Reply(body=[{"generated_text": "served by the model"}])) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": fake.url, "CMP_PROJECT_ROOT": str(EXAMPLE)}
        server = Server("--workers", "1", env=env)
        try:
            response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
            assert response.json() | {"request_id": None} == {
                "rendered": "served by the model",
                "model": MODEL,
                "sources": [],
                "request_id": None,
            }
            metrics = requests.get(f"{server.url}/metrics", timeout=30).text
        finally:
            code, output = server.stop()
    assert f'cmp_hf_inference_latency_seconds_count{{model="{MODEL}"}} 1.0' in metrics
    assert "cmp_hf_inference_errors_total" in metrics
    assert TOKEN not in output + metrics
    assert code == 0


def test_in_flight_request_finishes_after_sigterm():
    with FakeHF(Reply(delay=2, body=[{"generated_text": "late but whole"}])) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": fake.url}
        server = Server("--root", str(EXAMPLE), "--workers", "1", env=env)
        result: dict[str, requests.Response] = {}

        import threading

        worker = threading.Thread(
            target=lambda: result.setdefault(
                "r", requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=20)
            )
        )
        worker.start()
        time.sleep(0.7)  # the request is now waiting on the model
        code, output = server.stop()
        worker.join()
    assert result["r"].status_code == 200
    assert result["r"].json()["rendered"] == "late but whole"
    assert code == 0, output


def test_every_scrape_counts_every_request_across_two_workers(tmp_path):
    metrics_dir = tmp_path / "metrics"
    server = Server(
        "--root", str(EXAMPLE), "--workers", "2", "--threads", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    n = 0
    try:
        writers: set[str] = set()
        # Fresh connections let either worker answer; go on until both have (bounded).
        while (len(writers) < 2 and n < 400) or n < 40:
            response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
            assert response.status_code == 200
            n += 1
            writers = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("histogram_*.db")}
        counts = []
        for _ in range(8):
            text = requests.get(f"{server.url}/metrics", timeout=30).text
            match = re.search(r'cmp_prompt_render_duration_seconds_count\{component="SupportBot"\} (\S+)', text)
            counts.append(float(match.group(1)))
    finally:
        code, _ = server.stop()
    assert len(writers) == 2, "both workers should have answered some requests"
    assert counts == [float(n)] * 8
    assert code == 0


def test_every_request_has_one_whole_access_line_across_two_workers():
    # Lines are queued and written in batches by each worker: none may be lost at SIGTERM, torn or doubled.
    server = Server("--root", str(EXAMPLE), "--workers", "2", "--threads", "4")
    sent = [f"rid-{n}" for n in range(400)]
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda rid: requests.post(
                        f"{server.url}/api/v1/chat", json=GUIDE_BODY, headers={"X-Request-ID": rid}, timeout=30
                    ).status_code,
                    sent,
                )
            )
    finally:
        code, output = server.stop()
    assert code == 0
    assert statuses == [200] * len(sent)
    lines = json_lines(output)  # a torn line would fail to parse here
    logged = [line["request_id"] for line in lines if line.get("logger") == "contexis.access"]
    assert sorted(rid for rid in logged if rid.startswith("rid-")) == sorted(sent)


def test_json_access_log_and_nothing_threaded_in_the_master():
    env = {"GUNICORN_ACCESSLOG": "-", "OTEL_TRACES_EXPORTER": "console"}
    server = Server("--root", str(EXAMPLE), "--workers", "1", env=env)
    try:
        requests.get(f"{server.url}/healthz?q=%22quoted%22", headers={"X-Request-ID": "rid-7"}, timeout=30)
        # The tracer's exporter thread and the HF session belong to workers, never the master.
        master_threads = len(os.listdir(f"/proc/{server.proc.pid}/task"))
    finally:
        _, output = server.stop()
    assert master_threads == 1
    lines = [json.loads(line) for line in output.splitlines() if line.startswith('{"remote_addr"')]
    entry = next(line for line in lines if line["path"] == "/healthz")
    assert entry["query"] == "q=%22quoted%22"
    assert entry["status"] == 200
    assert entry["request_id"] == "rid-7"


def children(pid: int) -> list[str]:
    return open(f"/proc/{pid}/task/{pid}/children").read().split()


def test_worker_count_follows_env_then_gunicorn_cmd_args_then_flags():
    env = {"WEB_CONCURRENCY": "3"}
    server = Server("--root", str(EXAMPLE), env=env)
    try:
        assert len(children(server.proc.pid)) == 3
    finally:
        server.stop()
    server = Server("--root", str(EXAMPLE), env={**env, "GUNICORN_CMD_ARGS": "--workers 2"})
    try:
        assert len(children(server.proc.pid)) == 2
    finally:
        server.stop()
    server = Server("--root", str(EXAMPLE), "--workers", "1", env={**env, "GUNICORN_CMD_ARGS": "--workers 2"})
    try:
        assert len(children(server.proc.pid)) == 1
    finally:
        server.stop()

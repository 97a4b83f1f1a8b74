"""Model circuits shared through a real Redis (Debian's redis-server): one circuit across two gunicorn
workers, counted by the calls the failing upstream received; one trial for all; bounded calls to a hung
Redis, and failing open when it is down."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from fake_hf import FakeHF, Reply, completion
from helpers import GUIDE_BODY, TOKEN, Server, metric
from test_routing import BACKUP, LOCAL_TOKEN, PRIMARY, chain, name_models

from app import create_app
from app.routing.state import RedisState, circuit_key


def test_workers_share_one_circuit(project, redis_server):
    with FakeHF(Reply(503, {"error": "down"})) as failing, FakeHF(Reply(200, completion("ok"))) as healthy:
        name_models(project, chain(healthy.url))
        env = {
            "HF_TOKEN": TOKEN,
            "HF_ENDPOINT": f"{failing.url}/v1",
            "HF_MAX_RETRIES": "0",
            "CMP_STATE_URL": redis_server.url,
            "CMP_BREAKER_FAILURES": "3",
            "CMP_BREAKER_COOLDOWN": "60",
            "TGI_TOKEN": LOCAL_TOKEN,
        }
        server = Server("--root", str(project), "--workers", "2", "--threads", "4", env=env)
        try:

            def ask(_: int) -> tuple[int, str]:
                response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
                return response.status_code, response.headers.get("X-Contexis-Model", "")

            answers = [ask(i) for i in range(3)]  # three failures in a row: the circuit opens
            with ThreadPoolExecutor(4) as pool:
                answers += list(pool.map(ask, range(40)))
            scraped = requests.get(f"{server.url}/metrics", timeout=10).text
            # Each worker reads the router's catalog once, when it first serves a chain: both served.
            deadline = time.monotonic() + 5
            while failing.catalog_reads < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _, output = server.stop()
        assert failing.catalog_reads == 2, output[-2000:]
        assert answers == [(200, BACKUP)] * 43
        assert len(failing.seen) == 3  # not 3 per worker
        assert f'cmp_model_circuit_open{{model="{PRIMARY}"}} 1.0' in scraped


def test_one_trial_for_every_worker(redis_server):
    first = RedisState(redis_server.url, failures=2, cooldown=0.3)
    second = RedisState(redis_server.url, failures=2, cooldown=0.3)
    key = circuit_key("https://router.test/v1", PRIMARY)
    assert first.allow(key) == "clean"
    assert first.failed(key) is False
    assert second.allow(key) == "closed"
    assert second.failed(key) is True  # the second failure in a row, whichever worker saw it
    assert (first.allow(key), second.allow(key)) == ("open", "open")
    time.sleep(0.35)
    assert first.allow(key) == "trial"
    assert second.allow(key) == "open"  # one trial for all
    assert first.failed(key) is True  # the trial failed: open again for a cooldown
    assert second.allow(key) == "open"
    time.sleep(0.35)
    assert second.allow(key) == "trial"
    second.succeeded(key)
    assert first.allow(key) == "clean"


def test_a_hung_redis_costs_a_request_its_timeout_then_fails_open(project, settings, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    with FakeHF(Reply(200, completion("ok"))) as upstream:
        name_models(project, {"id": PRIMARY})
        app = create_app(settings.replace(hf_token=TOKEN, hf_endpoint=f"{upstream.url}/v1", state_url=redis_server.url))
        client = app.test_client()
        assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            result: list[int] = []
            thread = threading.Thread(
                target=lambda: result.append(client.post("/api/v1/chat", json=GUIDE_BODY).status_code)
            )
            thread.start()
            thread.join(5)
            assert result == [200]
            assert time.monotonic() - started < 1.5
            started = time.monotonic()
            assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
            assert time.monotonic() - started < 0.4  # the circuits stay in the process for a while
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert metric(app, "cmp_model_state_errors_total") == 1
        assert "Model circuit storage unreachable" in caplog.text
        assert redis_server.url not in caplog.text


def test_a_redis_that_is_down_fails_open(project, settings, redis_server):
    with FakeHF(Reply(200, completion("ok"))) as upstream:
        name_models(project, {"id": PRIMARY})
        app = create_app(settings.replace(hf_token=TOKEN, hf_endpoint=f"{upstream.url}/v1", state_url=redis_server.url))
        redis_server.stop()
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.status_code == 200 and response.get_json()["model"] == PRIMARY

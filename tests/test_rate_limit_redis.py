"""Rate limits against a real Redis (Debian's redis-server, started and stopped here): one budget across
workers, bounded calls to a hung Redis, and failing open when it is down."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import requests
from helpers import EXAMPLE, GUIDE_BODY, Server, metric

from app import create_app


def chat_within(client, seconds: float) -> int | None:
    """The chat's status, or None when it did not answer within `seconds` (a request blocked on Redis)."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(client.post("/api/v1/chat", json=GUIDE_BODY).status_code))
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def test_one_budget_across_workers_with_redis(redis_server):
    env = {"CMP_RATE_LIMIT": "5/minute", "CMP_RATE_LIMIT_STORAGE_URI": redis_server.url}
    server = Server("--root", str(EXAMPLE), "--workers", "2", "--threads", "2", env=env)
    try:
        statuses = [requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10).status_code
                    for _ in range(12)]  # fmt: skip
    finally:
        _, output = server.stop()
    assert sorted(statuses) == [200] * 5 + [429] * 7
    assert "counted by each of the" not in output


def test_a_per_worker_limit_is_announced_with_the_limit_that_applies():
    env = {"CMP_RATE_LIMIT": "5/minute;100/hour"}
    server = Server("--root", str(EXAMPLE), "--workers", "2", "--threads", "2", env=env)
    _, output = server.stop()
    assert (
        "CMP_RATE_LIMIT=5/minute;100/hour is counted by each of the 2 workers with memory:// storage: "
        "a client may get up to 10 per 1 minute; 200 per 1 hour per pod (and per replica)"
    ) in output


def test_a_hung_redis_costs_a_request_its_timeout_then_fails_open(settings, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    app = create_app(settings.replace(rate_limit="100/minute", rate_limit_storage_uri=redis_server.url))
    client = app.test_client()
    assert chat_within(client, 5) == 200
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert chat_within(client, 3) == 200
        assert time.monotonic() - started < 1.5
        assert chat_within(client, 3) == 200
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert metric(app, "cmp_rate_limit_storage_errors_total") >= 1
    assert "Rate limit storage unreachable" in caplog.text


def test_a_timeout_in_the_uri_wins_over_the_default(settings, redis_server):
    uri = f"{redis_server.url}?socket_timeout=1.5"
    client = create_app(settings.replace(rate_limit="100/minute", rate_limit_storage_uri=uri)).test_client()
    assert chat_within(client, 5) == 200
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert chat_within(client, 5) == 200
        # Above the 0.5 s default: the URI's timeout applied (once for the limit, once for its headers).
        assert 1.4 < time.monotonic() - started < 3.5
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def test_a_killed_redis_falls_back_to_counting_per_worker(settings, redis_server):
    app = create_app(settings.replace(rate_limit="2/minute", rate_limit_storage_uri=redis_server.url))
    redis_server.stop()
    client = app.test_client()
    assert [chat_within(client, 3) for _ in range(3)] == [200, 200, 429]
    assert metric(app, "cmp_rate_limit_storage_errors_total") >= 1

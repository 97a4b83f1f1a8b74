"""Limits: rate limits per key or address, trusted proxies, body size (chunked too) and payload shape."""

from __future__ import annotations

import logging

import pytest
import requests
from helpers import ACME_KEY, EXAMPLE, GUIDE_BODY, KEYS_JSON, STAR_KEY, Server, bearer, json_lines

from app import create_app
from app.config import Settings, SettingsError


def limited_app(settings: Settings, **changes):
    return create_app(settings.replace(rate_limit="2/minute", **changes))


def post(client, body=GUIDE_BODY, **kwargs):
    return client.post("/api/v1/chat", json=body, **kwargs)


def test_third_request_in_the_window_is_429_with_retry_after(settings, caplog):
    caplog.set_level(logging.INFO)
    client = limited_app(settings).test_client()
    assert [post(client).status_code for _ in range(2)] == [200, 200]
    response = post(client)
    assert response.status_code == 429
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert "2 per 1 minute" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    audit = [r.fields for r in caplog.records if r.name == "contexis.audit"]
    assert [(a["reason"], a["status"]) for a in audit] == [("rate_limited", 429)]


def test_one_budget_covers_every_route_of_a_client(settings):
    client = limited_app(settings).test_client()
    openai = {"model": "SupportBot", "messages": [{"role": "user", "content": "hello"}]}
    assert post(client).status_code == 200
    assert client.post("/v1/chat/completions", json=openai).status_code == 200
    assert client.get("/v1/models").status_code == 429
    assert post(client).status_code == 429


def test_probes_and_metrics_are_never_limited(settings):
    client = limited_app(settings).test_client()
    for path in ["/healthz", "/readyz", "/metrics"]:
        assert {client.get(path).status_code for _ in range(5)} == {200}


def test_addresses_have_their_own_budgets_when_auth_is_off(settings):
    client = limited_app(settings).test_client()
    first = {"REMOTE_ADDR": "10.0.0.1"}
    for _ in range(2):
        post(client, environ_base=first)
    assert post(client, environ_base=first).status_code == 429
    assert post(client, environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(settings):
    client = limited_app(settings).test_client()
    for i in range(2):
        post(client, headers={"X-Forwarded-For": f"203.0.113.{i}"})
    # Without CMP_TRUSTED_PROXIES a client cannot dodge its limit by inventing addresses.
    assert post(client, headers={"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_trusted_proxy_hop_gives_each_client_its_own_budget(settings):
    client = limited_app(settings, trusted_proxies=1).test_client()
    for _ in range(2):
        post(client, headers={"X-Forwarded-For": "203.0.113.1"})
    assert post(client, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
    assert post(client, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 200
    # Only the hop nearest the ingress is trusted: a spoofed left-most entry does not change the client.
    spoofed = post(client, headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"})
    assert spoofed.status_code == 429


def test_each_key_has_its_own_budget_and_bad_keys_are_limited_by_address(settings):
    app = limited_app(settings, auth_enabled=True, api_keys=Settings.from_env({"CMP_API_KEYS": KEYS_JSON}).api_keys)
    client = app.test_client()
    body = {**GUIDE_BODY, "tenant_id": "acme"}
    assert [post(client, body, headers=bearer(ACME_KEY)).status_code for _ in range(3)] == [200, 200, 429]
    assert post(client, body, headers=bearer(STAR_KEY)).status_code == 200
    assert [post(client, body, headers=bearer("guess")).status_code for _ in range(3)] == [401, 401, 429]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CMP_RATE_LIMIT", "lots", "CMP_RATE_LIMIT must look like '60/minute'"),
        ("CMP_RATE_LIMIT_STORAGE_URI", "postgres://db/x", "CMP_RATE_LIMIT_STORAGE_URI must start with one of"),
        ("CMP_RATE_LIMIT_STORAGE_URI", "redis-host:6379", "CMP_RATE_LIMIT_STORAGE_URI must start with one of"),
        ("CMP_TRUSTED_PROXIES", "-1", "CMP_TRUSTED_PROXIES must be at least 0"),
        ("CMP_MAX_DATA_DEPTH", "0", "CMP_MAX_DATA_DEPTH must be at least 1"),
        ("HF_MAX_RESPONSE_BYTES", "lots", "HF_MAX_RESPONSE_BYTES must be a int"),
    ],
)
def test_bad_limit_settings_fail_at_startup(name, value, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({name: value}, dotenv_path=None)


def test_limit_settings_are_read_and_storage_password_is_not_in_repr():
    settings = Settings.from_env(
        {
            "CMP_RATE_LIMIT": "10/second;500/hour",
            "CMP_RATE_LIMIT_STORAGE_URI": "redis://:hunter2@redis:6379/0",
            "CMP_TRUSTED_PROXIES": "1",
        },
        dotenv_path=None,
    )
    assert settings.rate_limit == "10/second;500/hour"
    assert settings.rate_limit_storage_uri == "redis://:hunter2@redis:6379/0"
    assert settings.trusted_proxies == 1
    assert "hunter2" not in repr(settings)
    assert Settings.from_env({"CMP_RATE_LIMIT": "off"}, dotenv_path=None).rate_limit == ""


def nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("data", "query", "status", "code", "where"),
    [
        ({"user_input": "hi", "deep": nested(7)}, "", 200, None, None),
        ({"user_input": "hi", "deep": nested(8)}, "", 400, "payload_too_deep", "data.deep.n.n.n.n.n.n.n"),
        ({"user_input": "hi", "many": list(range(1000))}, "", 413, "payload_too_large", "CMP_MAX_DATA_ITEMS=1000"),
        ({"user_input": "x" * 32769}, "", 413, "payload_too_large", "data.user_input"),
        ({"user_input": "hi", "k" * 32769: 1}, "", 413, "payload_too_large", "a key is longer"),
        ({"user_input": "hi"}, "q" * 32769, 400, "invalid_request", "query"),
        ({"user_input": "x" * 32768}, "q" * 32768, 200, None, None),
    ],
)
def test_data_depth_items_and_string_lengths(client, data, query, status, code, where):
    response = post(client, {**GUIDE_BODY, "data": data, "query": query})
    assert response.status_code == status, response.get_json()
    if code:
        error = response.get_json()["error"]
        assert error["code"] == code
        assert where in error["message"]


def test_a_body_nested_past_the_recursion_limit_is_400_not_500(client):
    response = client.post("/api/v1/chat", data="[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "payload_too_deep"


def test_gunicorn_enforces_keys_scopes_and_chunked_body_limits_from_the_environment():
    env = {
        "CMP_AUTH_ENABLED": "true",
        "CMP_API_TOKENS": f"{ACME_KEY}@acme:chat:invoke,scrape-key@acme:metrics:read",
        "CMP_MAX_BODY_BYTES": "300",
        "CMP_RATE_LIMIT": "100/minute",
    }
    server = Server("--root", str(EXAMPLE), "--workers", "1", "--threads", "2", env=env)
    try:
        url = f"{server.url}/api/v1/chat"
        chunks = (piece for piece in [b'{"context": "SupportBot", "data": {"user_input": "', b"a" * 400, b'"}}'])
        headers = {**bearer(ACME_KEY), "Content-Type": "application/json"}
        chunked = requests.post(url, data=chunks, headers=headers, timeout=10)
        assert chunked.status_code == 413
        assert chunked.json()["error"]["code"] == "request_entity_too_large"
        small = iter([b'{"context": "SupportBot", "data": {"user_input": "', b"a" * 10, b'"}}'])
        assert requests.post(url, data=small, headers=headers, timeout=10).status_code == 200
        denied = requests.post(url, json=GUIDE_BODY, timeout=10)
        assert denied.status_code == 401
        allowed = requests.post(url, json=GUIDE_BODY, headers=bearer(ACME_KEY), timeout=10)
        assert allowed.status_code == 200
        # Multiprocess metrics are served by the same route, so the scope applies there too.
        assert requests.get(f"{server.url}/metrics", timeout=5).status_code == 401
        scrape = requests.get(f"{server.url}/metrics", headers=bearer("scrape-key"), timeout=5)
        assert scrape.status_code == 200
        assert "cmp_prompt_render_duration_seconds" in scrape.text
    finally:
        code, output = server.stop()
    assert code == 0
    assert any(line.get("reason") == "missing_key" for line in json_lines(output))
    assert ACME_KEY not in output

"""API keys: parsing, the key/tenant/scope matrix, the audit line, and keys kept out of every output."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import (
    ACME_KEY,
    ALL_KEYS,
    GUIDE_BODY,
    KEYS_JSON,
    METRICS_KEY,
    STAR_KEY,
    access_lines,
    bearer,
    json_lines,
    sha,
)

from app import create_app
from app.config import Settings, SettingsError
from app.keys import digest
from app.observability import JsonFormatter


def env_settings(project, **env: str) -> Settings:
    return Settings.from_env({"CMP_PROJECT_ROOT": str(project), **env}, dotenv_path=None)


@pytest.fixture
def acme_override(project):
    """A tenant override, so a rendered prompt shows which tenant's context was used."""
    tenant_dir = project / "contexts" / "tenants" / "acme"
    tenant_dir.mkdir(parents=True)
    (tenant_dir / "SupportBot.ctx").write_text(
        "extends: ../../SupportBot/supportbot.ctx\nrole:\n  persona: Acme's own concierge.\n"
    )


@pytest.fixture
def auth_app(project, acme_override):
    return create_app(env_settings(project, CMP_AUTH_ENABLED="true", CMP_API_KEYS=KEYS_JSON))



def chat(app, key: str | None = None, tenant: str = "", headers: dict[str, str] | None = None):
    all_headers = {**(bearer(key) if key else {}), **(headers or {})}
    return app.test_client().post("/api/v1/chat", json={**GUIDE_BODY, "tenant_id": tenant}, headers=all_headers)


@pytest.mark.parametrize(
    ("key", "tenant", "headers", "status", "reason"),
    [
        (None, "acme", None, 401, "missing_key"),
        ("ctx_live_WRONG", "acme", None, 401, "unknown_key"),
        (None, "acme", {"Authorization": f"Basic {ACME_KEY}"}, 401, "malformed_header"),
        (None, "acme", {"Authorization": "Bearer "}, 401, "malformed_header"),
        (METRICS_KEY, "acme", None, 403, "missing_scope"),
        (ACME_KEY, "globex", None, 403, "tenant_mismatch"),
    ],
)
def test_denied_requests_get_401_or_403_and_one_audit_line(auth_app, caplog, key, tenant, headers, status, reason):
    caplog.set_level(logging.INFO)
    response = chat(auth_app, key, tenant, headers)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="contexis"')
    audits = [r for r in caplog.records if r.name == "contexis.audit"]
    assert len(audits) == 1
    fields = audits[0].fields
    assert fields["reason"] == reason
    assert fields["status"] == status
    assert fields["request_id"] == response.headers["X-Request-ID"]
    assert fields["key_id"] == {METRICS_KEY: "prometheus", ACME_KEY: "acme-frontend"}.get(key)
    assert fields["tenant"] == ("globex" if reason == "tenant_mismatch" else None)
    line = json.loads(JsonFormatter().format(audits[0]))
    assert {"ts", "request_id", "key_id", "tenant", "reason"} <= set(line)


def test_wrong_and_missing_keys_get_the_same_vague_answer(auth_app):
    wrong = chat(auth_app, "ctx_live_WRONG", "acme").get_json()["error"]["message"]
    other_tenant_key = chat(auth_app, STAR_KEY[:-1], "acme").get_json()["error"]["message"]
    assert wrong == other_tenant_key == "the API key is not valid"


def test_own_tenant_is_served_with_its_context(auth_app):
    response = chat(auth_app, ACME_KEY, "acme")
    assert response.status_code == 200
    assert "Acme's own concierge." in response.get_json()["rendered"]


def test_empty_tenant_means_the_keys_own(auth_app):
    response = chat(auth_app, ACME_KEY, "")
    assert response.status_code == 200
    assert "Acme's own concierge." in response.get_json()["rendered"]


def test_star_key_acts_for_any_tenant_and_empty_stays_shared(auth_app):
    assert "Acme's own concierge." in chat(auth_app, STAR_KEY, "acme").get_json()["rendered"]
    globex = chat(auth_app, STAR_KEY, "globex")
    assert globex.status_code == 200
    assert "A friendly, concise customer support agent" in globex.get_json()["rendered"]
    shared = chat(auth_app, STAR_KEY, "").get_json()["rendered"]
    assert "Acme's own concierge." not in shared


def test_metrics_needs_metrics_read_when_auth_is_on(auth_app):
    client = auth_app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(ACME_KEY)).status_code == 403
    response = client.get("/metrics", headers=bearer(METRICS_KEY))
    assert response.status_code == 200
    assert "flask_http_request_total" in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/version", "/openapi.json"])
def test_probes_version_and_contract_need_no_key(auth_app, path):
    assert auth_app.test_client().get(path).status_code == 200


def test_auth_off_by_default_serves_without_a_key(client):
    assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_unknown_route_is_404_not_401(auth_app):
    assert auth_app.test_client().get("/admin").status_code == 404


def test_keys_never_reach_logs_responses_audit_or_settings(auth_app, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    access_lines(capsys)
    client = auth_app.test_client()
    responses = [
        chat(auth_app, ACME_KEY, "globex"),
        chat(auth_app, ACME_KEY + "x", "acme"),
        chat(auth_app, METRICS_KEY, "acme"),
        chat(auth_app, STAR_KEY, "acme"),
        client.get("/metrics", headers=bearer(METRICS_KEY)),
        client.get("/openapi.json"),
        client.get("/version"),
    ]
    formatted = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    access = access_lines(capsys)
    assert len(access) == len(responses)
    outputs = [formatted, caplog.text, json.dumps(access), repr(auth_app.extensions["contexis"].settings)]
    outputs += [r.get_data(as_text=True) + str(r.headers) for r in responses]
    for text in outputs:
        for key in ALL_KEYS:
            assert key not in text
    assert any(line.get("reason") == "tenant_mismatch" for line in json_lines(formatted))


def test_only_digests_are_kept(project):
    settings = env_settings(project, CMP_AUTH_ENABLED="true", CMP_API_TOKENS=f"{ACME_KEY}@acme:chat:invoke")
    (key,) = settings.api_keys
    assert key.digest == digest(ACME_KEY)
    assert ACME_KEY not in repr(key) and ACME_KEY not in str(vars(key))


def test_tokens_split_at_the_first_colon_after_the_tenant(project):
    settings = env_settings(
        project, CMP_API_TOKENS="k1@acme:chat:invoke|metrics:read, p@ss@globex:chat:invoke,k3@*:metrics:read"
    )
    keys = {k.key_id: k for k in settings.api_keys}
    assert keys["CMP_API_TOKENS[0]"].tenant_id == "acme"
    assert keys["CMP_API_TOKENS[0]"].scopes == {"chat:invoke", "metrics:read"}
    assert keys["CMP_API_TOKENS[1]"].tenant_id == "globex"
    assert keys["CMP_API_TOKENS[1]"].digest == digest("p@ss")
    assert keys["CMP_API_TOKENS[2]"].tenant_id == "*"


def test_tokens_work_end_to_end(project):
    app = create_app(env_settings(project, CMP_AUTH_ENABLED="true", CMP_API_TOKENS="local-key@acme:chat:invoke"))
    assert chat(app, "local-key", "acme").status_code == 200
    assert chat(app, "local-key", "globex").status_code == 403


def test_keys_file_is_read_and_merged_with_the_variables(project, tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(KEYS_JSON)
    settings = env_settings(project, CMP_API_KEYS_FILE=str(path), CMP_API_TOKENS="other@acme:chat:invoke")
    found = {k.key_id for k in settings.api_keys}
    assert found == {"acme-frontend", "prometheus", "operator", "tester", "CMP_API_TOKENS[0]"}
    app = create_app(settings.replace(auth_enabled=True))
    assert chat(app, STAR_KEY, "globex").status_code == 200


def entry(**changes):
    base = {"key_id": "k", "hash": sha("x"), "tenant_id": "acme", "scopes": ["chat:invoke"]}
    return json.dumps([{**base, **changes}])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CMP_AUTH_ENABLED": "true"}, "CMP_AUTH_ENABLED=true needs keys"),
        ({"CMP_AUTH_ENABLED": "maybe"}, "CMP_AUTH_ENABLED must be true or false"),
        ({"CMP_API_KEYS": "{not json"}, "CMP_API_KEYS is not valid JSON"),
        ({"CMP_API_KEYS": '{"key_id": "k"}'}, "must be a JSON list"),
        ({"CMP_API_KEYS": entry(hash="abc")}, r"CMP_API_KEYS\[0\] \(k\): hash must be the SHA-256"),
        ({"CMP_API_KEYS": entry(key_id="")}, "key_id must be a non-empty string"),
        ({"CMP_API_KEYS": entry(tenant_id="")}, "tenant_id must be a tenant name or '\\*'"),
        ({"CMP_API_KEYS": entry(tenant_id="../x")}, "tenant_id must be a tenant name"),
        ({"CMP_API_KEYS": entry(scopes=["chat:write"])}, "unknown scopes \\['chat:write'\\]"),
        ({"CMP_API_KEYS": entry(scopes=[])}, "scopes must be a non-empty list"),
        ({"CMP_API_KEYS": entry(), "CMP_API_TOKENS": "x@acme:chat:invoke"}, "same hash as another key"),
        ({"CMP_API_KEYS_FILE": "/nonexistent/keys.json"}, "CMP_API_KEYS_FILE '/nonexistent/keys.json' cannot be read"),
        ({"CMP_API_TOKENS": "ctx_live_SECRET_no_tenant"}, r"CMP_API_TOKENS\[0\] must look like key@tenant"),
        ({"CMP_API_TOKENS": "ctx_live_SECRET@acme"}, r"CMP_API_TOKENS\[0\] must look like key@tenant"),
    ],
)
def test_bad_key_configuration_fails_at_startup_without_echoing_keys(env, message):
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env(env, dotenv_path=None)
    assert "ctx_live_SECRET" not in str(caught.value)


def test_duplicate_key_ids_are_rejected():
    doubled = json.loads(entry()) + json.loads(entry(hash=sha("y")))
    with pytest.raises(SettingsError, match="key_id 'k' is given twice"):
        Settings.from_env({"CMP_API_KEYS": json.dumps(doubled)}, dotenv_path=None)

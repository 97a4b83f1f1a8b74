"""CORS: which origins may call the chat routes from a browser, checked by headers and in a real Chromium.

The browser test drives Debian's `chromium` with Playwright (never `playwright install`): a page served
from one local origin calls the runtime on another, whole and streamed.
"""

from __future__ import annotations

import json

import pytest
from fake_hf import FakeHF, Reply, Stream, chat_events, completion
from flask import Flask
from helpers import KEYS_JSON, STAR_KEY, LiveApp, bearer

from app import create_app
from app.config import Settings, SettingsError

ALLOWED = "https://chat.example.com"
ROUTES = [("POST", "/api/v1/chat"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]


def preflight(client, path: str, method: str, origin: str = ALLOWED):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


@pytest.fixture
def cors_settings(settings: Settings) -> Settings:
    return settings.replace(cors_origins=(ALLOWED,))


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_preflight_allows_the_configured_origin_with_authorization_and_content_type(cors_settings, method, path):
    response = preflight(create_app(cors_settings).test_client(), path, method)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert {"authorization", "content-type"} <= set(
        response.headers["Access-Control-Allow-Headers"].lower().split(", ")
    )
    assert method in response.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_allows_the_headers_openais_js_sdk_sends_and_no_others(cors_settings):
    client = create_app(cors_settings).test_client()
    asked = "authorization,content-type,x-stainless-os,x-stainless-retry-count,x-secret"
    response = client.options(
        "/v1/chat/completions",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked},
    )
    allowed = set(response.headers["Access-Control-Allow-Headers"].lower().split(", "))
    assert allowed == {"authorization", "content-type", "x-stainless-os", "x-stainless-retry-count"}


def test_answers_expose_the_request_id_to_the_allowed_origin_only(cors_settings):
    client = create_app(cors_settings).test_client()
    body = {"model": "SupportBot", "messages": [{"role": "user", "content": "hi"}]}
    allowed = client.post("/v1/chat/completions", json=body, headers={"Origin": ALLOWED})
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = {name.strip() for name in allowed.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"X-Request-ID", "X-Contexis-Degraded"}
    other = client.post("/v1/chat/completions", json=body, headers={"Origin": "https://evil.example"})
    assert other.status_code == 200  # CORS is the browser's check: the server only withholds the headers
    assert "Access-Control-Allow-Origin" not in other.headers
    assert (
        "Access-Control-Allow-Origin" not in preflight(client, "/api/v1/chat", "POST", "https://evil.example").headers
    )
    assert "Access-Control-Allow-Origin" not in client.get("/metrics", headers={"Origin": ALLOWED}).headers


def test_no_origin_is_allowed_by_default(client):
    assert "Access-Control-Allow-Origin" not in preflight(client, "/v1/chat/completions", "POST").headers


def test_preflights_need_no_key_and_are_not_rate_limited(cors_settings):
    env = {"CMP_AUTH_ENABLED": "true", "CMP_API_KEYS": KEYS_JSON, "CMP_RATE_LIMIT": "1/minute"}
    settings = Settings.from_env({"CMP_PROJECT_ROOT": str(cors_settings.project_root), **env}, dotenv_path=None)
    client = create_app(settings.replace(cors_origins=(ALLOWED,))).test_client()
    for _ in range(3):
        assert preflight(client, "/v1/models", "GET").status_code == 200
    answer = client.get("/v1/models", headers={"Origin": ALLOWED, **bearer(STAR_KEY)})
    assert answer.status_code == 200
    refused = client.get("/v1/models", headers={"Origin": ALLOWED, **bearer(STAR_KEY)})
    assert refused.status_code == 429
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED  # so the page can read why


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*,https://a.example", "cannot be listed with others"),
        ("chat.example.com", "is not an origin"),
        ("https://a.example/path", "is not an origin"),
    ],
)
def test_bad_origin_lists_are_settings_errors(value, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"CMP_CORS_ORIGINS": value}, dotenv_path=None)


def test_origins_are_read_as_a_comma_separated_list():
    settings = Settings.from_env({"CMP_CORS_ORIGINS": " https://a.example/ , http://localhost:3000"}, dotenv_path=None)
    assert settings.cors_origins == ("https://a.example", "http://localhost:3000")


# The page's script: a whole answer and a streamed one, read as a browser frontend reads them.
CHAT_SCRIPT = """
async ({runtime, key}) => {
  const headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"};
  const messages = [{"role": "user", "content": "hello"}];
  try {
    const whole = await fetch(runtime + "/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify({model: "SupportBot", messages})});
    const answer = await whole.json();
    const streamed = await fetch(runtime + "/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify({model: "SupportBot", messages, stream: true})});
    const reader = streamed.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      text += decoder.decode(value, {stream: true});
    }
    const deltas = text.split("\\n\\n").filter(e => e.startsWith("data: {"))
      .map(e => JSON.parse(e.slice(6))).map(c => c.choices.length ? (c.choices[0].delta.content || "") : "");
    return {content: answer.choices[0].message.content, requestId: whole.headers.get("X-Request-ID"),
            streamed: deltas.join(""), done: text.trimEnd().endsWith("data: [DONE]")};
  } catch (error) {
    return {error: String(error)};
  }
}
"""


@pytest.fixture
def page_origin():
    """A frontend's origin: a blank page served from its own port."""
    frontend = Flask("frontend")
    frontend.add_url_rule("/", "index", lambda: "<!doctype html><title>frontend</title>")
    with LiveApp(frontend) as live:
        yield live.url


@pytest.mark.parametrize("allowed", [True, False])
def test_a_page_on_another_origin_chats_whole_and_streamed_only_when_allowed(settings, browser, page_origin, allowed):
    env = {"CMP_AUTH_ENABLED": "true", "CMP_API_KEYS": KEYS_JSON}
    keyed = Settings.from_env({"CMP_PROJECT_ROOT": str(settings.project_root), **env}, dotenv_path=None)
    replies = (Reply(body=completion("Hello from the model")), Stream(chat_events(["Hel", "lo", "!"])))
    with FakeHF(*replies) as fake:
        runtime_settings = keyed.replace(
            hf_token="hf_x",
            hf_model_id="m",
            hf_endpoint=f"{fake.url}/v1",
            cors_origins=(page_origin if allowed else ALLOWED,),
        )
        with LiveApp(create_app(runtime_settings)) as runtime:
            page = browser.new_page()
            page.goto(page_origin)
            # Another port is another origin: the runtime on localhost, the page on 127.0.0.1.
            target = {"runtime": runtime.url.replace("127.0.0.1", "localhost"), "key": STAR_KEY}
            result = page.evaluate(CHAT_SCRIPT, target)
    if allowed:
        assert result == {
            "content": "Hello from the model",
            "requestId": result["requestId"],
            "streamed": "Hello!",
            "done": True,
        }, json.dumps(result)
        assert len(result["requestId"]) == 32
    else:
        assert result == {"error": "TypeError: Failed to fetch"}

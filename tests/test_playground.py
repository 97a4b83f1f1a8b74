"""The playground: `GET /playground` (with CMP_PLAYGROUND only), `POST /api/v1/render` and `POST /api/v1/test`,
checked through Flask's client and in Debian's Chromium driven by Playwright (as the CORS test does)."""

from __future__ import annotations

import re
import threading
import time

import pytest
from fake_hf import CREDITS_BODY, FakeHF, Reply, Stream, ToolModel, chat_events
from helpers import ACME_KEY, KEYS_JSON, SEARCH_BODY, STAR_KEY, TESTER_KEY, TOKEN, LiveApp, ToolBackend, bearer
from test_routing import BACKUP, LOCAL_TOKEN, PRIMARY, chain, name_models
from test_tools_chat import use

from app import create_app
from app.config import Settings
from app.memory import open_memory

REFUND = "how do I get a refund"


@pytest.fixture
def on(settings: Settings) -> Settings:
    """The example project with the playground on and its CustomerDocs ingested."""
    open_memory(settings).store("CustomerDocs").ingest([settings.project_root / "docs" / "CustomerDocs"])
    return settings.replace(playground=True)


def keyed(settings: Settings) -> Settings:
    env = {"CMP_PROJECT_ROOT": str(settings.project_root), "CMP_AUTH_ENABLED": "true", "CMP_API_KEYS": KEYS_JSON}
    return Settings.from_env({**env, "CMP_PLAYGROUND": "true"}, dotenv_path=None)


def test_the_playground_is_off_unless_asked_for(client):
    for path in ("/playground", "/playground/playground.js"):
        assert client.get(path).status_code == 404
    refused = client.post("/api/v1/test", json={"context": "SupportBot"})
    assert refused.status_code == 404
    assert refused.get_json()["error"]["code"] == "not_found"
    assert Settings.from_env({"CMP_PLAYGROUND": "true"}, dotenv_path=None).playground


def test_the_page_and_its_files_are_served_under_a_strict_csp(on):
    client = create_app(on).test_client()
    page = client.get("/playground")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = page.get_data(as_text=True)
    # Nothing inline for the CSP to refuse: scripts by src only, no style elements or attributes, no handlers.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/playground/playground.js" defer>']
    assert "<style" not in html and " style=" not in html and not re.search(r"\son\w+=", html)
    assert "http://" not in html and "https://" not in html  # no CDN
    for path, mimetype in (
        ("/playground/playground.js", "text/javascript"),
        ("/playground/playground.css", "text/css"),
    ):
        asset = client.get(path)
        assert (asset.status_code, asset.mimetype) == (200, mimetype)
        assert asset.headers["Content-Security-Policy"] == csp


def test_render_answers_the_prompt_and_sources_chat_would_use_without_calling_a_model(settings):
    open_memory(settings).store("CustomerDocs").ingest([settings.project_root / "docs" / "CustomerDocs"])
    client = create_app(settings).test_client()  # render is not the playground's: it is on without it
    rendered = client.post("/api/v1/render", json=SEARCH_BODY)
    assert rendered.status_code == 200
    body = rendered.get_json()
    chat = client.post("/api/v1/chat", json=SEARCH_BODY).get_json()
    assert body["prompt"] == chat["rendered"]  # without a model the prompt is the answer
    assert body["sources"] == chat["sources"] and body["sources"][0]["source"].endswith("returns.md")
    assert body["mode"] == "keyword" and body["degraded"] is None
    assert body["models"] == [] and body["context"] == "SupportBot" and body["tenant_id"] == ""
    assert body["request_id"] == rendered.headers["X-Request-ID"]
    bad = client.post("/api/v1/render", json={"context": "../x"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"
    assert client.post("/api/v1/render", json={"context": "Nope"}).status_code == 404


def test_render_names_the_models_a_request_asks(hf_settings):
    body = (
        create_app(hf_settings)
        .test_client()
        .post("/api/v1/render", json={"context": "SupportBot", "data": {"user_input": "hi"}})
    )
    assert body.get_json()["models"] == [{"id": hf_settings.hf_model_id, "endpoint": hf_settings.hf_endpoint_public}]


def test_tests_run_the_contexts_cases_with_each_verdict_and_failing_assertion(on):
    path = on.project_root / "contexts" / "SupportBot" / "supportbot.ctx"
    path.write_text(
        path.read_text().replace(
            "  cases:\n",
            "  cases:\n    - name: wrong-persona\n      mode: prompt\n      input: hi\n"
            "      expect_contains: You are GrumpyBot\n",
            1,
        )
    )
    response = create_app(on).test_client().post("/api/v1/test", json={"context": "SupportBot"})
    assert response.status_code == 200
    report = response.get_json()
    assert report["summary"] | {"seconds": 0} == {
        "cases": 7, "passed": 5, "failed": 1, "errors": 0, "skipped": 1, "seconds": 0
    }  # fmt: skip
    verdicts = {case["case"]: case["status"] for case in report["cases"]}
    assert verdicts["greeting-prompt"] == "passed" and verdicts["greets-back"] == "skipped"
    assert verdicts["no-card-numbers"] == "passed"  # the guardrails redact without a model
    failed = next(case for case in report["cases"] if case["case"] == "wrong-persona")
    assert failed["status"] == "failed"
    assert failed["failures"][0]["assertion"] == "expect_contains"
    assert "You are GrumpyBot" in failed["failures"][0]["message"]
    assert report["request_id"] == response.headers["X-Request-ID"]


def test_a_test_run_ends_at_its_deadline_with_what_was_judged_and_the_rest_cut(on):
    """A slow model holds neither the request nor its case threads past CMP_TEST_DEADLINE: the prompt cases keep
    their verdicts, the cases still waiting on the model are errors, no case starts after it."""
    with FakeHF(Reply(delay=5)) as fake:
        slow = on.replace(hf_token=TOKEN, hf_model_id="m", hf_endpoint=fake.url, test_concurrency=2, test_deadline=1.0)
        started = time.monotonic()
        response = create_app(slow).test_client().post("/api/v1/test", json={"context": "SupportBot"})
        answered = time.monotonic() - started
        called = len(fake.seen)
        while any(t.name.startswith("ctx-test") for t in threading.enumerate()) and time.monotonic() - started < 10:
            time.sleep(0.05)
        freed = time.monotonic() - started
    assert response.status_code == 200
    report = response.get_json()
    assert report["cut"] is True
    verdicts = {(case["mode"], case["status"]) for case in report["cases"]}
    assert verdicts == {("prompt", "passed"), ("answer", "error"), ("model", "error")}, report["cases"]
    cut = [case for case in report["cases"] if case["mode"] != "prompt"]
    assert all(case["error"].startswith("deadline_exceeded: ") for case in cut), cut
    assert report["summary"]["errors"] == len(cut)
    assert called == 2  # the two cases in flight at the deadline; none started after it
    assert answered < 3 and freed < 4, (answered, freed)  # the model answers after 5 s


def test_a_test_runs_tool_calls_end_at_its_deadline_too(on):
    """A tool slower than the run's deadline (its own timeout longer still) is cut at the deadline, as model calls
    are: the case's thread does not wait for the tool."""
    with ToolModel() as model, ToolBackend() as backend:
        context = on.project_root / "contexts" / "Desk" / "desk.ctx"
        context.parent.mkdir(parents=True)
        context.write_text(
            f"name: Desk\ntools:\n  - name: slow\n    http: {{url: '{backend.url}/slow', timeout: 10}}\n"
            "testing:\n  cases:\n    - {name: waits-on-a-tool, input: 'use:slow', expect_contains: late}\n"
        )
        prompt = on.project_root / "prompts" / "Desk" / "agent_response.md"
        prompt.parent.mkdir(parents=True)
        prompt.write_text("User: {{ user_input }}\n")
        served = on.replace(
            hf_token=TOKEN, hf_model_id="m", hf_endpoint=model.url, hf_api="chat-completion", test_deadline=1.0
        )
        started = time.monotonic()
        response = create_app(served).test_client().post("/api/v1/test", json={"context": "Desk"})
        while any(t.name.startswith("ctx-test") for t in threading.enumerate()) and time.monotonic() - started < 10:
            time.sleep(0.05)
        freed = time.monotonic() - started
    (case,) = response.get_json()["cases"]
    assert (case["status"], response.get_json()["cut"]) == ("error", True)
    assert [seen["path"] for seen in backend.seen] == ["/slow"]
    assert freed < 2.5, freed  # the tool answers after 3 s


def test_tests_refuse_what_cannot_run_with_json_errors(on):
    client = create_app(on).test_client()
    unknown = client.post("/api/v1/test", json={"context": "Nope"})
    assert (unknown.status_code, unknown.get_json()["error"]["code"]) == (404, "context_not_found")
    bad = client.post("/api/v1/test", json={"context": "SupportBot", "tenant_id": "../etc"})
    assert (bad.status_code, bad.get_json()["error"]["code"]) == (400, "invalid_request")
    assert client.post("/api/v1/test", data="context=SupportBot").status_code == 415
    path = on.project_root / "contexts" / "SupportBot" / "supportbot.ctx"
    text = path.read_text()
    path.write_text(text[: text.index("testing:")])
    empty = client.post("/api/v1/test", json={"context": "SupportBot"})
    assert (empty.status_code, empty.get_json()["error"]["code"]) == (404, "no_test_cases")


def test_with_auth_the_page_is_public_and_the_api_keeps_its_scopes_and_tenants(settings):
    client = create_app(keyed(settings)).test_client()
    assert client.get("/playground").status_code == 200
    assert client.get("/playground/playground.js").status_code == 200
    body = {"context": "SupportBot"}
    assert client.post("/api/v1/test", json=body).status_code == 401
    lacking = client.post("/api/v1/test", json=body, headers=bearer(STAR_KEY))
    assert lacking.status_code == 403 and "test:run" in lacking.get_json()["error"]["message"]
    assert client.post("/api/v1/test", json=body, headers=bearer(TESTER_KEY)).status_code == 200
    other = client.post("/api/v1/test", json={**body, "tenant_id": "globex"}, headers=bearer(ACME_KEY))
    assert other.status_code == 403  # lacks the scope; a tenant-bound key never acts for another tenant anyway
    render = {**SEARCH_BODY, "tenant_id": "globex"}
    assert client.post("/api/v1/render", json=render).status_code == 401
    assert client.post("/api/v1/render", json=render, headers=bearer(ACME_KEY)).status_code == 403
    assert client.post("/api/v1/render", json=render, headers=bearer(STAR_KEY)).status_code == 200


# ---- in Chromium ----


def open_page(browser, url: str):
    """The playground in a new tab, and the console errors and page errors it reports."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    response = page.goto(f"{url}/playground")
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    page.wait_for_selector("#context option[value=SupportBot]", state="attached")
    return page, problems


def send(page, message: str) -> None:
    """Type a message and press Enter, as a keyboard user does, then wait for the answer to end."""
    answered = page.locator(".turn.assistant").count() + 1
    page.focus("#message")
    page.keyboard.type(message)
    page.keyboard.press("Enter")
    # A function, not a string: the page's CSP refuses eval, Playwright's string predicates included.
    page.wait_for_function(
        """n => document.querySelectorAll('.turn.assistant').length === n
             && document.getElementById('status').textContent.startsWith('Answered')""",
        arg=answered,
    )


def test_the_page_streams_an_answer_with_its_prompt_and_sources_and_keeps_the_conversation(on, browser):
    usage = {"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44}
    replies = (Stream(chat_events(["Hel", "lo", "!"], usage)), Stream(chat_events(["Again"])))
    with FakeHF(*replies) as fake:
        served = on.replace(hf_token="hf_x", hf_model_id="m", hf_endpoint=f"{fake.url}/v1")
        with LiveApp(create_app(served)) as live:
            page, problems = open_page(browser, live.url)
            assert page.is_hidden("#key-form")  # no auth: no key asked for
            page.select_option("#context", "SupportBot")
            send(page, REFUND)
            assert page.inner_text(".turn.assistant .content") == "Hello!"
            assert "You are SupportBot" in page.inner_text("#prompt")
            assert "returns.md" in page.inner_text("#sources")
            assert "mode keyword, not degraded" in page.inner_text("#retrieval")
            assert page.inner_text("#model-served") == "m"
            assert page.inner_text("#tokens") == "41 in / 3 out"
            assert page.inner_text("#latency").endswith(")")
            assert page.inner_text("#tools-none") == "No tool was called."
            assert page.inner_text("#guardrails-none") == "No guardrail acted."
            send(page, "and shipping?")
            assert page.locator(".turn.assistant .content").all_inner_texts() == ["Hello!", "Again"]
            page.close()
        second = fake.seen[-1].body
    # The second turn carried the first as history.
    turns = [(m["role"], m["content"]) for m in second["messages"] if m["role"] != "system"]
    assert turns[:2] == [("user", REFUND), ("assistant", "Hello!")]
    assert problems == []


def test_the_page_names_the_models_asked_and_the_fallback_that_served(on, browser, monkeypatch):
    monkeypatch.setenv("TGI_TOKEN", LOCAL_TOKEN)
    with FakeHF(Reply(402, CREDITS_BODY)) as failing, FakeHF(Stream(chat_events(["From ", "the backup"]))) as healthy:
        name_models(on.project_root, chain(healthy.url))
        app = create_app(on.replace(hf_token=TOKEN, hf_endpoint=f"{failing.url}/v1", hf_backoff_factor=0))
        with LiveApp(app) as live:
            page, problems = open_page(browser, live.url)
            send(page, "hello")
            assert page.inner_text(".turn.assistant .content") == "From the backup"
            assert page.inner_text("#models-asked") == f"{PRIMARY} → {BACKUP}"
            assert page.inner_text("#model-served") == f"{BACKUP} (fallback from {PRIMARY})"
            assert LOCAL_TOKEN not in page.content() and TOKEN not in page.content()
            page.close()
    assert problems == []


DESK = """\
name: Desk
role: {{persona: An order desk.}}
tools:
  - name: order_status
    parameters: {{type: object, properties: {{order_id: {{type: string}}}}, required: [order_id]}}
    http: {{url: "{backend}/orders/{{order_id}}"}}
  - name: flaky
    http: {{url: "{backend}/fail"}}
"""


def test_the_page_lists_the_contexts_tool_calls_with_their_timings(on, browser):
    with ToolModel() as model, ToolBackend() as backend:
        context = on.project_root / "contexts" / "Desk" / "desk.ctx"
        context.parent.mkdir(parents=True)
        context.write_text(DESK.format(backend=backend.url))
        prompt = on.project_root / "prompts" / "Desk" / "agent_response.md"
        prompt.parent.mkdir(parents=True)
        prompt.write_text("You are {{ context.name }}.\n\nUser: {{ user_input }}\n")
        served = on.replace(hf_token=TOKEN, hf_model_id="m", hf_endpoint=model.url, hf_api="chat-completion")
        with LiveApp(create_app(served)) as live:
            page, problems = open_page(browser, live.url)
            page.select_option("#context", "Desk")
            send(page, use("order_status", order_id="A-1") + " " + use("flaky"))
            assert page.inner_text(".turn.assistant .content").startswith('Tool results: {"order": "A-1"')
            rows = sorted(row.split("\t") for row in page.locator("#tools tbody tr").all_inner_texts())
            assert [(name, result) for name, result, _ in rows] == [("flaky", "failed"), ("order_status", "ok")]
            assert all(re.fullmatch(r"\d+ ms", took) for _, _, took in rows), rows
            assert page.inner_text("#tools-none") == ""
            page.close()
    assert problems == []


def test_without_a_model_the_page_answers_the_rendered_prompt_and_runs_the_tests(on, browser):
    with LiveApp(create_app(on)) as live:
        page, problems = open_page(browser, live.url)
        order = []
        for _ in range(9):
            page.keyboard.press("Tab")
            order.append(page.evaluate("() => document.activeElement.id"))
        assert order == ["context", "tenant", "top-k", "message", "send", "render", "run-tests", "reset", "prompt"]
        send(page, "hello")
        answer = page.inner_text(".turn.assistant .content")
        assert answer.startswith("You are SupportBot") and answer == page.inner_text("#prompt")
        assert page.inner_text("#models-asked") == "none: the prompt is the answer"
        page.focus("#run-tests")
        page.keyboard.press("Enter")
        page.wait_for_selector("#tests tbody tr")
        rows = page.locator("#tests tbody tr").all_inner_texts()
        assert any(row.startswith("greeting-prompt\tprompt\tpassed") for row in rows), rows
        assert any(row.startswith("greets-back\tmodel\tskipped") for row in rows), rows
        assert "5 passed, 0 failed, 0 errors, 1 skipped" in page.inner_text("#tests-summary")
        page.close()
    assert problems == []


def test_with_auth_the_page_asks_for_a_key_and_keeps_it_for_the_tab(settings, browser):
    open_memory(settings).store("CustomerDocs").ingest([settings.project_root / "docs" / "CustomerDocs"])
    with LiveApp(create_app(keyed(settings))) as live:
        page = browser.new_page()
        failed: list[str] = []
        page.on("pageerror", lambda error: failed.append(str(error)))
        page.goto(f"{live.url}/playground")
        page.wait_for_selector("#key", state="visible")
        assert "needs an API key" in page.inner_text("#status")
        page.fill("#key", TESTER_KEY)
        page.keyboard.press("Enter")
        page.wait_for_selector("#context option[value=SupportBot]", state="attached")
        assert page.evaluate("sessionStorage.getItem('contexis-playground-key')") == TESTER_KEY
        send(page, REFUND)
        assert "returns.md" in page.inner_text("#sources")
        page.click("#run-tests")
        page.wait_for_selector("#tests tbody tr")
        assert "5 passed" in page.inner_text("#tests-summary")
        page.close()
    # The browser's own line for the first 401 is the only console error; nothing failed in the page's script.
    assert failed == []

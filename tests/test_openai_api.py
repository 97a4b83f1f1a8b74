"""The OpenAI-compatible surface, driven by the real `openai` SDK against the app on a local port.

The model is a fake chat-completion endpoint on 127.0.0.1 (`FakeHF`), so each test can assert what the
upstream received as well as what the SDK made of the answer.
"""

from __future__ import annotations

import shutil

import openai
import pytest
from fake_hf import CREDITS_BODY, FakeHF, Reply, Stream, chat_events, completion, sse
from helpers import (
    ACME_KEY,
    KEYS_JSON,
    METRICS_KEY,
    MODEL,
    STAR_KEY,
    SUPPORTBOT_SYSTEM,
    TOKEN,
    LiveApp,
    Server,
    access_lines,
    metric,
    sdk,
)

from app import create_app
from app.keys import keys_from_json

USAGE = {"prompt_tokens": 87, "completion_tokens": 12}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def authed(serve):
    """The app with keys on (see helpers.KEYS_JSON) and a one-answer fake model."""
    keys = tuple(keys_from_json(KEYS_JSON, "CMP_API_KEYS"))
    return serve(Reply(body=completion("Hi")), auth_enabled=True, api_keys=keys)


def test_a_whole_answer_is_a_chat_completion_and_the_upstream_gets_system_then_prompt(serve):
    fake, live, _ = serve(Reply(body=completion("Hello from the chat model", USAGE)))
    answer = sdk(live).chat.completions.create(model="SupportBot", messages=HELLO)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "SupportBot"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Hello from the chat model"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (87, 12, 99)
    assert answer.sources == []  # the runtime's extra field
    upstream = fake.seen[0].body
    assert upstream["model"] == MODEL
    assert (upstream["max_tokens"], upstream["temperature"]) == (256, 0.3)  # the context's guardrails
    assert [m["role"] for m in upstream["messages"]] == ["system", "user"]
    assert upstream["messages"][0]["content"] == SUPPORTBOT_SYSTEM
    assert upstream["messages"][1]["content"].endswith("User: hello\nAssistant:\n")


def test_history_reaches_the_upstream_as_turns_after_the_contexts_and_clients_system_messages(serve):
    fake, live, _ = serve(Reply(body=completion("It ships tomorrow.")))
    messages = [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "Hi, I ordered a router."},
        {"role": "assistant", "content": "Thanks! What is your order number?"},
        {"role": "user", "content": "It is 1234."},
        {"role": "assistant", "content": "Order 1234 is packed."},
        {"role": "user", "content": "When does it ship?"},
    ]
    answer = sdk(live).chat.completions.create(model="SupportBot", messages=messages)
    assert answer.choices[0].message.content == "It ships tomorrow."
    sent = fake.seen[0].body["messages"]
    assert sent[:6] == [
        {"role": "system", "content": SUPPORTBOT_SYSTEM},
        {"role": "system", "content": "Answer in one sentence."},
        *messages[1:5],
    ]
    assert sent[6]["role"] == "user"
    assert sent[6]["content"].endswith("User: When does it ship?\nAssistant:\n")
    assert "Conversation so far" not in sent[6]["content"]  # turns are not repeated inside the prompt
    assert len(sent) == 7


def test_a_stream_yields_chunks_then_usage_and_the_upstream_streams_too(serve):
    fake, live, _ = serve(Stream(chat_events(["Hel", "lo", "!"], USAGE)))
    chunks = list(
        sdk(live).chat.completions.create(
            model="SupportBot", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 99
    assert fake.seen[0].body["stream"] is True


def test_a_stream_without_include_usage_ends_with_the_finish_chunk(serve):
    _, live, _ = serve(Stream(chat_events(["Hi"], USAGE)))
    chunks = list(sdk(live).chat.completions.create(model="SupportBot", messages=HELLO, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_a_failure_after_the_first_chunk_is_raised_by_the_sdk(serve):
    events = [*chat_events(["Hel"])[:2], sse({"error": {"message": "CUDA out of memory"}})]
    _, live, _ = serve(Stream(events))
    stream = sdk(live).chat.completions.create(model="SupportBot", messages=HELLO, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="CUDA out of memory") as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert "Hel" in received
    assert raised.value.body["code"].startswith("hf_")


def test_sampling_options_override_the_guardrails_within_the_contexts_limits(serve, project):
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    path.write_text(
        path.read_text().replace("  temperature: 0.3\n", "  temperature: 0.3\n  client_max:\n    max_tokens: 512\n")
    )
    fake, live, _ = serve(Reply(body=completion("ok")))
    client = sdk(live)
    client.chat.completions.create(
        model="SupportBot",
        messages=HELLO,
        temperature=0,
        max_completion_tokens=100,
        top_p=0.5,
        stop="\n\n",
        seed=7,
        logit_bias={"50256": -100},
    )
    upstream = fake.seen[0].body
    assert (upstream["temperature"], upstream["max_tokens"], upstream["top_p"], upstream["stop"]) == (
        0,
        100,
        0.5,
        ["\n\n"],
    )
    assert upstream["seed"] == 7  # OpenAI's fields are passed on (docs/api.md)
    assert "logit_bias" not in upstream  # unknown ones are ignored, never passed on
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="SupportBot", messages=HELLO, max_tokens=4096)
    assert raised.value.body["param"] == "max_tokens"
    assert "allows (512)" in raised.value.message
    assert len(fake.seen) == 1


def test_on_the_text_generation_route_greedy_and_stop_are_tgis_own_and_length_is_reported(hf_settings):
    tgi = [{"generated_text": "Hello", "details": {"finish_reason": "length", "generated_tokens": 5}}]
    with FakeHF(Reply(body=tgi)) as fake, LiveApp(create_app(hf_settings.replace(hf_endpoint=fake.url))) as live:
        answer = sdk(live).chat.completions.create(model="SupportBot", messages=HELLO, temperature=0, stop=["\n"])
    assert (answer.choices[0].finish_reason, answer.usage.completion_tokens) == ("length", 5)
    parameters = fake.seen[0].body["parameters"]
    assert (parameters["do_sample"], parameters["stop"]) == (False, ["\n"])
    assert "temperature" not in parameters  # TGI refuses 0: greedy decoding is its do_sample=false


def test_the_access_log_and_spans_name_the_context_as_for_api_v1_chat(serve, capsys, spans):
    _, live, _ = serve(Reply(body=completion("ok")))
    sdk(live).chat.completions.create(model="SupportBot", messages=HELLO)
    access = next(line for line in access_lines(capsys) if line["path"] == "/v1/chat/completions")
    assert {k: access[k] for k in ("status", "context", "component", "model")} == {
        "status": 200,
        "context": "SupportBot",
        "component": "SupportBot",
        "model": MODEL,
    }
    assert "huggingface.generate" in {span.name for span in spans.get_finished_spans()}


def test_runtime_fields_ride_in_extra_body_and_the_last_user_message_searches_memory(serve, project):
    from app.memory.sqlite import SqliteStore

    SqliteStore(project, "CustomerDocs").ingest([project / "docs" / "CustomerDocs"])
    fake, live, _ = serve(Reply(body=completion("ok")))
    client = sdk(live)
    refund = [{"role": "user", "content": "How do I get a refund?"}]
    answer = client.chat.completions.create(model="SupportBot", messages=refund)
    assert answer.sources[0]["source"] == "docs/CustomerDocs/returns.md"
    assert "Relevant knowledge:" in fake.seen[0].body["messages"][-1]["content"]
    answer = client.chat.completions.create(
        model="SupportBot", messages=refund, extra_body={"query": "warranty", "top_k": 1, "data": {"user_input": "X"}}
    )
    assert [s["source"] for s in answer.sources] == ["docs/CustomerDocs/warranty.md"]
    assert fake.seen[1].body["messages"][-1]["content"].endswith("User: X\nAssistant:\n")


def test_without_a_model_the_rendered_prompt_is_the_content(client):
    body = {"model": "SupportBot", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    answer = client.post("/v1/chat/completions", json=body).get_json()
    assert answer["choices"][0]["message"]["content"].startswith("You are SupportBot.")
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] is None


@pytest.mark.parametrize(
    ("messages", "param", "needle"),
    [
        ([{"role": "tool", "content": "42"}, *HELLO], "messages", "'tool_call_id' is a required property"),
        ([{"role": "robot", "content": "42"}, *HELLO], "messages", "is not one of"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages", "messages.0"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages", "messages.0"),
        ([], "messages", "should be non-empty"),
        ([{"role": "system", "content": "Be brief."}], "messages", "no message has the role user"),
    ],
)
def test_bad_requests_are_bad_request_errors_in_openais_shape(serve, messages, param, needle):
    fake, live, _ = serve()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=messages)
    error = raised.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_request")
    assert needle in error["message"]
    assert fake.seen == []


def test_unrouted_paths_and_wrong_methods_under_v1_answer_in_openais_shape(client):
    missing = client.get("/v1/embeddings")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["type"] == "not_found_error"
    wrong = client.get("/v1/chat/completions")
    assert (wrong.status_code, set(wrong.headers["Allow"].split(", "))) == (405, {"OPTIONS", "POST"})
    assert set(wrong.get_json()["error"]) == {"message", "type", "param", "code"}
    assert set(client.get("/api/v1/nothing").get_json()["error"]) == {"code", "message"}  # the native shape stays


def test_an_unknown_context_is_not_found(serve):
    _, live, _ = serve()
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(live).chat.completions.create(model="NoSuchBot", messages=HELLO)
    assert (raised.value.body["type"], raised.value.body["code"]) == ("not_found_error", "context_not_found")


def test_a_missing_template_variable_is_unprocessable(serve, project):
    (project / "prompts" / "SupportBot" / "order.md").write_text("Order {{ order_id }}: {{ user_input }}")
    _, live, _ = serve()
    with pytest.raises(openai.UnprocessableEntityError, match="order_id"):
        sdk(live).chat.completions.create(model="SupportBot", messages=HELLO, extra_body={"prompt_file": "order.md"})


def test_too_much_history_is_413(serve):
    _, live, _ = serve(max_messages=2)
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(live).chat.completions.create(model="SupportBot", messages=[*history, *HELLO])
    assert raised.value.status_code == 413
    assert raised.value.body["code"] == "payload_too_large"
    assert "CMP_MAX_MESSAGES=2" in raised.value.message


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (Reply(status=401, body={"error": "Invalid credentials in Authorization header"}), 502, "hf_unauthorized"),
        (Reply(delay=2, body=completion("late")), 504, "hf_timeout"),
    ],
)
def test_the_models_failures_are_server_errors_with_the_hf_codes(serve, reply, status, code):
    _, live, _ = serve(reply, hf_timeout=0.5, hf_max_retries=0)
    for stream in (False, True):  # a stream that fails before its first chunk fails as an HTTP error too
        with pytest.raises(openai.InternalServerError) as raised:
            sdk(live).chat.completions.create(model="SupportBot", messages=HELLO, stream=stream)
        assert raised.value.status_code == status
        assert (raised.value.body["type"], raised.value.body["code"]) == ("server_error", code)
        assert "hf_SECRET" not in raised.value.message


@pytest.mark.parametrize(
    ("reply", "retries", "calls"),
    [
        (Reply(status=402, body=CREDITS_BODY), 0, 1),
        # Without retries of its own the runtime leaves them to the client; with them, the client must not add its.
        (Reply(status=503, body={"error": "overloaded"}), 0, 3),
        (Reply(status=503, body={"error": "overloaded"}), 1, 2),
    ],
)
def test_the_sdk_retries_only_what_may_succeed_later_and_retries_never_multiply(serve, reply, retries, calls):
    fake, live, _ = serve(reply, hf_max_retries=retries, hf_backoff_factor=0)
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=2, timeout=10)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="SupportBot", messages=HELLO)
    assert raised.value.response.headers.get("x-should-retry") == (None if calls == 3 else "false")
    assert len(fake.seen) == calls


def test_keys_scopes_and_tenants_raise_the_sdks_auth_errors(authed):
    _, live, _ = authed
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(live, "ctx_live_WRONG").chat.completions.create(model="SupportBot", messages=HELLO)
    assert raised.value.body["type"] == "authentication_error"
    assert raised.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(openai.PermissionDeniedError, match="lacks the scope chat:invoke"):
        sdk(live, METRICS_KEY).chat.completions.create(model="SupportBot", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError, match="tenant 'globex'"):
        sdk(live, ACME_KEY).chat.completions.create(
            model="SupportBot", messages=HELLO, extra_body={"tenant_id": "globex"}
        )
    assert sdk(live, ACME_KEY).chat.completions.create(model="SupportBot", messages=HELLO).choices[0].message.content


def test_over_the_rate_limit_is_a_rate_limit_error_with_retry_after(serve):
    _, live, app = serve(Reply(body=completion("ok")), rate_limit="2/minute")
    client = sdk(live)
    for _ in range(2):
        client.chat.completions.create(model="SupportBot", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="SupportBot", messages=HELLO)
    assert raised.value.body["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["Retry-After"]) >= 1
    # The same HTTP metrics as every route: the two answers and the refusal are counted under the route.
    assert metric(app, "flask_http_request_total", method="POST", status="429") == 1


@pytest.fixture
def tenant_project(project):
    """Tenant acme overrides SupportBot and has a BillingBot of its own."""
    tenants = project / "contexts" / "tenants" / "acme"
    tenants.mkdir(parents=True)
    (tenants / "SupportBot.ctx").write_text("extends: ../../SupportBot/supportbot.ctx\nname: SupportBot\n")
    (tenants / "BillingBot.ctx").write_text(
        "name: BillingBot\nrole:\n  persona: Answers invoices.\n  limitations: []\n"
        "guardrails:\n  tone: dry\n  format: one line\n"
    )
    shutil.copytree(project / "prompts" / "SupportBot", project / "prompts" / "BillingBot")
    (project / "contexts" / "Broken").mkdir()
    (project / "contexts" / "Broken" / "broken.ctx").write_text("name: [unclosed\n")
    return project


def test_models_lists_the_contexts_the_callers_tenant_may_use(tenant_project, authed):
    fake, live, _ = authed
    acme = sdk(live, ACME_KEY).models.list()
    assert [(m.id, m.object, m.owned_by) for m in acme.data] == [
        ("BillingBot", "model", "acme"),
        ("SupportBot", "model", "acme"),
    ]
    assert all(isinstance(m.created, int) for m in acme.data)
    assert [(m.id, m.owned_by) for m in sdk(live, STAR_KEY).models.list().data] == [("SupportBot", "contexis")]
    with pytest.raises(openai.PermissionDeniedError):
        sdk(live, METRICS_KEY).models.list()
    # The key binds the tenant: acme's key reaches acme's BillingBot, the operator's (no tenant) does not.
    sdk(live, ACME_KEY).chat.completions.create(model="BillingBot", messages=HELLO)
    assert fake.seen[0].body["messages"][0]["content"] == "You are BillingBot. Answers invoices.\nTone: dry."
    with pytest.raises(openai.NotFoundError):
        sdk(live, STAR_KEY).chat.completions.create(model="BillingBot", messages=HELLO)


def test_models_retrieve_follows_the_lists_visibility(tenant_project, authed):
    _, live, _ = authed
    billing = sdk(live, ACME_KEY).models.retrieve("BillingBot")
    assert (billing.id, billing.object, billing.owned_by) == ("BillingBot", "model", "acme")
    assert isinstance(billing.created, int)
    assert sdk(live, STAR_KEY).models.retrieve("SupportBot").owned_by == "contexis"
    for key, name in ((STAR_KEY, "BillingBot"), (ACME_KEY, "Broken"), (ACME_KEY, "Nope")):
        with pytest.raises(openai.NotFoundError) as raised:
            sdk(live, key).models.retrieve(name)
        assert raised.value.body["code"] == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError):
        sdk(live, METRICS_KEY).models.retrieve("SupportBot")


def test_models_without_auth_lists_shared_contexts_or_a_named_tenants(tenant_project, client):
    assert [m["id"] for m in client.get("/v1/models").get_json()["data"]] == ["SupportBot"]
    acme = client.get("/v1/models?tenant_id=acme").get_json()["data"]
    assert [m["id"] for m in acme] == ["BillingBot", "SupportBot"]
    assert client.get("/v1/models/BillingBot").status_code == 404
    assert client.get("/v1/models/BillingBot?tenant_id=acme").get_json()["owned_by"] == "acme"
    bad = client.get("/v1/models?tenant_id=../x")
    assert bad.status_code == 400
    assert bad.get_json()["error"]["param"] == "tenant_id"


def test_ctx_serve_lists_answers_streams_and_passes_three_turns(project):
    """The issue's 'done when', under gunicorn as `make serve` runs it."""
    replies = (Reply(body=completion("Hi!")), Stream(chat_events(["Str", "eamed"])), Reply(body=completion("Ada.")))
    with FakeHF(*replies) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": f"{fake.url}/v1"}
        server = Server("--root", str(project), "--workers", "1", "--threads", "4", env=env)
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=10)
            assert [m.id for m in client.models.list()] == ["SupportBot"]
            answer = client.chat.completions.create(model="SupportBot", messages=HELLO)
            assert answer.choices[0].message.content == "Hi!"
            stream = client.chat.completions.create(model="SupportBot", messages=HELLO, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream) == "Streamed"
            turns = [
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Nice to meet you, Ada!"},
                {"role": "user", "content": "What is my name?"},
            ]
            client.chat.completions.create(model="SupportBot", messages=turns)
        finally:
            assert server.stop()[0] == 0
    sent = fake.seen[2].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1:3] == turns[:2]
    assert sent[3]["content"].endswith("User: What is my name?\nAssistant:\n")

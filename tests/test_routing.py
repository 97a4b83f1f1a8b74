"""Model chains: two local upstreams (one failing in each way a provider fails, one healthy), the router's
real error bodies, circuits counted by the calls the failing upstream received, and the catalog's skips."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import requests
import responses
import yaml
from fake_hf import CREDITS_BODY, ROUTER_CATALOG, FakeHF, Reply, Stream, chat_events, completion, sse
from helpers import GUIDE_BODY, TOKEN, LiveApp, free_port, metric, sse_events

from app import create_app
from app.config import DEFAULT_HF_ENDPOINT

PRIMARY = "meta-llama/Llama-3.3-70B-Instruct:groq"
BACKUP = "local-llama"
LOCAL_TOKEN = "tgi_SECRET_local_token_42"
NOT_SUPPORTED = {
    "error": {
        "message": f"The requested model '{PRIMARY}' is not supported by any provider you have enabled.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_supported",
    }
}
OPENAI_BODY = {"model": "SupportBot", "messages": [{"role": "user", "content": "hello"}]}


def name_models(project: Path, section: dict) -> None:
    """Give the example's SupportBot a `model:` section."""
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**context, "model": section}))


def chain(backup_url: str, *more: object) -> dict:
    """PRIMARY on HF_ENDPOINT, then `more`, then the local BACKUP at `backup_url` with its own token."""
    local = {"id": BACKUP, "endpoint": f"{backup_url}/v1", "token_env": "TGI_TOKEN"}
    return {"id": PRIMARY, "fallbacks": [*more, local]}


@pytest.fixture
def chained(project, settings, monkeypatch):
    """An app on `failing` (HF_ENDPOINT) whose SupportBot falls back to `healthy`, built per test."""
    monkeypatch.setenv("TGI_TOKEN", LOCAL_TOKEN)

    def build(failing: FakeHF, healthy: FakeHF, *more: object, **changes: object):
        name_models(project, chain(healthy.url, *more))
        defaults = {"hf_token": TOKEN, "hf_endpoint": f"{failing.url}/v1", "hf_backoff_factor": 0, "hf_timeout": 1.0}
        return create_app(settings.replace(**{**defaults, **changes}))

    return build


@pytest.mark.parametrize(
    ("reply", "reason", "calls"),
    [
        (Reply(402, CREDITS_BODY), "payment_required", 1),
        (Reply(410, {"error": "Gone"}), "gone", 1),
        (Reply(400, NOT_SUPPORTED), "model_not_supported", 1),
        (Reply(400, {"error": NOT_SUPPORTED["error"]["message"]}), "model_not_supported", 1),
        (Reply(404, {"error": "Model not found"}), "model_not_found", 1),
        (Reply(429, {"error": "Too many requests"}), "rate_limited", 3),  # after its own 2 retries
        (Reply(503, {"error": "Service Unavailable"}), "unavailable", 3),
        (Reply(200, completion(), delay=1.5), "timeout", 1),  # HF_TIMEOUT=1: a read timeout is not retried
    ],
)
def test_a_failing_model_falls_back_to_the_next(chained, reply, reason, calls):
    with FakeHF(reply) as failing, FakeHF(Reply(200, completion("From the backup"))) as healthy:
        app = chained(failing, healthy)
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["rendered"] == "From the backup"
        assert response.get_json()["model"] == BACKUP
        assert response.headers["X-Contexis-Model"] == BACKUP
        assert len(failing.seen) == calls
        assert metric(app, "cmp_model_fallbacks_total", from_model=PRIMARY, to_model=BACKUP, reason=reason) == 1
        # HF_TOKEN goes only to HF_ENDPOINT; the local endpoint gets its own token.
        assert failing.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"
        assert healthy.seen[0].headers["Authorization"] == f"Bearer {LOCAL_TOKEN}"
        assert healthy.seen[0].body["model"] == BACKUP


def test_a_refused_connection_falls_back(project, settings, monkeypatch):
    monkeypatch.setenv("TGI_TOKEN", LOCAL_TOKEN)
    with FakeHF(Reply(200, completion("From the backup"))) as healthy:
        name_models(project, chain(healthy.url))
        closed = f"http://127.0.0.1:{free_port()}/v1"
        app = create_app(settings.replace(hf_token=TOKEN, hf_endpoint=closed, hf_backoff_factor=0))
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.get_json()["model"] == BACKUP
        assert metric(app, "cmp_model_fallbacks_total", from_model=PRIMARY, to_model=BACKUP, reason="connection_error")


def test_an_endpoint_that_refuses_the_token_is_left_for_another(chained):
    other_provider = "meta-llama/Llama-3.3-70B-Instruct:together"
    refusal = Reply(401, {"error": "Invalid credentials in Authorization header"})
    with FakeHF(refusal) as failing, FakeHF(Reply(200, completion("From the backup"))) as healthy:
        app = chained(failing, healthy, other_provider)
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.get_json()["model"] == BACKUP
        assert len(failing.seen) == 1  # the second entry shares the endpoint and its token: not called
        labels = {"from_model": other_provider, "to_model": BACKUP, "reason": "token_refused"}
        assert metric(app, "cmp_model_fallbacks_total", **labels) == 1


def test_a_parameter_no_model_accepts_does_not_fall_back(chained):
    refusal = {"error": {"message": "temperature must be at most 1", "type": "invalid_request_error"}}
    with FakeHF(Reply(400, refusal)) as failing, FakeHF(Reply(200, completion())) as healthy:
        response = chained(failing, healthy).test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.status_code == 502
        assert response.get_json()["error"]["code"] == "hf_bad_request"
        assert healthy.seen == []


def test_the_chain_shares_one_deadline(chained):
    slow_failure, slow_answer = Reply(503, {"error": "overloaded"}, delay=0.6), Reply(200, completion(), delay=0.6)
    with FakeHF(slow_failure) as failing, FakeHF(slow_answer) as healthy:
        app = chained(failing, healthy, hf_deadline=1.0, hf_timeout=5.0, hf_max_retries=0)
        started = time.monotonic()
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert time.monotonic() - started < 2
        # Alone, each would answer within HF_DEADLINE=1; together they may not.
        assert response.status_code == 504
        assert response.get_json()["error"]["code"] == "hf_timeout"
        assert len(healthy.seen) == 1
    with FakeHF(Reply(503, {"error": "overloaded"}, delay=1.1)) as failing, FakeHF(Reply(200, completion())) as healthy:
        app = chained(failing, healthy, hf_deadline=1.0, hf_timeout=5.0, hf_max_retries=0)
        assert app.test_client().post("/api/v1/chat", json=GUIDE_BODY).status_code == 504
        assert healthy.seen == []  # nothing was left of HF_DEADLINE for it


def test_an_open_circuit_costs_one_call_per_cooldown(chained):
    with FakeHF(Reply(503, {"error": "down"})) as failing, FakeHF(Reply(200, completion("ok"))) as healthy:
        app = chained(failing, healthy, hf_max_retries=0, breaker_failures=3, breaker_cooldown=0.5)
        client = app.test_client()
        for _ in range(10):
            assert client.post("/api/v1/chat", json=GUIDE_BODY).get_json()["model"] == BACKUP
        assert len(failing.seen) == 3
        assert metric(app, "cmp_model_circuit_open", model=PRIMARY) == 1
        labels = {"from_model": PRIMARY, "to_model": BACKUP}
        assert metric(app, "cmp_model_fallbacks_total", **labels, reason="circuit_open") == 7
        time.sleep(0.6)
        # One trial after the cooldown; it fails, so the circuit opens again for another cooldown.
        for _ in range(5):
            client.post("/api/v1/chat", json=GUIDE_BODY)
        assert len(failing.seen) == 4
        time.sleep(0.6)
        failing.replies = [Reply(200, completion("primary is back"))]
        assert client.post("/api/v1/chat", json=GUIDE_BODY).get_json()["model"] == PRIMARY
        assert metric(app, "cmp_model_circuit_open", model=PRIMARY) == 0
        assert client.post("/api/v1/chat", json=GUIDE_BODY).get_json()["model"] == PRIMARY


def test_every_model_passed_over_is_a_503_naming_them(chained):
    with FakeHF(Reply(503, {"error": "down"})) as failing, FakeHF(Reply(503, {"error": "down"})) as healthy:
        client = chained(failing, healthy, hf_max_retries=0, breaker_failures=1, breaker_cooldown=60).test_client()
        assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 502
        response = client.post("/v1/chat/completions", json=OPENAI_BODY)
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert error["code"] == "models_unavailable"
        assert f"{PRIMARY}: circuit_open; {BACKUP}: circuit_open" in error["message"]
        assert LOCAL_TOKEN not in response.get_data(as_text=True)


def test_the_openai_surface_answers_as_the_entry_that_served(chained):
    with FakeHF(Reply(402, CREDITS_BODY)) as failing, FakeHF(Reply(200, completion("From the backup"))) as healthy:
        response = chained(failing, healthy).test_client().post("/v1/chat/completions", json=OPENAI_BODY)
        assert response.status_code == 200
        assert response.get_json()["model"] == BACKUP
        assert response.get_json()["choices"][0]["message"]["content"] == "From the backup"
        assert response.headers["X-Contexis-Model"] == BACKUP


def test_model_params_are_the_chains_defaults(chained, project):
    with FakeHF(Reply(200, completion())) as failing, FakeHF(Reply(200, completion())) as healthy:
        app = chained(failing, healthy)
        path = project / "contexts" / "SupportBot" / "supportbot.ctx"
        context = yaml.safe_load(path.read_text())
        context["model"]["params"] = {"temperature": 0.2, "max_tokens": 64}
        path.write_text(yaml.safe_dump(context))
        app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        sent = failing.seen[0].body
        assert (sent["temperature"], sent["max_tokens"]) == (0.2, 64)
        app.test_client().post("/v1/chat/completions", json={**OPENAI_BODY, "temperature": 0.5})
        assert failing.seen[1].body["temperature"] == 0.5  # the client's, within the guardrails' ceilings


def test_spans_name_the_model_asked_and_the_one_that_served(chained, spans):
    with FakeHF(Reply(404, {"error": "Model not found"})) as failing, FakeHF(Reply(200, completion())) as healthy:
        chained(failing, healthy).test_client().post("/api/v1/chat", json=GUIDE_BODY)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "model.chain"]
    assert span.attributes["gen_ai.request.model"] == PRIMARY
    assert span.attributes["gen_ai.response.model"] == BACKUP
    assert span.attributes["contexis.fallback.attempts"] == 2
    calls = [s for s in spans.get_finished_spans() if s.name == "huggingface.generate"]
    assert [c.attributes["gen_ai.request.model"] for c in calls] == [PRIMARY, BACKUP]
    assert all(c.parent and c.parent.span_id == span.context.span_id for c in calls)


def test_a_context_without_a_chain_is_served_as_before(hf_settings, spans):
    with FakeHF(Reply(200, completion("plain"))) as fake:
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"))
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.get_json()["model"] == hf_settings.hf_model_id
        assert "X-Contexis-Model" not in response.headers
        response = app.test_client().post("/v1/chat/completions", json=OPENAI_BODY)
        assert response.get_json()["model"] == "SupportBot"
        assert fake.catalog_reads == 0  # the catalog is read only for chains
    assert not [s for s in spans.get_finished_spans() if s.name == "model.chain"]


# --- streams, through a served runtime ---------------------------------------------------------------------


def test_a_stream_falls_back_before_its_first_token(chained):
    with (
        FakeHF(Reply(503, {"error": "down"})) as failing,
        FakeHF(Stream(chat_events(["From ", "the backup"]))) as healthy,
    ):
        live = LiveApp(chained(failing, healthy, hf_max_retries=0))
        with live:
            response = requests.post(f"{live.url}/api/v1/chat", json={**GUIDE_BODY, "stream": True}, timeout=10)
            events = sse_events(response.text)
            assert "".join(data.get("delta", "") for _, data in events) == "From the backup"
            assert events[-1][1]["model"] == BACKUP
            assert response.headers["X-Contexis-Model"] == BACKUP
            body = {**OPENAI_BODY, "stream": True}
            response = requests.post(f"{live.url}/v1/chat/completions", json=body, timeout=10)
            chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line[6:].startswith("{")]
            assert {chunk["model"] for chunk in chunks} == {BACKUP}
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "From the backup"


def test_a_stream_that_fails_after_its_first_token_ends_as_before(chained):
    broken = Stream([*chat_events(["half an "])[:2], sse({"error": "provider crashed"})])
    with FakeHF(broken) as failing, FakeHF(Stream(chat_events(["never"]))) as healthy:
        live = LiveApp(chained(failing, healthy))
        with live:
            response = requests.post(f"{live.url}/api/v1/chat", json={**GUIDE_BODY, "stream": True}, timeout=10)
            events = sse_events(response.text)
            assert events[0][1] == {"delta": "half an "}
            assert events[-1][0] == "error"
            assert healthy.seen == []


# --- the router's catalog ------------------------------------------------------------------------------------


def test_the_catalog_skips_a_provider_that_is_down(project, settings):
    down, live = "meta-llama/Llama-3.3-70B-Instruct:nebius", "meta-llama/Llama-3.3-70B-Instruct:groq"
    name_models(project, {"id": down, "fallbacks": [live]})
    with FakeHF(Reply(200, completion("from groq"))) as router:
        router.catalog = Reply(200, ROUTER_CATALOG)
        app = create_app(settings.replace(hf_token=TOKEN, hf_endpoint=f"{router.url}/v1"))
        runtime = app.extensions["contexis"]
        runtime.router.catalog.refresh()
        response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        assert response.get_json()["model"] == live
        assert [seen.body["model"] for seen in router.seen] == [live]  # the provider that is down: no call
        assert metric(app, "cmp_model_fallbacks_total", from_model=down, to_model=live, reason="provider_down") == 1
        assert metric(app, "cmp_model_circuit_open", model=down) == 0  # a skip, not a failure


def test_the_catalog_is_read_in_the_background_once_a_chain_is_used(project, settings):
    name_models(project, {"id": PRIMARY})
    with FakeHF(Reply(200, completion())) as router:
        router.catalog = Reply(200, ROUTER_CATALOG)
        app = create_app(settings.replace(hf_token=TOKEN, hf_endpoint=f"{router.url}/v1"))
        catalog = app.extensions["contexis"].router.catalog
        assert router.catalog_reads == 0
        app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
        deadline = time.monotonic() + 5
        while not catalog.loaded and time.monotonic() < deadline:
            time.sleep(0.02)
        assert catalog.offer(PRIMARY) is not None
        catalog.close()


def test_a_request_with_tools_or_a_schema_skips_a_provider_without_them(settings):
    """A provider the catalog says lacks tools (or structured output) is passed over for a request that needs them."""
    from app.providers.base import GenerationParams
    from app.routing import ModelRouter, chain_of

    nebius_up = copy.deepcopy(ROUTER_CATALOG)
    nebius_up["data"][0]["providers"][2]["status"] = "live"  # no tools, structured output
    groq, nebius, together = (f"meta-llama/Llama-3.3-70B-Instruct:{p}" for p in ("groq", "nebius", "together"))
    tools = GenerationParams(tools=({"type": "function", "function": {"name": "lookup", "parameters": {}}},))
    schema = GenerationParams(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {}}})
    with FakeHF(Reply(200, completion())) as router:
        models = ModelRouter(settings.replace(hf_token=TOKEN, hf_endpoint=f"{router.url}/v1"))
        models.catalog.load(nebius_up)
        found = chain_of({"model": {"id": nebius, "fallbacks": [groq, together]}})
        attempts: list = []
        assert models.generate(found, "hi", tools, attempts=attempts).served == groq
        assert [a.outcome for a in attempts] == ["no_tools", "served"]
        found = chain_of({"model": {"id": groq, "fallbacks": [together]}})
        assert models.generate(found, "hi", schema).served == together
        assert models.generate(found, "hi", GenerationParams(response_format={"type": "text"})).served == groq
        assert [seen.body["model"] for seen in router.seen] == [groq, together, groq]
        assert router.seen[0].body["tools"] == list(tools.tools)
        models.close()


def test_version_lists_each_contexts_chain(project, settings):
    name_models(project, chain("http://user:pw@tgi.internal:8080"))
    client = create_app(settings.replace(hf_token=TOKEN, hf_model_id="default/model")).test_client()
    chains = client.get("/version").get_json()["chains"]
    assert chains["SupportBot"] == [
        {"id": PRIMARY, "endpoint": DEFAULT_HF_ENDPOINT},
        {"id": BACKUP, "endpoint": "http://tgi.internal:8080/v1"},
    ]
    assert "pw" not in json.dumps(chains)


def test_no_token_reaches_answers_logs_metrics_or_spans(chained, spans, caplog, capsys):
    # Each endpoint echoes the token it was sent (the local one never gets HF_TOKEN).
    echo = {"error": f"Invalid token: Bearer {LOCAL_TOKEN}"}
    with FakeHF(Reply(401, {"error": f"bad token {TOKEN}"})) as failing, FakeHF(Reply(401, echo)) as healthy:
        app = chained(failing, healthy)
        client = app.test_client()
        answers = [client.post("/api/v1/chat", json=GUIDE_BODY), client.post("/v1/chat/completions", json=OPENAI_BODY)]
        scraped = client.get("/metrics").get_data(as_text=True)
        version = client.get("/version").get_data(as_text=True)
    assert [answer.status_code for answer in answers] == [502, 502]
    exported = [str(dict(s.attributes or {})) + str(s.events) + str(s.status) for s in spans.get_finished_spans()]
    outputs = [a.get_data(as_text=True) + str(a.headers) for a in answers]
    outputs += [scraped, version, caplog.text, *capsys.readouterr(), *exported]
    for secret in (TOKEN, LOCAL_TOKEN):
        assert not [output for output in outputs if secret in output], secret


@responses.activate
def test_the_routers_own_refusals_move_the_chain_on(project, settings):
    """The router's real bodies: a model no enabled provider serves, spent credits, a provider it reports down."""
    from app.config import ROUTER_CHAT_ENDPOINT

    dropped, spent = "org/dropped-model:together", "meta-llama/Llama-3.3-70B-Instruct:together"
    down = "meta-llama/Llama-3.3-70B-Instruct:nebius"
    served = "meta-llama/Llama-3.3-70B-Instruct:groq"
    name_models(project, {"id": dropped, "fallbacks": [spent, down, served]})
    not_supported = copy.deepcopy(NOT_SUPPORTED)
    not_supported["error"]["message"] = not_supported["error"]["message"].replace(PRIMARY, dropped)
    bodies = {dropped: (400, not_supported), spent: (402, CREDITS_BODY), served: (200, completion("from groq"))}

    def answer(request):
        status, body = bodies[json.loads(request.body)["model"]]
        return status, {}, json.dumps(body)

    responses.add_callback(responses.POST, f"{ROUTER_CHAT_ENDPOINT}/chat/completions", callback=answer)
    responses.get(f"{ROUTER_CHAT_ENDPOINT}/models", json=ROUTER_CATALOG)
    app = create_app(settings.replace(hf_token=TOKEN, hf_backoff_factor=0))
    assert app.extensions["contexis"].router.read_catalog() == ""
    response = app.test_client().post("/api/v1/chat", json=GUIDE_BODY)
    assert response.get_json()["model"] == served
    called = [json.loads(call.request.body)["model"] for call in responses.calls if call.request.method == "POST"]
    assert called == [dropped, spent, served]  # the provider the catalog reports down is not called
    reasons = [
        ("model_not_supported", dropped, spent),
        ("payment_required", spent, down),
        ("provider_down", down, served),
    ]
    for reason, from_model, to_model in reasons:
        assert metric(app, "cmp_model_fallbacks_total", from_model=from_model, to_model=to_model, reason=reason) == 1

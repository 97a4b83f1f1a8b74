"""`ctx hf test-model --context`, `ctx hf models` and `ctx context validate` for a context's `model:` section,
run as real subprocesses."""

from __future__ import annotations

import pytest
import yaml
from fake_hf import CREDITS_BODY, ROUTER_CATALOG, FakeHF, Reply, Stream, chat_events, completion
from helpers import TOKEN, run
from test_routing import BACKUP, LOCAL_TOKEN, PRIMARY, chain, name_models


def test_test_model_tries_the_chain_and_says_why_each_entry_did_not_answer(project):
    with FakeHF(Reply(402, CREDITS_BODY)) as failing, FakeHF(Reply(200, completion("From the backup"))) as healthy:
        name_models(project, chain(healthy.url))
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": f"{failing.url}/v1", "TGI_TOKEN": LOCAL_TOKEN}
        result = run("hf", "test-model", "hi", "--context", "SupportBot", "--root", str(project), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "From the backup\n"
    lines = [line for line in result.stderr.splitlines() if line.startswith("ctx: ") and ". " in line]
    assert lines[0].startswith(f"ctx: 1. {PRIMARY} at {failing.url}/v1: payment_required: Hugging Face returned 402")
    assert lines[1].startswith(f"ctx: 2. {BACKUP} at {healthy.url}/v1: answered in ")
    assert TOKEN not in result.stderr and LOCAL_TOKEN not in result.stderr


def test_test_model_streams_through_the_chain_and_fails_when_none_answers(project):
    with (
        FakeHF(Reply(404, {"error": "Model not found"})) as failing,
        FakeHF(Stream(chat_events(["a", "b"]))) as healthy,
    ):
        name_models(project, chain(healthy.url))
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": f"{failing.url}/v1", "TGI_TOKEN": LOCAL_TOKEN}
        result = run("hf", "test-model", "hi", "--stream", "--context", "SupportBot", "--root", str(project), env=env)
        assert (result.returncode, result.stdout) == (0, "ab\n"), result.stderr
        healthy.replies = [Reply(503, {"error": "down"})]
        result = run("hf", "test-model", "hi", "--context", "SupportBot", "--root", str(project), env=env)
    assert result.returncode == 1
    assert f"ctx: 2. {BACKUP} at {healthy.url}/v1: unavailable" in result.stderr


def test_test_model_needs_a_context_that_names_models(project):
    result = run("hf", "test-model", "hi", "--context", "SupportBot", "--root", str(project), env={"HF_TOKEN": TOKEN})
    assert result.returncode == 2
    assert "context 'SupportBot' names no models (model:)" in result.stderr
    result = run("hf", "test-model", "hi", "--context", "Nobody", "--root", str(project), env={"HF_TOKEN": TOKEN})
    assert (result.returncode, result.stderr.strip()) == (2, "ctx: context 'Nobody' not found")


def test_models_prints_the_routers_providers_for_a_model():
    with FakeHF() as router:
        router.catalog = Reply(200, ROUTER_CATALOG)
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": f"{router.url}/v1"}
        result = run("hf", "models", "meta-llama/Llama-3.3-70B-Instruct", env=env)
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines()]
        assert rows[0] == [
            "PROVIDER",
            "STATUS",
            "CONTEXT",
            "IN",
            "$/M",
            "OUT",
            "$/M",
            "TOOLS",
            "JSON",
            "LATENCY",
            "TOKENS/S",
        ]
        assert rows[1] == ["groq", "live", "131072", "0.59", "0.79", "yes", "no", "0.21s", "310.5"]
        assert rows[3] == ["nebius", "error", "131072", "0.13", "0.4", "no", "yes", "-", "-"]
        result = run("hf", "models", "nobody/unknown", env=env)
        assert result.returncode == 1
        assert f"the catalog at {router.url}/v1/models lists no provider for nobody/unknown" in result.stderr
        router.catalog = Reply(401, {"error": "Invalid credentials in Authorization header"})
        result = run("hf", "models", "meta-llama/Llama-3.3-70B-Instruct", env=env)
        assert result.returncode == 1 and "the endpoint answered 401" in result.stderr
        assert TOKEN not in result.stderr


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"fallbacks": ["b"]}, "model: 'id' is a required property"),
        ({"id": "a", "fallback": ["b"]}, "model: Additional properties are not allowed ('fallback' was unexpected)"),
        ({"id": "a", "fallbacks": [{"id": "b", "token_env": "TGI"}]}, "'endpoint' is a dependency of 'token_env'"),
        ({"id": "a", "fallbacks": [{"id": "b", "endpoint": "ftp://x"}]}, "model.fallbacks.0"),
        ({"id": "a", "fallbacks": ["a"]}, "model.fallbacks.0: 'a' is already in the chain"),
        ({"id": "a", "params": {"temperature": 3}}, "model.params.temperature: 3 is greater than the maximum of 2"),
        ({"id": "a", "params": {"seed": 3}}, "model.params: Additional properties are not allowed"),
        (
            {"id": "a", "fallbacks": [{"id": "b:groq", "endpoint": "http://tgi:8080"}]},
            "model.fallbacks.0: 'b:groq' picks an Inference Provider",
        ),
    ],
)
def test_validate_checks_the_model_section(project, section, problem):
    name_models(project, section)
    result = run("context", "validate", "--root", str(project))
    assert result.returncode == 1
    assert "contexts/SupportBot/supportbot.ctx: " in result.stderr
    assert problem in result.stderr


def test_validate_keeps_model_params_under_the_guardrails_ceilings(project):
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    context["guardrails"]["client_max"] = {"temperature": 0.5}
    context["model"] = {"id": "a", "params": {"temperature": 0.8}}
    path.write_text(yaml.safe_dump(context))
    result = run("context", "validate", "--root", str(project))
    assert result.returncode == 1
    assert "model.params.temperature: 0.8 is above guardrails.client_max.temperature (0.5)" in result.stderr
    context["model"]["params"]["temperature"] = 0.4
    path.write_text(yaml.safe_dump(context))
    assert run("context", "validate", "--root", str(project)).returncode == 0


def test_ctx_test_runs_model_cases_through_the_chain(project):
    with FakeHF(Reply(503, {"error": "down"})) as failing, FakeHF(Reply(200, completion("Hello there"))) as healthy:
        name_models(project, chain(healthy.url))
        env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": f"{failing.url}/v1", "TGI_TOKEN": LOCAL_TOKEN, "HF_MAX_RETRIES": "0"}
        result = run("test", "--root", str(project), "--context", "SupportBot", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(healthy.seen) == 2  # both `mode: model` cases, answered by the chain's fallback

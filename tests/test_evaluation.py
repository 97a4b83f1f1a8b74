"""`ctx test`: assertions, baselines and drift, reports, exit codes and the concurrency bound."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_hf import FakeHF, Reply, feature_extraction
from helpers import EXAMPLE, MODEL, TOKEN, run

import cli
from app.config import Settings
from app.contexts import CASE_ASSERTIONS, ContextStore
from app.evaluation import ERROR, FAILED, PASSED, SKIPPED, Report, SetupError, json_report, junit_xml, run_tests
from app.evaluation.assertions import ASSERTIONS
from app.memory.sqlite import SqliteStore
from app.runtime import Runtime

CONTEXT_FILE = Path("contexts") / "SupportBot" / "supportbot.ctx"
TEMPLATE_FILE = Path("prompts") / "SupportBot" / "agent_response.md"
# Hugging Face's own bodies: a model still loading, a rate limit.
LOADING = {"error": "Model meta-llama/Meta-Llama-3.1-8B-Instruct is currently loading", "estimated_time": 20.0}
RATE_LIMITED = {"error": "Rate limit reached. You reached free usage limit (reset hourly)."}


def with_cases(root: Path, cases: list[dict[str, Any]], **testing: Any) -> None:
    """Replace the example context's testing section."""
    path = root / CONTEXT_FILE
    context = yaml.safe_load(path.read_text())
    context["testing"] = {**testing, "cases": cases}
    path.write_text(yaml.safe_dump(context, sort_keys=False))


def run_cases(settings: Settings, cases: list[dict[str, Any]], testing: dict | None = None, **options: Any) -> Report:
    with_cases(settings.project_root, cases, **(testing or {}))
    return run_tests(Runtime(settings), **options)


def model_settings(settings: Settings, url: str, **changes: Any) -> Settings:
    return settings.replace(hf_token=TOKEN, hf_model_id=MODEL, hf_endpoint=url, hf_backoff_factor=0, **changes)


def tgi(text: str, tokens: int | None = None) -> list[dict[str, Any]]:
    """A text-generation answer; TGI adds `details.generated_tokens`."""
    return [{"generated_text": text, **({"details": {"generated_tokens": tokens}} if tokens else {})}]


class WordCounts:
    """A deterministic embedder: how often each of a few words occurs, so like answers have like vectors."""

    WORDS = ("refund", "order", "shipping", "password", "hello", "days")

    def embed(self, texts):
        return [[float(text.lower().count(word)) for word in self.WORDS] for text in texts]


@pytest.fixture
def ctx(monkeypatch, capsys):
    """`ctx ARGS` in this process (exit status, stdout, stderr), without the runtime's variables of this environment."""
    for name in list(os.environ):
        if name.startswith(("HF_", "CMP_")):
            monkeypatch.delenv(name)

    def invoke(*args: str) -> tuple[int, str, str]:
        status = cli.main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


def test_every_assertion_the_schema_allows_has_a_check():
    assert set(ASSERTIONS) == set(CASE_ASSERTIONS)


def test_quickstart_passes_render_only_from_a_clean_checkout():
    result = run("test", "--root", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed, 0 failed, 0 errors, 1 skipped" in result.stdout
    assert "SKIPPED  SupportBot/greets-back" in result.stdout
    # The guardrails act without a model: the card number is replaced before the prompt is built.
    assert "PASSED   SupportBot/no-card-numbers" in result.stdout
    assert "mode: model needs a model" in result.stdout
    assert not (EXAMPLE / "tests").exists()


HELLO = {"mode": "prompt", "input": "hello"}


@pytest.mark.parametrize(
    ("passing", "failing", "message"),
    [
        ({"expect_contains": ["User: hello", "SupportBot"]}, {"expect_contains": ["User: hello", "goodbye"]},
         "expect_contains: expected the answer to contain ['goodbye']; got 'You are SupportBot."),
        ({"expect_contains": "user: HELLO", "ignore_case": True}, {"expect_contains": "user: HELLO"},
         "expected the answer to contain ['user: HELLO']"),
        ({"expect_not_contains": ["{{", "Traceback"]}, {"expect_not_contains": "SupportBot"},
         "expect_not_contains: expected the answer not to contain ['SupportBot']"),
        ({"expect_not_contains": "supportbot"}, {"expect_not_contains": "supportbot", "ignore_case": True},
         "not to contain ['supportbot']"),
        ({"expect_regex": r"(?m)^User: \w+$"}, {"expect_regex": [r"User: \w+", r"^Nope"]},
         "expect_regex: expected a match for ['^Nope']"),
        ({"max_latency_ms": 60000}, {"max_latency_ms": 0.001}, "max_latency_ms: expected an answer within 0.001 ms"),
    ],
    ids=["contains", "ignore-case", "not-contains", "not-contains-ignore-case", "regex", "latency"],
)
def test_prompt_assertions_pass_and_fail_saying_what_came_back(settings, passing, failing, message):
    report = run_cases(settings, [{"name": "ok", **HELLO, **passing}, {"name": "bad", **HELLO, **failing}])
    ok, bad = report.results
    assert (ok.status, ok.failures) == (PASSED, [])
    assert bad.status == FAILED
    assert message in "\n".join(f"{name}: {text}" for name, text in bad.failures)


def test_expect_sources_checks_the_memory_the_answer_cites(settings):
    SqliteStore(settings.project_root, "CustomerDocs").ingest([settings.project_root / "docs" / "CustomerDocs"])
    search = {"component": "CustomerDocs", "prompt_file": "search_response.md", "query": "refund", "top_k": 3}
    cases = [
        {"name": "cites", "input": "Can I get a refund?", "expect_sources": "returns.md", **search},
        {"name": "misses", "input": "Can I get a refund?", "expect_sources": ["returns.md", "pricing.md"], **search},
    ]
    cites, misses = run_cases(settings, cases).results
    assert cites.status == PASSED, cites.failures
    assert "docs/CustomerDocs/returns.md" in cites.observation.sources
    assert misses.failures[0][1].startswith("expected the sources ['pricing.md'] to be cited; the answer cited [")


def test_model_assertions_tokens_and_json_schema(settings):
    schema = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["refund", "other"]}}}
    replies = [
        Reply(body=tgi('```json\n{"intent": "refund"}\n```', tokens=9)),
        Reply(body=tgi('{"intent": "chitchat"}', tokens=300)),
        Reply(body=tgi("Sure! Here it is: intent=refund", tokens=12)),
        Reply(body=tgi('{"intent": "refund"}')),
    ]
    cases = [
        {"name": "fenced-json", "input": "a", "expect_json_schema": schema, "max_completion_tokens": 10},
        {"name": "wrong-json", "input": "b", "expect_json_schema": schema, "max_completion_tokens": 256},
        {"name": "not-json", "input": "c", "expect_json_schema": schema},
        {"name": "no-usage", "input": "d", "max_completion_tokens": 10},
    ]
    with FakeHF(*replies) as fake:
        # One at a time, so the scripted replies meet the cases in order.
        results = run_cases(model_settings(settings, fake.url, test_concurrency=1), cases).results
    fenced, wrong, not_json, no_usage = results
    assert fenced.status == PASSED, fenced.failures
    assert wrong.failures == [
        ("max_completion_tokens", "expected at most 256 completion tokens; the model used 300"),
        ("expect_json_schema", "expected JSON matching expect_json_schema; at intent: 'chitchat' is not one of "
                               "['refund', 'other']"),
    ]
    assert not_json.failures[0][1].startswith("expected a JSON answer; it does not parse (Expecting value")
    assert no_usage.status == PASSED
    assert no_usage.skipped == ["max_completion_tokens: the model endpoint reported no completion token count"]


def test_similar_to_uses_the_embedder_and_is_skipped_without_one(settings):
    cases = [
        {"name": "close", **HELLO, "similar_to": "hello! passwords? refunds.", "min_similarity": 0.9},
        {"name": "far", **HELLO, "similar_to": "order shipping days", "min_similarity": 0.5},
    ]
    close, far = run_cases(settings, cases, embedder=WordCounts()).results
    assert close.status == PASSED, close.failures
    assert far.status == FAILED
    assert far.failures[0][0] == "similar_to"
    assert "expected similarity ≥ 0.5 to 'order shipping days'; got 0.000" in far.failures[0][1]

    unjudged = run_cases(settings, cases).results
    assert [r.status for r in unjudged] == [PASSED, PASSED]
    assert unjudged[0].skipped == ["similar_to: needs embeddings, and no embedder is configured"]


def test_a_failing_model_call_is_an_error_not_a_failure(settings):
    with FakeHF(Reply(503, LOADING)) as fake:
        report = run_cases(
            model_settings(settings, fake.url, hf_max_retries=0),
            [{"name": "greets", "input": "hello", "expect_contains": "hello"}, {"name": "render", **HELLO}],
        )
    greets, render = report.results
    assert greets.status == ERROR
    assert greets.error.startswith("hf_unavailable: ")
    assert "Model meta-llama/Meta-Llama-3.1-8B-Instruct is currently loading" in greets.error
    assert TOKEN not in greets.error
    assert render.status == PASSED  # prompt cases never call the model
    assert not report.ok


def test_a_rate_limit_is_retried_like_any_chat_request(settings):
    with FakeHF(Reply(429, RATE_LIMITED, {"Retry-After": "0"}), Reply(body=tgi("hello there"))) as fake:
        report = run_cases(model_settings(settings, fake.url), [{"input": "hello", "expect_contains": "hello there"}])
    assert report.results[0].status == PASSED
    assert report.results[0].case.name == "case-1"
    assert len(fake.seen) == 2


def test_cases_run_concurrently_up_to_the_bound(settings):
    cases = [{"name": f"c{i}", "mode": "model", "input": f"q{i}", "expect_contains": "Hi"} for i in range(9)]
    with FakeHF(Reply(body=tgi("Hi"), delay=0.15)) as fake:
        report = run_cases(model_settings(settings, fake.url, test_concurrency=3), cases)
    assert report.count(PASSED) == 9
    assert len(fake.seen) == 9
    assert fake.peak_in_flight == 3
    assert report.seconds < 9 * 0.15  # concurrent, not one after another


def test_model_cases_are_skipped_without_a_model_and_the_run_still_passes(settings):
    report = run_cases(settings, [{"mode": "model", "input": "hi"}, {**HELLO, "expect_contains": "hello"}])
    assert [r.status for r in report.results] == [SKIPPED, PASSED]
    assert report.ok


def test_update_baseline_then_drift_stable_then_changed(settings):
    cases = [{"name": "greeting", **HELLO}, {"name": "refund", "mode": "prompt", "input": "refund please"}]
    update = run_cases(settings, cases, baseline_mode="update")
    path = settings.project_root / "tests" / "baselines" / "SupportBot.json"
    assert update.baselines_written == [path]
    recorded = json.loads(path.read_text())
    assert recorded["context"] == "SupportBot"
    assert set(recorded["cases"]) == {"greeting", "refund"}
    assert "User: hello" in recorded["cases"]["greeting"]["answer"]
    assert "embedding" not in recorded["cases"]["greeting"]

    stable = run_cases(settings, cases, baseline_mode="drift")
    assert stable.ok
    assert {(r.drift.method, r.drift.similarity, r.drift.threshold) for r in stable.results} == {
        ("difflib ratio", 1.0, 0.8)
    }

    template = settings.project_root / TEMPLATE_FILE
    template.write_text("Answer in one word.\nUser: {{ user_input }}\n")
    changed = run_cases(settings, cases, {"text_drift_threshold": 0.9}, baseline_mode="drift")
    assert [r.status for r in changed.results] == [FAILED, FAILED]
    name, message = changed.results[0].failures[0]
    assert name == "drift"
    assert "(difflib ratio) to the baseline is below 0.9; baseline 'You are SupportBot." in message
    assert "now 'Answer in one word. User: hello'" in message


def test_drift_by_embeddings_when_an_embedder_is_configured(settings):
    cases = [{"name": "greeting", **HELLO}]
    run_cases(settings, cases, baseline_mode="update", embedder=WordCounts())
    path = settings.project_root / "tests" / "baselines" / "SupportBot.json"
    assert json.loads(path.read_text())["cases"]["greeting"]["embedding"] == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]

    stable = run_cases(settings, cases, baseline_mode="drift", embedder=WordCounts()).results[0]
    assert (stable.status, stable.drift.method, stable.drift.threshold) == (PASSED, "embedding cosine", 0.85)

    (settings.project_root / TEMPLATE_FILE).write_text("Refund policy: 30 days.\nUser: {{ user_input }} refund\n")
    drifted = run_cases(settings, cases, {"drift_threshold": 0.9}, baseline_mode="drift", embedder=WordCounts())
    assert drifted.results[0].status == FAILED
    assert "(embedding cosine) to the baseline is below 0.9" in drifted.results[0].failures[0][1]

    # Without an embedder the same baseline is compared by text, with the text threshold.
    by_text = run_cases(settings, cases, baseline_mode="drift").results[0]
    assert by_text.drift.method == "difflib ratio"


def test_drift_needs_a_baseline_and_a_new_case_is_an_error(settings):
    with pytest.raises(SetupError, match=r"no baseline at .*SupportBot\.json: record one with `ctx test --update"):
        run_cases(settings, [HELLO], baseline_mode="drift")
    run_cases(settings, [{"name": "old", **HELLO}], baseline_mode="update")
    report = run_cases(settings, [{"name": "old", **HELLO}, {"name": "new", **HELLO}], baseline_mode="drift")
    assert [r.status for r in report.results] == [PASSED, ERROR]
    assert report.results[1].error == "no baseline answer: record one with `ctx test --update-baseline`"


def test_an_unreadable_baseline_stops_the_run(settings):
    path = settings.project_root / "tests" / "baselines" / "SupportBot.json"
    path.parent.mkdir(parents=True)
    path.write_text('["not", "a", "baseline"]')
    with pytest.raises(SetupError, match=r"cannot read the baseline .*: expected an object with a 'cases' object"):
        run_cases(settings, [HELLO], baseline_mode="drift")


def test_an_errored_case_keeps_its_previous_baseline(settings):
    cases = [{"name": "greeting", **HELLO}, {"name": "other", **HELLO}]
    run_cases(settings, cases, baseline_mode="update")
    broken = [{"name": "greeting", "mode": "prompt", "data": {}}, {"name": "other", **HELLO}]
    report = run_cases(settings, broken, baseline_mode="update")
    assert report.results[0].status == ERROR
    assert report.results[0].error.startswith("missing_variable: ")
    recorded = json.loads((settings.project_root / "tests" / "baselines" / "SupportBot.json").read_text())
    assert "User: hello" in recorded["cases"]["greeting"]["answer"]


def test_a_tenant_run_uses_its_context_and_its_own_baselines(settings):
    root = settings.project_root
    tenant_file = root / "contexts" / "tenants" / "acme" / "SupportBot.ctx"
    tenant_file.parent.mkdir(parents=True)
    tenant_file.write_text(
        "extends: ../../SupportBot/supportbot.ctx\nname: SupportBot\n"
        "testing:\n  cases:\n    - {name: acme, mode: prompt, input: hi, expect_contains: 'User: hi'}\n"
    )
    report = run_tests(Runtime(settings), tenant_id="acme", baseline_mode="update")
    assert [(r.case.name, r.case.tenant_id, r.status) for r in report.results] == [("acme", "acme", PASSED)]
    assert report.baselines_written == [root / "tests" / "baselines" / "tenants" / "acme" / "SupportBot.json"]
    with pytest.raises(SetupError, match=r"--tenant '\.\./x' is not a valid name"):
        run_tests(Runtime(settings), tenant_id="../x")


def test_junit_and_json_reports_parse_back(settings):
    cases = [
        {"name": "ok", **HELLO, "expect_contains": "hello"},
        {"name": "bad", **HELLO, "expect_contains": "goodbye", "expect_regex": "^Nope"},
        {"name": "needs-model", "mode": "model", "input": "hi"},
        {"name": "broken", "mode": "prompt", "data": {"user_input": "\x07bell"}, "expect_contains": "bell"},
    ]
    report = run_cases(settings, cases)
    suites = ET.fromstring(junit_xml(report))
    assert (suites.tag, suites.get("tests"), suites.get("failures"), suites.get("skipped")) == (
        "testsuites", "4", "1", "1"
    )
    suite = suites.find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("errors")) == ("SupportBot", "4", "0")
    by_name = {case.get("name"): case for case in suite.iter("testcase")}
    failure = by_name["bad"].find("failure")
    assert failure.get("message").startswith("expect_contains: expected the answer to contain ['goodbye']")
    assert "expect_regex: expected a match for ['^Nope']" in failure.text
    assert by_name["needs-model"].find("skipped").get("message").startswith("mode: model needs a model")
    assert by_name["needs-model"].find("system-out") is None
    assert by_name["ok"].find("failure") is None
    assert "User: hello" in by_name["ok"].find("system-out").text
    assert "User: \ufffdbell" in by_name["broken"].find("system-out").text  # XML cannot hold a BEL

    document = json.loads(json.dumps(json_report(report)))
    assert document["summary"] == {**document["summary"], "cases": 4, "passed": 2, "failed": 1, "skipped": 1}
    bad = document["cases"][1]
    assert (bad["context"], bad["case"], bad["status"], bad["mode"]) == ("SupportBot", "bad", "failed", "prompt")
    assert [f["assertion"] for f in bad["failures"]] == ["expect_contains", "expect_regex"]
    assert bad["answer"].startswith("You are SupportBot.")
    assert document["cases"][2]["answer"] is None


INVALID_TESTING = [
    ({"expect_contain": "hi"}, "testing.cases.0: Additional properties are not allowed ('expect_contain' was"),
    ({"expect_regex": "(unclosed"}, "testing.cases.0.expect_regex: '(unclosed' is not valid under any"),
    ({"expect_json_schema": {"type": "strnig"}}, "testing.cases.0.expect_json_schema.type: 'strnig' is not valid"),
    ({"similar_to": "x", "min_similarity": 1.5}, "testing.cases.0.min_similarity: 1.5 is greater than the maximum"),
    ({"min_similarity": 0.5}, "testing.cases.0: 'similar_to' is a dependency of 'min_similarity'"),
    ({"mode": "live"}, "testing.cases.0.mode: 'live' is not one of ['prompt', 'answer', 'model']"),
    ({"max_latency_ms": 0}, "testing.cases.0.max_latency_ms: 0 is less than or equal to the minimum of 0"),
    ({"prompt_file": "../secret.md"}, "testing.cases.0.prompt_file: '../secret.md' does not match"),
]


@pytest.mark.parametrize(("case", "problem"), INVALID_TESTING, ids=[str(case)[:30] for case, _ in INVALID_TESTING])
def test_context_validate_checks_the_testing_section(project, case, problem):
    with_cases(project, [{"input": "hi", **case}])
    problems = ContextStore(project).problems()
    assert len(problems) == 1
    assert problems[0].startswith(f"contexts/SupportBot/supportbot.ctx: {problem}")


def test_case_names_are_unique_within_a_context(project):
    with_cases(project, [{"input": "a"}, {"name": "case-1", "input": "b"}])
    assert ContextStore(project).problems() == [
        "contexts/SupportBot/supportbot.ctx: testing.cases.1.name: 'case-1' is used by an earlier case"
    ]


def test_cli_exit_codes_reports_and_a_dropped_phrase(ctx, project, tmp_path):
    junit, report = tmp_path / "reports" / "ctx.xml", tmp_path / "reports" / "ctx.json"
    status, out, _ = ctx("test", "--root", str(project), "--junit", str(junit), "--json", str(report))
    assert status == 0, out
    assert ET.parse(junit).getroot().get("tests") == "6"
    assert json.loads(report.read_text())["summary"]["passed"] == 5

    template = project / TEMPLATE_FILE
    template.write_text(template.read_text().replace("- {{ item }}", "-"))
    status, out, _ = ctx("test", "--root", str(project), "--context", "SupportBot")
    assert status == 1
    assert "FAILED   SupportBot/states-limitations" in out
    assert "expect_contains: expected the answer to contain ['Never asks for passwords or payment card numbers']" in out

    assert ctx("test", "--root", str(project), "--context", "NoSuchBot") == (
        2, "", "ctx: unknown context NoSuchBot; the project has SupportBot\n"
    )
    status, _, err = ctx("test", "--root", str(project), "--drift")
    assert (status, "no baseline at" in err) == (2, True)
    with_cases(project, [{"expect_contain": "hi"}])
    status, _, err = ctx("test", "--root", str(project))
    assert (status, "'expect_contain' was unexpected" in err) == (2, True)
    status, _, err = ctx("context", "validate", "--root", str(project))
    assert (status, "testing.cases.0: Additional properties are not allowed ('expect_contain'" in err) == (1, True)
    with pytest.raises(SystemExit) as usage:
        ctx("test", "--root", str(project), "--drift", "--update-baseline")
    assert usage.value.code == 2


def test_cli_update_baseline_then_drift_with_a_local_model(project):
    env = {"HF_TOKEN": "dummy", "HF_MODEL_ID": "local", "CMP_TEST_CONCURRENCY": "2"}
    answers = Reply(body=tgi("Hello! How can I help you with your Acme Cloud account today?", tokens=14))
    with FakeHF(answers) as fake:
        env["HF_ENDPOINT"] = fake.url
        update = run("test", "--root", str(project), "--update-baseline", env=env)
        drift = run("test", "--root", str(project), "--drift", env=env)
    assert update.returncode == 0, update.stdout + update.stderr
    assert "6 cases: 6 passed" in update.stdout
    assert f"baseline written: {project.resolve()}/tests/baselines/SupportBot.json" in update.stdout
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert "drift by difflib ratio (threshold 0.8)" in drift.stdout
    assert "6 cases: 6 passed" in drift.stdout
    assert "dummy" not in update.stdout + drift.stdout


def test_ctx_test_judges_similarity_with_the_embedding_model_memory_uses(ctx, project, monkeypatch, tmp_path):
    report = tmp_path / "ctx.json"
    cases = [
        {"name": "near", **HELLO, "similar_to": "refunds and money back", "min_similarity": 0.05},
        {"name": "far", **HELLO, "similar_to": "parcel courier delivery", "min_similarity": 0.99},
    ]
    with_cases(project, cases)
    with FakeHF(Reply(body=feature_extraction)) as fake:
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_EMBED_MODEL_ID", "sentence-transformers/all-MiniLM-L6-v2")
        monkeypatch.setenv("HF_EMBED_ENDPOINT", fake.url)
        status, out, _ = ctx("test", "--root", str(project), "--json", str(report))
    assert status == 1, out
    results = {case["case"]: case for case in json.loads(report.read_text())["cases"]}
    assert results["near"]["status"] == PASSED and results["near"]["skipped"] == []
    assert results["far"]["status"] == FAILED
    assert results["far"]["failures"][0]["assertion"] == "similar_to"
    assert {seen.path for seen in fake.seen} == {"/sentence-transformers/all-MiniLM-L6-v2/pipeline/feature-extraction"}

"""Memory in the chat route and the `ctx memory` commands: results, sources, tenants, hostile queries.

`settings` carries `memory_url`, so every test here runs on both backends (SQLite, PostgreSQL).
"""

from __future__ import annotations

import json

import pytest
from helpers import GUIDE_BODY, SEARCH_BODY, chat, run

from app.config import Settings
from app.memory import open_memory


@pytest.fixture
def settings(project, memory_url):
    return Settings.from_env({"CMP_PROJECT_ROOT": str(project), "CMP_MEMORY_URL": memory_url}, dotenv_path=None)


@pytest.fixture
def docs_project(project, settings):
    open_memory(settings).store("CustomerDocs").ingest([project / "docs" / "CustomerDocs"])
    return project


def test_matches_reach_the_template_and_the_response_cites_them(docs_project, client):
    response = chat(client, SEARCH_BODY)
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["sources"]) == 2
    assert body["sources"][0]["source"] == "docs/CustomerDocs/returns.md"
    assert set(body["sources"][0]) == {"id", "source", "score"}
    assert body["sources"][0]["score"] >= body["sources"][1]["score"]
    assert "(docs/CustomerDocs/returns.md) ## Refunds" in body["rendered"]


def test_top_k_zero_uses_the_component_default_and_over_50_is_400(docs_project, client):
    body = chat(client, {**SEARCH_BODY, "query": "order", "top_k": 0}).get_json()
    assert 0 < len(body["sources"]) <= 5
    response = chat(client, {**SEARCH_BODY, "top_k": 51})
    assert response.status_code == 400
    assert "top_k" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "query", ['"', "refund OR *", "NEAR(refund warranty)", "content:refund", "-refund", ")(", "the of and", "***", "ü"]
)
def test_hostile_queries_are_200_and_never_widen_the_search(docs_project, client, query):
    response = chat(client, {**SEARCH_BODY, "query": query})
    assert response.status_code == 200
    for source in response.get_json()["sources"]:
        assert source["source"] in {"docs/CustomerDocs/returns.md", "docs/CustomerDocs/warranty.md"}


def test_a_component_without_memory_and_a_request_without_query_have_no_results(project, client):
    assert chat(client, SEARCH_BODY).get_json()["sources"] == []
    assert chat(client, GUIDE_BODY).get_json()["sources"] == []


def test_tenant_documents_never_reach_another_tenant(docs_project, settings, client, tmp_path):
    secret = tmp_path / "acme.md"
    secret.write_text("# Acme only\n\nThe acme loyalty discount code is ZEBRA-42 for refund cases.\n")
    open_memory(settings).store("CustomerDocs", "acme").ingest([secret])
    body = {**SEARCH_BODY, "query": "zebra loyalty discount refund", "top_k": 10}
    acme = chat(client, {**body, "tenant_id": "acme"}).get_json()
    globex = chat(client, {**body, "tenant_id": "globex"}).get_json()
    shared = chat(client, body).get_json()
    assert "ZEBRA-42" in acme["rendered"]
    assert any(s["source"].endswith("acme.md") for s in acme["sources"])
    for other in (globex, shared):
        assert "ZEBRA-42" not in other["rendered"]
        assert not any(s["source"].endswith("acme.md") for s in other["sources"])
        assert other["sources"]  # the shared documents still answer


def test_search_is_measured_and_traced(docs_project, settings, spans):
    from app import create_app

    app = create_app(settings)
    chat(app.test_client(), SEARCH_BODY)
    registry = app.extensions["contexis"].metrics.registry
    assert registry.get_sample_value("cmp_memory_search_duration_seconds_count", {"component": "CustomerDocs"}) == 1
    span = next(s for s in spans.get_finished_spans() if s.name == "memory.search")
    assert span.attributes["memory.component"] == "CustomerDocs"
    assert span.attributes["memory.top_k"] == 2
    assert span.attributes["memory.results"] == 2
    assert span.attributes["db.system"] == ("postgresql" if settings.memory_url else "sqlite")


def test_broken_memory_config_is_a_clear_json_error(docs_project, client):
    (docs_project / "memory" / "CustomerDocs" / "memory_config.yaml").write_text("top_k: lots\n")
    response = chat(client, SEARCH_BODY)
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "invalid_memory_config"


def test_memory_commands_ingest_search_stats_and_delete(project, memory_url):
    root = ["--root", str(project), "--component", "CustomerDocs"]
    env = {"CMP_MEMORY_URL": memory_url}
    docs = str(project / "docs" / "CustomerDocs")
    first = run("memory", "ingest", *root, docs, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ingested 4 files (")
    again = run("memory", "ingest", *root, docs, env=env)
    assert "ingested 0 files" in again.stdout and "4 unchanged" in again.stdout

    found = run("memory", "search", *root, "--query", "refund", "--json", env=env)
    results = json.loads(found.stdout)
    assert results[0]["source"] == "docs/CustomerDocs/returns.md"
    table = run("memory", "search", *root, "--query", "refund", "--top-k", "1", env=env)
    assert len(table.stdout.strip().splitlines()) == 2 and "returns.md" in table.stdout

    stats = run("memory", "stats", "--root", str(project), env=env)
    assert "CustomerDocs" in stats.stdout and "(shared)" in stats.stdout

    gone = run("memory", "delete", *root, "--source", "docs/CustomerDocs/returns.md", env=env)
    assert gone.stdout.strip() == "deleted 1 document"
    after = run("memory", "search", *root, "--query", "refund", "--json", env=env)
    assert all(r["source"] != "docs/CustomerDocs/returns.md" for r in json.loads(after.stdout))


def test_memory_commands_reject_bad_names_and_paths(project):
    bad = run("memory", "search", "--root", str(project), "--component", "../x", "--query", "a")
    assert bad.returncode == 1 and "invalid_request" in bad.stderr
    missing = run("memory", "ingest", "--root", str(project), "--component", "CustomerDocs", str(project / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_a_named_component_is_searched_rather_than_the_context_memory(docs_project, settings, client):
    import shutil

    # Another component with its own template and documents: naming it must search its memory, not CustomerDocs'.
    shutil.copytree(docs_project / "prompts" / "CustomerDocs", docs_project / "prompts" / "Policies")
    policy = docs_project / "docs" / "Policies" / "refund-policy.md"
    policy.parent.mkdir(parents=True)
    policy.write_text("# Refund policy\n\nA refund is paid back within 14 days to the original card.\n")
    open_memory(settings).store("Policies").ingest([policy.parent])
    response = chat(client, {**SEARCH_BODY, "component": "Policies"})
    assert response.status_code == 200, response.get_json()
    assert [s["source"] for s in response.get_json()["sources"]] == ["docs/Policies/refund-policy.md"]
    # Naming only the context still searches the context's memory.component (CustomerDocs).
    context_only = {k: v for k, v in SEARCH_BODY.items() if k not in ("component", "prompt_file")}
    sources = chat(client, context_only).get_json()["sources"]
    assert sources and all(s["source"].startswith("docs/CustomerDocs/") for s in sources)

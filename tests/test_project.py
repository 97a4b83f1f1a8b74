"""`ctx init`, `ctx generate context` and `ctx lock`: a project that serves at once, and pinned sources."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import TOKEN, run

from app import create_app
from app.config import Settings
from app.lock import LOCK_FILE, ProjectLock


def serve(root: Path, **settings: object):
    return create_app(Settings(project_root=root, **settings)).test_client()  # type: ignore[arg-type]


@pytest.mark.parametrize(("template", "name"), [("support", "SupportBot"), ("rag", "DocsBot"), ("agent", "Agent")])
def test_init_makes_a_project_that_passes_its_cases_and_serves_both_apis_at_once(tmp_path, template, name):
    root = tmp_path / "mine"
    made = run("init", str(root), "--template", template)
    assert made.returncode == 0, made.stderr
    commands = [line.strip() for line in made.stdout.splitlines() if line.startswith("  ")]
    assert commands[0] == f"cd {root}"
    assert [command.split(" ", 2)[2] for command in commands[1:4]] == [
        "test",
        f"memory ingest --component {name} docs/{name}",
        "serve --addr :8000",
    ]
    assert (root / ".env.example").read_text().startswith("# Copy to .env")
    assert (root / "docs" / name / "getting-started.md").is_file()
    tested = run("test", "--root", str(root))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 cases: 3 passed, 0 failed, 0 errors, 0 skipped" in tested.stdout
    ingested = run("memory", "ingest", "--root", str(root), "--component", name, str(root / "docs" / name))
    assert ingested.returncode == 0, ingested.stderr

    client = serve(root)
    assert client.get("/readyz").status_code == 200
    assert [model["id"] for model in client.get("/v1/models").get_json()["data"]] == [name]
    native = client.post("/api/v1/chat", json={"context": name, "data": {"user_input": "How do I get started?"}})
    assert native.status_code == 200, native.get_json()
    assert "How do I get started?" in native.get_json()["rendered"]
    asked = {"model": name, "messages": [{"role": "user", "content": "How do I get started?"}]}
    openai = client.post("/v1/chat/completions", json=asked)
    assert openai.status_code == 200, openai.get_json()
    answer = openai.get_json()["choices"][0]["message"]["content"]
    # The language variable has a default; the question found the ingested document.
    assert "Answer in the language of the question." in answer and "getting-started.md" in answer


def test_init_never_overwrites_and_generate_adds_a_context_to_a_project(tmp_path):
    root = tmp_path / "mine"
    assert run("init", str(root)).returncode == 0
    prompt = root / "prompts" / "SupportBot" / "agent_response.md"
    prompt.write_text("mine\n")
    again = run("init", str(root))
    assert again.returncode == 1
    assert "already has contexts/SupportBot/supportbot.ctx" in again.stderr
    assert "`ctx generate context NAME` adds a context to a project" in again.stderr
    assert prompt.read_text() == "mine\n"

    added = run("generate", "context", "Billing", "--template", "rag", "--root", str(root))
    assert added.returncode == 0, added.stderr
    assert "test --context Billing" in added.stdout
    (hint,) = [line for line in added.stdout.splitlines() if line.startswith("next: ")]
    argv = shlex.split(hint)
    followed = run(*argv[argv.index("test") :])  # the next command, run from where `generate` was run
    assert followed.returncode == 0, followed.stderr
    assert "Billing/renders-the-question" in followed.stdout
    assert (root / "contexts" / "Billing" / "billing.ctx").is_file()
    assert run("generate", "context", "Billing", "--root", str(root)).returncode == 1
    validate = run("context", "validate", "--root", str(root))
    assert "2 contexts valid" in validate.stdout, validate.stderr
    bad = run("generate", "context", "no/slash", "--root", str(root))
    assert bad.returncode == 2 and "is not a context name" in bad.stderr
    nowhere = run("generate", "context", "Billing", "--root", str(tmp_path / "empty"))
    assert nowhere.returncode == 2
    assert "pass --root (or set CMP_PROJECT_ROOT), or start one with `ctx init DIR`" in nowhere.stderr


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def test_init_writes_a_gitignore_so_git_keeps_the_state_secrets_and_memory_databases_out(tmp_path):
    root = tmp_path / "mine"
    made = run("init", str(root))
    assert made.returncode == 0, made.stderr
    assert ".gitignore" in made.stdout and made.stderr == ""
    (root / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    docs = str(root / "docs" / "SupportBot")
    assert run("memory", "ingest", "--root", str(root), "--component", "SupportBot", docs).returncode == 0
    stored = serve(root).post("/v1/responses", json={"model": "SupportBot", "input": "hi"})
    assert stored.status_code == 200
    assert (root / ".contexis" / "responses.db").is_file() and (root / "memory" / "SupportBot" / "memory.db").is_file()
    git(root, "init", "-q")
    git(root, "add", "-A")
    assert git(root, "ls-files").split() == [
        ".env.example",
        ".gitignore",
        "contexts/SupportBot/supportbot.ctx",
        "docs/SupportBot/getting-started.md",
        "memory/SupportBot/memory_config.yaml",
        "prompts/SupportBot/agent_response.md",
    ]


@pytest.mark.parametrize(
    ("mine", "warned"), [("node_modules/\n/.contexis\n", "; add .env to it, or git"), (".contexis/\n.env\n", None)]
)
def test_init_keeps_a_gitignore_already_there_and_names_what_it_lacks(tmp_path, mine, warned):
    root = tmp_path / "repo"
    root.mkdir()
    (root / ".gitignore").write_text(mine)
    made = run("init", str(root))
    assert made.returncode == 0, made.stderr
    assert (root / ".gitignore").read_text() == mine
    assert ".gitignore" not in made.stdout.splitlines()[0]
    if warned:
        assert warned in made.stderr
    else:
        assert made.stderr == ""


def test_lock_records_every_source_and_check_names_what_changed(tmp_path):
    root = tmp_path / "mine"
    run("init", str(root))
    assert run("memory", "ingest", "--root", str(root), "--component", "SupportBot", str(root / "docs")).returncode == 0
    wrote = run("lock", "--root", str(root))
    assert wrote.returncode == 0, wrote.stderr
    document = json.loads((root / LOCK_FILE).read_text())
    assert sorted(document["files"]) == [
        "contexts/SupportBot/supportbot.ctx",
        "docs/SupportBot/getting-started.md",
        "memory/SupportBot/memory_config.yaml",  # the database ingest built is data, not a source
        "prompts/SupportBot/agent_response.md",
    ]
    assert document["runtime"] and document["hash"] == ProjectLock(root).current().hash
    assert run("lock", "--check", "--root", str(root)).returncode == 0

    (root / "prompts" / "SupportBot" / "agent_response.md").write_text("changed {{ user_input }}\n")
    (root / "docs" / "SupportBot" / "new.md").write_text("# New\n")
    (root / "docs" / "SupportBot" / "getting-started.md").unlink()
    check = run("lock", "--check", "--root", str(root))
    assert check.returncode == 1
    assert check.stderr.splitlines()[1:4] == [
        "ctx:   added: docs/SupportBot/new.md",
        "ctx:   changed: prompts/SupportBot/agent_response.md",
        "ctx:   removed: docs/SupportBot/getting-started.md",
    ]
    missing = run("lock", "--check", "--root", str(tmp_path / "mine2"))
    assert missing.returncode == 2 and "pass --root" in missing.stderr


def test_locked_server_is_not_ready_while_the_project_differs_and_names_its_lock(tmp_path, spans):
    root = tmp_path / "mine"
    run("init", str(root))
    unlocked = serve(root, locked=True).get("/readyz")
    assert unlocked.status_code == 503
    assert f"no {LOCK_FILE}" in unlocked.get_json()["reason"]
    lock = ProjectLock(root).write()

    client = serve(root, locked=True)
    assert client.get("/readyz").status_code == 200
    assert client.get("/version").get_json()["lock"] == lock.hash
    client.post("/v1/chat/completions", json={"model": "SupportBot", "messages": [{"role": "user", "content": "hi"}]})
    finished = spans.get_finished_spans()
    request_span = next(span for span in finished if span.attributes.get("http.route") == "/v1/chat/completions")
    assert request_span.attributes["contexis.lock"] == lock.hash

    (root / "contexts" / "SupportBot" / "supportbot.ctx").write_text(
        (root / "contexts" / "SupportBot" / "supportbot.ctx").read_text().replace("temperature: 0.3", "temperature: 1")
    )
    drifted = client.get("/readyz")
    assert drifted.status_code == 503
    reason = drifted.get_json()["reason"]
    assert f"does not match {LOCK_FILE} (changed: contexts/SupportBot/supportbot.ctx)" in reason
    # Without CMP_LOCKED the lock is information only.
    assert serve(root).get("/readyz").status_code == 200
    assert serve(tmp_path).get("/version").get_json()["lock"] is None


def test_baselines_record_the_lock_of_the_sources_that_answered(tmp_path):
    root = tmp_path / "mine"
    run("init", str(root))
    assert run("test", "--root", str(root), "--update-baseline").returncode == 0
    baseline = json.loads((root / "tests" / "baselines" / "SupportBot.json").read_text())
    recorded = ProjectLock(root).current().hash
    assert baseline["lock"] == recorded
    same = run("test", "--root", str(root), "--drift")
    assert same.returncode == 0 and "sources changed" not in same.stdout, same.stdout + same.stderr
    prompt = root / "prompts" / "SupportBot" / "agent_response.md"
    prompt.write_text(prompt.read_text().replace("Assistant:", "Answer:"))
    drifted = run("test", "--root", str(root), "--drift")
    now = ProjectLock(root).current().hash
    assert f"sources changed since the baseline: SupportBot: baseline recorded with sources {recorded}, now {now}" in (
        drifted.stdout
    )

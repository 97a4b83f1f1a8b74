"""One rule for context files: what `ctx context validate` accepts, the server serves, `ctx test` runs."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

from helpers import run

from app import create_app
from app.config import Settings


def add_context(project: Path, folder: str, file: str, name: str) -> None:
    """A copy of SupportBot (with its prompt) as `contexts/<folder>/<file>` with `name: <name>`."""
    text = (project / "contexts" / "SupportBot" / "supportbot.ctx").read_text()
    (project / "contexts" / folder).mkdir(exist_ok=True)
    (project / "contexts" / folder / file).write_text(
        text.replace("name: SupportBot", f"name: {name}", 1).replace("You are SupportBot", f"You are {name}")
    )
    shutil.copytree(project / "prompts" / "SupportBot", project / "prompts" / folder, dirs_exist_ok=True)


def served(settings: Settings, name: str) -> tuple[int, int, list[str], int]:
    """(native chat status, OpenAI chat status, /v1/models ids, /readyz status) for context `name`."""
    client = create_app(settings).test_client()
    native = client.post("/api/v1/chat", json={"context": name, "data": {"user_input": "hi"}})
    openai = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    models = [model["id"] for model in client.get("/v1/models").get_json()["data"]]
    return native.status_code, openai.status_code, models, client.get("/readyz").status_code


def test_a_folder_spelt_in_capitals_with_its_file_spelt_alike_is_validated_served_listed_and_tested(project, settings):
    add_context(project, "T4", "T4.ctx", "T4")
    validate = run("context", "validate", "--root", str(project))
    assert validate.returncode == 0, validate.stderr
    assert "2 contexts valid" in validate.stdout
    assert served(settings, "T4") == (200, 200, ["SupportBot", "T4"], 200)
    tested = run("test", "--root", str(project), "--context", "T4")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "T4" in tested.stdout and "greeting-prompt" in tested.stdout


def test_a_name_other_than_the_folder_is_an_error_everywhere_and_the_other_name_is_not_served(project, settings):
    add_context(project, "T5", "t5.ctx", "Other")
    validate = run("context", "validate", "--root", str(project))
    assert validate.returncode == 1
    assert "contexts/T5/t5.ctx: name: 'Other' must equal its folder's name 'T5'" in validate.stderr
    native, openai, models, ready = served(settings, "T5")
    assert (native, openai, models, ready) == (500, 500, ["SupportBot"], 503)
    assert served(settings, "Other")[:2] == (404, 404)
    tested = run("test", "--root", str(project), "--context", "T5")
    assert tested.returncode == 2
    assert "must equal its folder's name 'T5'" in tested.stderr


def test_a_file_the_server_would_not_serve_is_a_validation_error_with_the_reason(project, settings):
    add_context(project, "T6", "bot.ctx", "T6")  # not named after its folder
    (project / "contexts" / "Loose.ctx").write_text("name: Loose\n")  # not in a folder
    (project / "contexts" / "SupportBot" / "old.ctx").write_text("name: SupportBot\n")  # a second file
    (project / "contexts" / "My Bot").mkdir()
    (project / "contexts" / "My Bot" / "my bot.ctx").write_text("name: My Bot\n")  # no request can name it
    validate = run("context", "validate", "--root", str(project))
    assert validate.returncode == 1
    assert validate.stderr.splitlines() == [
        "contexts/Loose.ctx: not served: a context lives in a folder of its name: contexts/Loose/loose.ctx",
        "contexts/My Bot/my bot.ctx: not served: folder 'My Bot' is not a context name (1-128 of A-Z a-z 0-9 _ . -)",
        "contexts/SupportBot/old.ctx: not served: folder 'SupportBot' serves supportbot.ctx: one context per "
        "folder (extend or include the rest)",
        "contexts/T6/bot.ctx: not served: folder 'T6' serves t6.ctx, which does not exist",
    ]
    assert served(settings, "T6") == (404, 404, ["SupportBot"], 503)


def test_a_ctx_file_a_served_context_extends_is_no_fault(project):
    base = project / "contexts" / "SupportBot" / "supportbot.ctx"
    (project / "contexts" / "SupportBot" / "base.ctx").write_text(base.read_text())
    base.write_text("name: SupportBot\nextends: base.ctx\n")
    validate = run("context", "validate", "--root", str(project))
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout.startswith("1 context valid in ")


def test_a_tenant_file_names_its_context_by_its_file_name(project, settings):
    tenant = project / "contexts" / "tenants" / "acme"
    tenant.mkdir(parents=True)
    (tenant / "SupportBot.ctx").write_text("extends: ../../SupportBot/supportbot.ctx\nname: Billing\n")
    validate = run("context", "validate", "--root", str(project))
    assert validate.returncode == 1
    assert "contexts/tenants/acme/SupportBot.ctx: name: 'Billing' must equal its file's name 'SupportBot'" in (
        validate.stderr
    )


def test_a_context_removed_while_the_server_lists_or_reads_it_is_gone_not_a_500(project, settings):
    """Discovery lists the folders, then each one's files, then reads, checks and stats them: a folder or file
    removed meanwhile (a deploy, an editor's rename) is simply not there, for `/readyz` and `/v1/models` alike."""
    app = create_app(settings)
    churned = project / "contexts" / "Churn" / "churn.ctx"
    cases = "".join(f"    - {{name: case-{n}, mode: prompt, input: hi, expect_contains: x}}\n" for n in range(300))
    text = f"name: Churn\nrole: {{persona: A context that comes and goes.}}\ntesting:\n  cases:\n{cases}"
    done = threading.Event()
    seen: Counter[tuple[str, int]] = Counter()

    def probe() -> None:
        client = app.test_client()
        while not done.is_set():
            for path in ("/readyz", "/v1/models"):
                seen[(path, client.get(path).status_code)] += 1

    probes = [threading.Thread(target=probe) for _ in range(3)]
    for thread in probes:
        thread.start()
    try:
        for _ in range(300):  # each check of the file takes a while (300 cases): it is often removed meanwhile
            churned.parent.mkdir()
            churned.write_text(text)
            shutil.rmtree(churned.parent)
    finally:
        done.set()
        for thread in probes:
            thread.join(10)
    assert set(seen) <= {("/readyz", 200), ("/readyz", 503), ("/v1/models", 200)}, seen

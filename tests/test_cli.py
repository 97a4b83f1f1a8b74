"""The `ctx` command line, run as a real subprocess like a user would."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hf import FakeHF, Reply
from helpers import MODEL, REPO, TOKEN, clean_env, run


def hf_env(url: str, **extra: str) -> dict[str, str]:
    return {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": url, **extra}


def test_test_model_prints_the_model_text():
    with FakeHF(Reply(body=[{"generated_text": "Hello back!"}])) as fake:
        result = run("hf", "test-model", "Hello from Contexis!", "--max-new-tokens", "12", env=hf_env(fake.url))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello back!\n"
    sent = fake.seen[0].body
    assert sent == {
        "inputs": "Hello from Contexis!",
        "parameters": {"max_new_tokens": 12, "temperature": 0.7, "top_p": 0.95, "return_full_text": False},
    }
    assert fake.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_console_script_is_the_same_entry_point():
    ctx = Path(sys.executable).parent / "ctx"
    if not ctx.exists():
        pytest.fail("the ctx console script is not installed in this environment")
    with FakeHF(Reply(body={"generated_text": "via ctx"})) as fake:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, **hf_env(fake.url)}
        result = subprocess.run(
            [str(ctx), "hf", "test-model", "hi"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via ctx\n"


@pytest.mark.parametrize(
    ("env", "missing"),
    [({}, "HF_TOKEN and HF_MODEL_ID"), ({"HF_TOKEN": "x"}, "HF_MODEL_ID"), ({"HF_MODEL_ID": "m"}, "HF_TOKEN")],
)
def test_test_model_without_settings_exits_2_naming_what_is_missing(env, missing):
    result = run("hf", "test-model", "hi", env=env)
    assert result.returncode == 2
    assert f"set {missing} " in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, 'Verify HF_TOKEN scope and validity; a fine-grained token needs the "Make calls to Inference Providers"'),
        (403, 'Verify HF_TOKEN scope and validity; a fine-grained token needs the "Make calls to Inference Providers"'),
        (404, "Check HF_MODEL_ID spelling and access."),
    ],
)
def test_test_model_error_exits_1_with_the_guide_hint(status, hint):
    with FakeHF(Reply(status, {"error": f"no ({TOKEN})"})) as fake:
        result = run("hf", "test-model", "hi", env=hf_env(fake.url))
    assert result.returncode == 1
    assert hint in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_test_model_timeout_exits_1_with_the_timeout_hint():
    with FakeHF(Reply(delay=3)) as fake:
        result = run("hf", "test-model", "hi", env=hf_env(fake.url, HF_TIMEOUT="0.5"))
    assert result.returncode == 1
    assert "hf_timeout" in result.stderr
    assert "Raise HF_TIMEOUT, confirm the model is available, or try a smaller model." in result.stderr


def test_settings_come_from_dotenv_when_the_environment_lacks_them(tmp_path):
    with FakeHF(Reply(body=[{"generated_text": "from dotenv"}])) as fake:
        (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\nHF_MODEL_ID={MODEL}\nHF_ENDPOINT={fake.url}\n")
        result = run("hf", "test-model", "hi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from dotenv\n"


def test_invalid_setting_exits_2():
    result = run("hf", "test-model", "hi", env={"HF_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert "HF_TIMEOUT must be a float" in result.stderr


def test_prompt_render_prints_the_rendered_prompt():
    result = run(
        "prompt",
        "render",
        "--root",
        "examples/quickstart",
        "--context",
        "SupportBot",
        "--data",
        '{"user_input": "hello"}',
    )
    assert result.returncode == 0, result.stderr
    assert "User: hello" in result.stdout
    assert "You are SupportBot." in result.stdout


def test_prompt_render_reports_a_missing_variable():
    result = run("prompt", "render", "--root", "examples/quickstart", "--context", "SupportBot")
    assert result.returncode == 1
    assert "missing_variable" in result.stderr and "'user_input'" in result.stderr


def test_prompt_render_uses_cmp_project_root():
    result = run(
        "prompt",
        "render",
        "--context",
        "SupportBot",
        "--data",
        '{"user_input": "x"}',
        env={"CMP_PROJECT_ROOT": str(REPO / "examples" / "quickstart")},
    )
    assert result.returncode == 0, result.stderr


def test_context_validate_passes_on_the_example_and_fails_with_file_field_problem(project):
    good = run("context", "validate", "--root", str(project))
    assert good.returncode == 0, good.stderr
    assert "1 context valid" in good.stdout
    ctx = project / "contexts" / "SupportBot" / "supportbot.ctx"
    ctx.write_text(ctx.read_text().replace("max_tokens: 256", "max_tokens: lots"))
    bad = run("context", "validate", "--root", str(project))
    assert bad.returncode == 1
    assert "contexts/SupportBot/supportbot.ctx: guardrails.max_tokens: 'lots' is not of type 'integer'" in bad.stderr


def test_every_group_module_registers_its_commands_and_a_new_group_is_one_file(request, tmp_path, monkeypatch, capsys):
    import app.cli

    request.addfinalizer(lambda: sys.modules.pop("app.cli.hello", None))

    parser = app.cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"serve", "hf", "prompt", "context", "test", "memory"} <= set(commands)
    # A group is a module of app/cli with `register`: one file, nothing else edited.
    (tmp_path / "hello.py").write_text(
        "def register(commands, common):\n"
        "    hello = commands.add_parser('hello', parents=[common], help='say hello')\n"
        "    hello.set_defaults(handler=lambda args, settings: print(f'hello from {settings.project_root}') or 0)\n"
    )
    monkeypatch.setattr(app.cli, "__path__", [*app.cli.__path__, str(tmp_path)])
    monkeypatch.delenv("CMP_PROJECT_ROOT", raising=False)
    assert app.cli.main(["hello", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"hello from {tmp_path}\n"


def _parsers(parser: argparse.ArgumentParser, path: str = "ctx") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_option_of_every_command_says_what_it_is_for():
    from app.cli import build_parser

    undocumented = [
        f"{path} {action.dest}"
        for path, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    "argv",
    [("hf", "models", "org/model"), ("memory", "migrate"), ("memory", "copy", "--from", ".", "--to", "postgresql://x")],
)
def test_a_root_that_would_mean_nothing_is_refused(argv):
    result = run(*argv, "--root", "examples/quickstart")
    assert result.returncode == 2
    assert "unrecognized arguments: --root" in result.stderr


def test_a_context_not_found_says_where_the_project_was_looked_for_and_how_to_name_another():
    result = run("prompt", "render", "--context", "SupportBot", "--data", '{"user_input": "x"}')
    assert result.returncode == 1
    assert result.stderr == (
        f"ctx: context_not_found: context 'SupportBot' not found; the project root is {REPO}: pass --root DIR or "
        "set CMP_PROJECT_ROOT (`make serve` serves examples/quickstart; `ctx init DIR` starts a project)\n"
    )
    for argv in (("context", "validate"), ("test",)):
        lost = run(*argv)
        assert lost.returncode in (1, 2) and "pass --root DIR or set CMP_PROJECT_ROOT" in lost.stderr, argv
    # serve would start and be unready: it says why before it starts (here it stops at the missing config).
    served = run("serve", env={"CMP_GUNICORN_CONFIG": "file:/nonexistent.py"})
    assert served.returncode == 2
    assert served.stderr.startswith(f"ctx: warning: no contexts/ folder to serve: the project root is {REPO}: pass")


def test_memory_commands_that_would_do_nothing_fail_saying_why(project):
    root = ["--root", str(project)]
    nosuch = run("memory", "search", *root, "--component", "NoSuch", "--query", "refund")
    assert nosuch.returncode == 1
    assert "component 'NoSuch' has no memory: ingest documents with `ctx memory ingest --component NoSuch PATH`" in (
        nosuch.stderr
    )
    assert nosuch.stdout == ""
    vector = run("memory", "search", *root, "--component", "CustomerDocs", "--query", "refund", "--mode", "vector")
    assert vector.returncode == 2
    assert "--mode vector needs an embedding model: set HF_EMBED_MODEL_ID and HF_TOKEN" in vector.stderr
    (project / "only.pdf").write_bytes(b"%PDF")
    nothing = run("memory", "ingest", *root, "--component", "CustomerDocs", str(project / "only.pdf"))
    assert (
        nothing.returncode == 1 and "nothing ingested: memory takes .htm .html .jsonl .md .rst .txt" in nothing.stderr
    )
    docs = str(project / "docs" / "CustomerDocs")
    assert run("memory", "ingest", *root, "--component", "CustomerDocs", docs).returncode == 0
    absent = run("memory", "delete", *root, "--component", "CustomerDocs", "--source", "docs/none.md")
    assert absent.returncode == 1 and "nothing deleted: component 'CustomerDocs' has no document 'docs/none.md'" in (
        absent.stderr
    )
    assert "has: CustomerDocs" in run("memory", "delete", *root, "--component", "Other").stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(project):
    root = ["--root", str(project), "--component", "CustomerDocs"]
    assert run("memory", "ingest", *root, str(project / "docs" / "CustomerDocs")).returncode == 0
    read, write = os.pipe()
    os.close(read)  # `| head` that has already exited: every write is EPIPE
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "memory", "search", *root, "--query", "refund", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=clean_env(),
        )
    finally:
        os.close(write)
    assert result.returncode == 141
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr == "mode: keyword\n"


def test_ctrl_c_exits_130_without_a_traceback():
    with FakeHF(Reply(delay=30)) as fake:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "cli.py"), "hf", "test-model", "hi"],
            env=clean_env(**hf_env(fake.url)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        assert process.stderr.readline().startswith("ctx: POST ")  # the call is under way
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert (out, err) == ("", "")

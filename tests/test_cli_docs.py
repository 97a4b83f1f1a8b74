"""docs/cli.md is the parsers' own description: a changed option without its documentation fails here."""

from __future__ import annotations

import os

from helpers import REPO

from app.cli import build_parser
from app.cli.reference import MARKER, markdown

CLI_DOC = REPO / "docs" / "cli.md"


def test_the_cli_reference_is_what_the_parsers_say():
    text = CLI_DOC.read_text(encoding="utf-8")
    assert MARKER in text, f"{CLI_DOC} lost its marker line"
    written, generated = text.split(MARKER, 1)[1].lstrip("\n"), markdown(build_parser())
    if written != generated and os.environ.get("CMP_WRITE_CLI_DOCS") == "1":
        CLI_DOC.write_text(text.split(MARKER, 1)[0] + MARKER + "\n\n" + generated, encoding="utf-8")
        return
    assert written == generated, (
        "docs/cli.md differs from the parsers: CMP_WRITE_CLI_DOCS=1 pytest tests/test_cli_docs.py"
    )


def test_the_reference_names_every_command_and_option():
    text = CLI_DOC.read_text(encoding="utf-8")
    for command in ("ctx serve", "ctx init", "ctx generate context", "ctx lock", "ctx memory search", "ctx test"):
        assert f"### {command}\n" in text
    assert "| `--check` |" in text and "| `--mode` (`keyword` \\| `vector` \\| `hybrid`) |" in text

"""Context files: extends/include merging, cycles, depth, schema errors and the root boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.contexts import ContextStore, deep_merge
from app.errors import ContextInvalid, NotFound


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_deep_merge_lets_the_override_win_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3], "z": 2}}) == {"a": {"x": 1, "y": [3], "z": 2}, "b": 1}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


def test_extends_and_include_merge_with_the_including_file_winning(tmp_path):
    write(tmp_path, "contexts/base.yaml", "role:\n  persona: base\n  capabilities: [a]\nguardrails:\n  tone: calm\n")
    write(tmp_path, "contexts/shared/style.yaml", "guardrails:\n  format: bullets\n  tone: formal\n")
    write(
        tmp_path,
        "contexts/Bot/bot.ctx",
        "name: Bot\nextends: ../base.yaml\ninclude: [../shared/style.yaml]\nrole:\n  persona: mine\n",
    )
    context = ContextStore(tmp_path).resolve("Bot")
    assert context == {
        "name": "Bot",
        "role": {"persona": "mine", "capabilities": ["a"]},
        "guardrails": {"tone": "formal", "format": "bullets"},
    }


def test_cycle_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path, "contexts/Bot/bot.ctx", "name: Bot\nextends: ../a.yaml\n")
    write(tmp_path, "contexts/a.yaml", "extends: Bot/bot.ctx\n")
    with pytest.raises(ContextInvalid, match=r"cycle contexts/Bot/bot.ctx -> contexts/a.yaml -> contexts/Bot/bot.ctx"):
        ContextStore(tmp_path).resolve("Bot")


def test_depth_over_five_is_an_error_and_five_is_fine(tmp_path):
    for i in range(1, 7):
        write(tmp_path, f"contexts/l{i}.yaml", f"extends: l{i + 1}.yaml\n" if i < 6 else "description: bottom\n")
    write(tmp_path, "contexts/Ok/ok.ctx", "name: Ok\nextends: ../l2.yaml\n")  # five levels below
    write(tmp_path, "contexts/Deep/deep.ctx", "name: Deep\nextends: ../l1.yaml\n")  # six levels below
    store = ContextStore(tmp_path)
    assert store.resolve("Ok")["description"] == "bottom"
    with pytest.raises(ContextInvalid, match="deeper than 5"):
        store.resolve("Deep")


def test_references_outside_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    write(tmp_path, "outside.yaml", "description: leaked\n")
    write(root, "contexts/Bot/bot.ctx", "name: Bot\nextends: ../../../outside.yaml\n")
    with pytest.raises(ContextInvalid, match="outside the project root"):
        ContextStore(root).resolve("Bot")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: Bot\nguardrails:\n  max_tokens: -5\n", "contexts/Bot/bot.ctx: guardrails.max_tokens: -5 is less than"),
        ("name: Bot\nrole:\n  capabilities: nope\n", "contexts/Bot/bot.ctx: role.capabilities: 'nope' is not of type"),
        ("name: Bot\nguardrals: {}\n", "contexts/Bot/bot.ctx: document: Additional properties are not allowed"),
        ("description: no name\n", "contexts/Bot/bot.ctx: name: required field is missing"),
        ("name: [unclosed\n", "contexts/Bot/bot.ctx: line 2: invalid YAML"),
        ("- a list\n", "contexts/Bot/bot.ctx: document: must be a mapping"),
    ],
)
def test_schema_errors_name_the_file_and_field(tmp_path, text, expected):
    write(tmp_path, "contexts/Bot/bot.ctx", text)
    with pytest.raises(ContextInvalid) as caught:
        ContextStore(tmp_path).resolve("Bot")
    assert caught.value.message.startswith(expected)


def test_errors_in_an_extended_file_name_that_file(tmp_path):
    write(tmp_path, "contexts/base.yaml", "guardrails:\n  temperature: 9\n")
    write(tmp_path, "contexts/Bot/bot.ctx", "name: Bot\nextends: ../base.yaml\n")
    with pytest.raises(ContextInvalid, match=r"^contexts/base.yaml: guardrails.temperature"):
        ContextStore(tmp_path).resolve("Bot")


def test_unknown_context_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        ContextStore(tmp_path).resolve("Ghost")


def test_cache_is_refreshed_when_an_extended_file_changes(tmp_path):
    base = write(tmp_path, "contexts/base.yaml", "description: one\n")
    write(tmp_path, "contexts/Bot/bot.ctx", "name: Bot\nextends: ../base.yaml\n")
    store = ContextStore(tmp_path)
    assert store.resolve("Bot")["description"] == "one"
    base.write_text("description: two, longer\n")
    assert store.resolve("Bot")["description"] == "two, longer"


def test_cache_follows_a_re_pointed_symlink_and_a_deleted_file(tmp_path):
    # A ConfigMap volume swaps a `..data` symlink to a new directory: same path, new file behind it.
    write(tmp_path, "contexts/v1/bot.ctx", "name: Bot\ndescription: one\n")
    write(tmp_path, "contexts/v2/bot.ctx", "name: Bot\ndescription: one\n")
    (tmp_path / "contexts" / "Bot").symlink_to(tmp_path / "contexts" / "v1")
    store = ContextStore(tmp_path)
    assert store.resolve("Bot")["description"] == "one"
    (tmp_path / "contexts" / "v2" / "bot.ctx").write_text("name: Bot\ndescription: two\n")
    (tmp_path / "contexts" / "Bot").unlink()
    (tmp_path / "contexts" / "Bot").symlink_to(tmp_path / "contexts" / "v2")
    assert store.resolve("Bot")["description"] == "two"
    (tmp_path / "contexts" / "v2" / "bot.ctx").unlink()
    with pytest.raises(NotFound):
        store.resolve("Bot")


def test_problems_lists_every_invalid_context(tmp_path):
    write(tmp_path, "contexts/Good/good.ctx", "name: Good\n")
    write(tmp_path, "contexts/Bad/bad.ctx", "name: Bad\ntools: 3\n")
    write(tmp_path, "contexts/tenants/t1/Good.ctx", "name: Good\nversion: [1]\n")
    problems = ContextStore(tmp_path).problems()
    assert len(problems) == 2
    assert problems[0].startswith("contexts/Bad/bad.ctx: tools:")
    assert problems[1].startswith("contexts/tenants/t1/Good.ctx: version:")

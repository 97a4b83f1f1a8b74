"""What tells a prompt's text without rendering it (`PromptRenderer.version`), which the response cache keys on: the
templates' sources as compiled, the variables they read, the bound on the prompt's size; none when only the text
can tell."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from app.prompts import PromptRenderer

_STAMPS = itertools.count(1)


def write(root: Path, name: str, text: str) -> Path:
    """Write a template with an mtime later than any before it, so `auto_reload` sees every write."""
    path = root / "prompts" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = 1_700_000_000 + next(_STAMPS)
    os.utime(path, (stamp, stamp))
    return path


def version(renderer: PromptRenderer, name: str = "Bot/main.md"):
    return renderer.version(renderer.resolve(*name.split("/")))


def test_the_version_is_the_template_s_source_and_the_variables_it_reads(tmp_path):
    write(
        tmp_path,
        "Bot/main.md",
        "{% set who = 'you' %}{{ who }}: {{ user_input }} {% for r in results %}{{ r }}{% endfor %}",
    )
    renderer = PromptRenderer(tmp_path)
    first = version(renderer)
    assert first is not None and first.reads == ("results", "user_input")
    assert version(renderer) == first  # unchanged while the file is
    write(tmp_path, "Bot/main.md", "{{ user_input }}!")
    edited = version(renderer)
    assert edited is not None and edited.digest != first.digest and edited.reads == ("user_input",)
    # The same source under a smaller bound may fail where it passed: another version.
    assert version(PromptRenderer(tmp_path, max_chars=10)).digest != edited.digest


def test_a_named_template_is_part_of_the_version_and_of_what_it_reads(tmp_path):
    write(tmp_path, "Bot/main.md", '{% include "Bot/part.md" %}{% include "Bot/later.md" ignore missing %}{{ a }}')
    write(tmp_path, "Bot/part.md", "{{ b }}")
    renderer = PromptRenderer(tmp_path)
    first = version(renderer)
    assert first is not None and first.reads == ("a", "b")
    write(tmp_path, "Bot/part.md", "{{ b }} and {{ c }}")
    edited = version(renderer)
    assert edited is not None and edited.digest != first.digest and edited.reads == ("a", "b", "c")
    write(tmp_path, "Bot/later.md", "{{ d }}")  # absent until now
    created = version(renderer)
    assert created is not None and created.digest != edited.digest and "d" in created.reads


@pytest.mark.parametrize(
    "source",
    [
        "{{ [1, 2, 3] | random }}",  # another text from the same variables
        '{{ items | map("random") | list }}',
        '{{ items | map("ran" ~ "dom") | first }}',  # a filter named at render time
        "{{ items | map(pick) | first }}",
        "{{ items | map(*pick) | first }}",
        '{{ items | map("map", "ran" ~ "dom") | first }}',
        '{% set f = "RANDOM" | lower %}{{ items | map(*[f]) | first }}',
        "{% include name %}",  # a name only the render knows
        '{% include "Bot/broken.md" %}',  # a named template that does not compile
    ],
)
def test_only_the_text_tells_some_prompts(tmp_path, source):
    write(tmp_path, "Bot/main.md", source)
    write(tmp_path, "Bot/broken.md", "{% if %}")
    assert version(PromptRenderer(tmp_path)) is None


def test_what_a_template_extends_or_imports_is_part_of_its_version(tmp_path):
    write(tmp_path, "Bot/base.md", "{% block body %}{% endblock %} {{ footer }}")
    write(tmp_path, "Bot/macros.md", "{% macro shout(x) %}{{ x | upper }}{{ suffix }}{% endmacro %}")
    write(
        tmp_path,
        "Bot/main.md",
        '{% extends "Bot/base.md" %}{% import "Bot/macros.md" as m with context %}'
        "{% block body %}{{ m.shout(user_input) }}{% endblock %}",
    )
    renderer = PromptRenderer(tmp_path)
    first = version(renderer)
    assert first is not None and {"footer", "suffix", "user_input"} <= set(first.reads)
    write(tmp_path, "Bot/macros.md", "{% macro shout(x) %}{{ x | lower }}{{ suffix }}{% endmacro %}")
    assert version(renderer).digest != first.digest
    # A map by a literal filter name is as repeatable as the filter.
    write(tmp_path, "Bot/main.md", '{{ items | map("upper") | join }}')
    assert version(renderer) is not None


def test_a_partial_named_on_many_paths_is_walked_once(tmp_path):
    # Ten layers of two templates each naming both of the next: 2**10 paths, 20 templates.
    for layer in range(10):
        for side in "ab":
            names = "".join(f'{{% include "Bot/{layer + 1}{other}.md" %}}' for other in "ab") if layer < 9 else ""
            write(tmp_path, f"Bot/{layer}{side}.md", names + f"{{{{ v{layer} }}}}")
    renderer = PromptRenderer(tmp_path)
    renderer.env.get_template("Bot/0a.md")
    calls = 0
    get_template = renderer.env.get_template

    def counted(name):
        nonlocal calls
        calls += 1
        return get_template(name)

    renderer.env.get_template = counted
    found = renderer.version(renderer.resolve("Bot", "0a.md"))
    assert calls <= 20 and found is not None and found.reads == tuple(sorted(f"v{n}" for n in range(10)))


def test_templates_that_name_each_other_have_no_version(tmp_path):
    write(tmp_path, "Bot/main.md", '{% include "Bot/main.md" %}')
    assert version(PromptRenderer(tmp_path)) is None

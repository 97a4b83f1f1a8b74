"""Installs that work everywhere: the service installed as the image and a user install it, then served.

These are the slow tests (marker `install`, about a minute each: `pytest -m "not install"` leaves them
out). Each builds a clean venv holding the pip of the base image (python:3.11-slim ships pip 24.0),
installs the service, then starts the installed `ctx serve` outside the repository and checks it is
the configured server: gthread workers, /metrics counting every worker's requests, the guide's curl.

- the image: deploy/Dockerfile's build steps, read from the file and run here in order (no Docker
  daemon: absolute paths land under a temporary root), then the runtime stage's ENV and ENTRYPOINT;
- the wheel: `python -m build` (as `make dist`) and `twine check`, then the same steps with the
  built wheel as what is installed;
- `pip install .` with pip 24.0, resolving from setup.cfg alone, served from `/`.

New packages come from PyPI; pip's own cache (.cache/pip, git-ignored) is used where the Dockerfile
does not turn it off.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import dockerfile_model
import pytest
import requests
from dockerfile_model import ROOT, Stage, dockerignore_excludes
from helpers import GUIDE_BODY, free_port

pytestmark = pytest.mark.install

BASE_IMAGE_PIP = "24.0"  # python:3.11-slim's pip, and what its ensurepip puts in a new venv
CACHE = ROOT / ".cache" / "pip"
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
INSTALL_TIMEOUT = 600


def outside_env(**extra: str) -> dict[str, str]:
    """The host environment without anything that would point a process at this checkout or its venv."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "WEB_CONCURRENCY")
    prefixes = ("HF_", "CMP_", "PROMETHEUS_", "GUNICORN_", "OTEL_", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(prefixes)}
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


def sh(command: str | list[str], *, cwd: Path | str, env: dict[str, str]) -> str:
    result = subprocess.run(
        command,
        shell=isinstance(command, str),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n{output[-6000:]}"
    return output


def use_base_image_pip(venv: Path) -> None:
    """A new venv holds the pip its Python bundles: 24.0 in python:3.11-slim, maybe another here."""
    python = venv / "bin" / "python"
    version = sh([str(python), "-m", "pip", "--version"], cwd="/", env=outside_env()).split()[1]
    if version != BASE_IMAGE_PIP:
        env = {k: v for k, v in outside_env().items() if k != "PIP_NO_CACHE_DIR"}
        sh([str(python), "-m", "pip", "install", "--quiet", "--cache-dir", str(CACHE), f"pip=={BASE_IMAGE_PIP}"],
           cwd="/", env=env)  # fmt: skip
    assert sh([str(python), "-m", "pip", "--version"], cwd="/", env=outside_env()).split()[1] == BASE_IMAGE_PIP


def source_tree(destination: Path) -> Path:
    """What a fresh clone holds (tracked files, plus new ones not ignored), as of this working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


class Rootfs:
    """The image's filesystem under a temporary directory: every absolute path of the Dockerfile lands here."""

    PATH_RE = re.compile(r"(?<![\w.$/-])/[\w./-]*")

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def map(self, text: str) -> str:
        return self.PATH_RE.sub(lambda match: str(self.path(match.group(0))), text)


def copy_from_context(sources: list[str], destination: Path) -> None:
    """COPY from the build context (the repository), leaving out what .dockerignore keeps out of it."""
    patterns = dockerfile_model.ignore_patterns()
    for source in sources:
        origin = ROOT / source
        assert not dockerignore_excludes(source.rstrip("/"), patterns), f"{source} is not in the build context"
        if origin.is_dir():
            for file in sorted(origin.rglob("*")):
                relative = file.relative_to(ROOT).as_posix()
                if file.is_file() and not dockerignore_excludes(relative, patterns):
                    target = destination / file.relative_to(origin)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
        else:
            target = destination / origin.name if destination.is_dir() else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


def apply_env(stage_args: str, env: dict[str, str], rootfs: Rootfs) -> None:
    for pair in shlex.split(stage_args):
        key, _, value = pair.partition("=")
        value = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), rootfs.map(value))
        env[key] = value


def run_build_stage(stage: Stage, rootfs: Rootfs, project: Path | None = None) -> list[str]:
    """The stage's instructions in order, as `docker build` would run them; `project` replaces `.` as
    what the service's own `pip install --no-deps` installs (the wheel test). Returns the RUN lines."""
    base_bin = rootfs.root.parent / "base-image-bin"  # the image's `python` on PATH
    base_bin.mkdir(exist_ok=True)
    for name in ("python", "python3"):
        if not (base_bin / name).exists():
            (base_bin / name).symlink_to(BASE_PYTHON)
    env = outside_env(PATH=f"{base_bin}{os.pathsep}{outside_env()['PATH']}")
    workdir = rootfs.path("/")
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[str] = []
    for keyword, args in stage.instructions:
        if keyword == "ENV":
            apply_env(args, env, rootfs)
        elif keyword == "WORKDIR":
            workdir = rootfs.path(args) if args.startswith("/") else workdir / args
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, destination = args.split()
            assert not sources[0].startswith("--"), f"COPY flags are not emulated: {args}"
            target = rootfs.path(destination) if destination.startswith("/") else workdir / destination
            if destination.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            copy_from_context(sources, target)
        elif keyword == "RUN":
            command = rootfs.map(args)
            if project is not None:
                command = re.sub(r"(pip install [^&;|]*--no-deps) \.(?=\s|$)", rf"\1 {project}", command)
            sh(command, cwd=workdir, env=env)
            venv = re.fullmatch(r"python3? -m venv (\S+)", args.strip())
            if venv:
                use_base_image_pip(rootfs.path(venv.group(1)))
            runs.append(command)
        else:
            assert keyword in {"ARG", "LABEL", "SHELL"}, f"{keyword} is not emulated in a build stage"
    return runs


def runtime_command(runtime: Stage, build: Stage, rootfs: Rootfs) -> tuple[list[str], dict[str, str], Path]:
    """The runtime stage's files, environment and command (ENTRYPOINT + CMD), on the same root."""
    env = outside_env()
    workdir = rootfs.path("/")
    for keyword, args in runtime.instructions:
        if keyword == "ENV":
            apply_env(args, env, rootfs)
        elif keyword == "WORKDIR":
            workdir = rootfs.path(args)
        elif keyword == "COPY":
            words = args.split()
            if words[0] == f"--from={build.name}":
                assert words[1] == words[2], "the build's files stay at the same path"
                assert rootfs.path(words[1]).exists()
            else:
                target = rootfs.path(words[-1])
                target.mkdir(parents=True, exist_ok=True)
                copy_from_context(words[:-1], target)
        elif keyword == "RUN":
            assert args.startswith("groupadd "), f"only the user is made in the runtime stage: {args}"
    entrypoint = json.loads(runtime.all("ENTRYPOINT")[-1])
    cmd = json.loads(runtime.all("CMD")[-1])
    executable = shutil.which(entrypoint[0], path=env["PATH"])
    assert executable and executable.startswith(str(rootfs.root)), f"{entrypoint[0]} is not the installed one"
    return [executable, *entrypoint[1:], *cmd], env, workdir


def serve_and_check(
    command: list[str], *, env: dict[str, str], cwd: Path | str, metrics_dir: Path, playground: bool = False
) -> str:
    """Start the installed server with its own settings (2 gthread workers by default), check what the
    issue asks of it (with `playground`, the page's files from the installed package), stop it with SIGTERM,
    and return its log."""
    port = free_port()
    if "--addr" in command:
        command = list(command)
        command[command.index("--addr") + 1] = f"127.0.0.1:{port}"
    else:
        command = [*command, "--addr", f"127.0.0.1:{port}"]
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"ctx serve exited {proc.returncode}:\n{proc.stdout.read()}"
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, "ctx serve did not become ready"
            time.sleep(0.2)
        # The guide's curl.
        response = requests.post(f"{url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
        assert response.status_code == 200, response.text
        assert "User: hello" in response.json()["rendered"]
        for path in ("/playground", "/playground/playground.js", "/playground/playground.css") if playground else ():
            assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path
        n = 1
        # Fresh connections let either worker answer; go on until both have (bounded).
        writers: set[str] = set()
        while (len(writers) < 2 and n < 400) or n < 20:
            assert requests.post(f"{url}/api/v1/chat", json=GUIDE_BODY, timeout=30).status_code == 200
            n += 1
            writers = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("histogram_*.db")}
        assert len(writers) == 2, "both workers should have answered some requests"
        for _ in range(4):  # whichever worker answers the scrape counts every worker's requests
            text = requests.get(f"{url}/metrics", timeout=30).text
            match = re.search(r'cmp_prompt_render_duration_seconds_count\{component="SupportBot"\} (\S+)', text)
            assert match and float(match.group(1)) == n, text[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "Using worker: app.gunicorn_worker.HeaderTimeoutWorker" in output, output
    assert output.count("Booting worker") == 2, output
    return output


def assert_runs_installed_code(venv: Path) -> None:
    """From outside the repository, the code is the venv's: nothing of this checkout on the path."""
    out = sh([str(venv / "bin" / "python"), "-c", "import app, cli, app.gunicorn_conf as c; print(c.__file__)"],
             cwd="/", env=outside_env(PROMETHEUS_MULTIPROC_DIR=str(venv.parent / "m")))  # fmt: skip
    assert out.strip().startswith(str(venv)), out


def test_the_dockerfile_install_steps_from_the_base_image_pip_then_serve(tmp_path: Path) -> None:
    build, runtime = dockerfile_model.stages()[0], dockerfile_model.stages()[-1]
    rootfs = Rootfs(tmp_path / "rootfs")
    runs = run_build_stage(build, rootfs)
    assert any("--require-hashes" in run for run in runs)
    venv = rootfs.path("/opt/venv")
    assert_runs_installed_code(venv)
    command, env, workdir = runtime_command(runtime, build, rootfs)
    assert command[1:] == ["serve", "--addr", ":8000"]
    assert Path(env["CMP_PROJECT_ROOT"]).joinpath("contexts").is_dir()
    serve_and_check(command, env=env, cwd=workdir, metrics_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"]))


def test_the_built_wheel_installed_the_same_way_serves_alike(tmp_path: Path) -> None:
    clone = source_tree(tmp_path / "clone")
    dist = tmp_path / "dist"
    # As `make dist`: sdist and wheel (the wheel built from the sdist), then twine's check.
    sh([sys.executable, "-m", "build", "--outdir", str(dist), str(clone)], cwd=tmp_path,
       env=outside_env(PIP_CACHE_DIR=str(CACHE)))  # fmt: skip
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert len(sdists) == len(wheels) == 1
    twine = Path(sys.executable).with_name("twine")
    sh([str(twine), "check", "--strict", *map(str, sdists + wheels)], cwd=tmp_path, env=outside_env())
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    shipped = [*(ROOT / "app").rglob("*.py"), *(ROOT / "app" / "web" / "static").iterdir()]  # the page's too
    expected = {"cli.py", "wsgi.py", "app/gunicorn_conf.py"} | {path.relative_to(ROOT).as_posix() for path in shipped}
    assert expected <= names, sorted(expected - names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "ctx = cli:main" in zipfile.ZipFile(wheels[0]).read(entry_points).decode()

    build, runtime = dockerfile_model.stages()[0], dockerfile_model.stages()[-1]
    rootfs = Rootfs(tmp_path / "rootfs")
    runs = run_build_stage(build, rootfs, project=wheels[0])
    assert any(str(wheels[0]) in run for run in runs), "the Dockerfile's service install step was not found"
    venv = rootfs.path("/opt/venv")
    assert_runs_installed_code(venv)
    command, env, _ = runtime_command(runtime, build, rootfs)  # started from / this time
    metrics = tmp_path / "metrics"
    serve_and_check(command, env={**env, "CMP_PLAYGROUND": "true"}, cwd="/", metrics_dir=metrics, playground=True)


def test_pip_install_dot_with_pip_24_then_serve_from_the_root_directory(tmp_path: Path) -> None:
    clone = source_tree(tmp_path / "clone")
    venv = tmp_path / "venv"
    sh([str(BASE_PYTHON), "-m", "venv", str(venv)], cwd="/", env=outside_env())
    use_base_image_pip(venv)
    # setup.cfg alone, resolved by pip 24.0 (no lock): the ranges must resolve with old pips too.
    sh([str(venv / "bin" / "pip"), "install", "--cache-dir", str(CACHE), str(clone)], cwd="/", env=outside_env())
    assert_runs_installed_code(venv)
    serve_and_check(
        [str(venv / "bin" / "ctx"), "serve", "--root", str(clone / "examples" / "quickstart")],
        env=outside_env(),
        cwd="/",
        metrics_dir=tmp_path / "metrics",
    )

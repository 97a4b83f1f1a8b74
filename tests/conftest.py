"""Shared fixtures: a copy of the example project, apps built on it, captured spans, and both memory backends."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fake_hf import FakeHF, Reply, Stream, feature_extraction
from flask import Flask
from helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ENDPOINT,
    EXAMPLE,
    MODEL,
    TOKEN,
    LiveApp,
    McpProcess,
    Postgres,
    Redis,
    mcp1_python,
)
from helpers_cache import enable_cache, numbered
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import create_app
from app.config import Settings
from app.memory import Memory, open_memory
from app.observability import access_log

_SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_SPANS))
trace.set_tracer_provider(_provider)
# The access log's writer thread would write a test's lines on its own schedule, which can fall between the test
# and its teardown, when pytest has stopped capturing: they would land among the progress dots. Tests write them
# when they ask (`helpers.access_lines`) or at teardown (below), while output is still captured.
access_log.interval = 24 * 3600


@pytest.fixture(autouse=True)
def _access_lines_stay_with_their_test() -> Iterator[None]:
    """Write a test's queued access lines while its output is still captured, not into the next one's."""
    yield
    access_log.flush()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _SPANS.clear()
    return _SPANS


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A writable copy of the bundled example project."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    return root


@pytest.fixture
def settings(project: Path) -> Settings:
    """Settings for the project, with no model configured (the environment is ignored)."""
    return Settings.from_env({"CMP_PROJECT_ROOT": str(project)}, dotenv_path=None)


@pytest.fixture
def hf_settings(settings: Settings) -> Settings:
    return settings.replace(hf_token=TOKEN, hf_model_id=MODEL, hf_endpoint=ENDPOINT, hf_backoff_factor=0)


@pytest.fixture
def client(settings: Settings):
    return create_app(settings).test_client()


@pytest.fixture
def serve(hf_settings: Settings) -> Iterator[Callable[..., tuple[FakeHF, LiveApp, Flask]]]:
    """Start a fake chat model with `replies` and the app in front of it: returns (fake, live app, app)."""
    stack = ExitStack()

    def start(*replies: Reply | Stream, **changes: Any) -> tuple[FakeHF, LiveApp, Flask]:
        fake = stack.enter_context(FakeHF(*replies))
        app = create_app(hf_settings.replace(hf_endpoint=f"{fake.url}/v1", **changes))
        return fake, stack.enter_context(LiveApp(app)), app

    yield start
    stack.close()


@pytest.fixture
def cached(hf_settings: Settings, project: Path) -> Iterator[Callable[..., tuple[FakeHF, Flask]]]:
    """An app with the response cache on for SupportBot (`section` adds to its `cache:`), in front of a fake chat
    model (`numbered()` unless `replies` are given) and, with `embed=True`, the embedder stand-in."""
    stack = ExitStack()

    def start(*replies: Reply | Stream, embed: bool = False, **changes: Any) -> tuple[FakeHF, Flask]:
        enable_cache(project, **changes.pop("section", {}))
        model = stack.enter_context(FakeHF(*(replies or (numbered(),))))
        settings = hf_settings.replace(hf_endpoint=f"{model.url}/v1", **changes)
        if embed:
            embedder = stack.enter_context(FakeHF(Reply(body=feature_extraction)))
            settings = settings.replace(hf_embed_model_id="fake/embedder", hf_embed_endpoint=embedder.url)
        return model, create_app(settings)

    yield start
    stack.close()


@pytest.fixture
def hf_app(hf_settings: Settings):
    return create_app(hf_settings)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session, its schema migrated by the runtime's own migration."""
    from app.memory.postgres import PostgresMemory

    server = Postgres()
    try:
        PostgresMemory(Settings(memory_url=server.url)).migrate()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def memory_url(request: pytest.FixtureRequest) -> str:
    """CMP_MEMORY_URL of each backend: "" (SQLite files under the root), then an emptied PostgreSQL."""
    if request.param == "sqlite":
        return ""
    server: Postgres = request.getfixturevalue("postgres")
    server.reset()
    return server.url


@pytest.fixture
def memory_at(memory_url: str) -> Callable[[Path], Memory]:
    """The memory of a project root, on the backend under test."""
    return lambda root: open_memory(Settings(project_root=root, memory_url=memory_url))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A throwaway Debian redis-server on a free port (stopped, and resumed if paused, at the end)."""
    server = Redis(str(tmp_path))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["mcp-2", "mcp-1"])
def mcp_server(request: pytest.FixtureRequest) -> Iterator[McpProcess]:
    """A real MCP server (tests/mcp_server.py) on each SDK major: the venv's 2.x, and 1.x as servers in the field
    run (a venv built once from PyPI; skipped only when it cannot be built)."""
    python = sys.executable
    if request.param == "mcp-1":
        python = mcp1_python() or ""
        if not python:
            pytest.skip("the mcp<2 venv (.venv-mcp1) cannot be built: no package index reachable")
    server = McpProcess(python)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium under Playwright, with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield context
        context.close()

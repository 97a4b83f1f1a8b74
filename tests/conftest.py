"""Shared fixtures: a copy of the example project, apps built on it, and captured spans."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import ENDPOINT, EXAMPLE, MODEL, TOKEN
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import create_app
from app.config import Settings

_SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_SPANS))
trace.set_tracer_provider(_provider)


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
def hf_app(hf_settings: Settings):
    return create_app(hf_settings)

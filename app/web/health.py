"""Operational routes: liveness, readiness and version, for probes and humans."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask import Blueprint, jsonify

from app.web import get_runtime

bp = Blueprint("health", __name__)


def runtime_version() -> str:
    try:
        return version("contexis-runtime")
    except PackageNotFoundError:
        return "0+unknown"


@bp.get("/healthz")
def healthz():
    """Alive: the process answers. Checks no dependency, so a slow model never restarts pods."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready: the project root is readable, every context in it is valid and memory answers."""
    problems = get_runtime().problems()
    if problems:
        return jsonify(status="unavailable", reason="; ".join(problems)), 503
    return jsonify(status="ok")


@bp.get("/version")
def version_info():
    """What is running; never the token."""
    runtime = get_runtime()
    return jsonify(
        name="contexis-runtime",
        version=runtime_version(),
        model=runtime.provider.model_id if runtime.provider else None,
        hf_endpoint=runtime.settings.hf_endpoint if runtime.provider else None,
    )

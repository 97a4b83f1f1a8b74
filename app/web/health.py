"""Operational routes: liveness, readiness and version, for probes and humans."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.config import public_url
from app.lock import runtime_version
from app.web import get_runtime

bp = Blueprint("health", __name__)


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
    """What is running and where model calls go (the endpoint actually used, after a retired one moved); never
    the token, nor credentials written into HF_ENDPOINT."""
    runtime = get_runtime()
    provider = runtime.provider
    return jsonify(
        name="contexis-runtime",
        version=runtime_version(),
        model=provider.model_id if provider else None,
        hf_endpoint=runtime.settings.hf_endpoint_public if provider else None,
        hf_api=runtime.settings.hf_wire_api if provider else None,
        hf_url=public_url(provider.url) if provider else None,
        # The hash of the project's context.lock.json when the server started (null without one).
        lock=runtime.lock.started_hash,
    )

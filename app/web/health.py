"""Operational routes: liveness, readiness and version, for probes and humans."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flask import Blueprint, jsonify

from app.config import public_url
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
    """What is running and where model calls go (the endpoint actually used, after a retired one moved; each
    context's models in the order they are tried); never the token, nor credentials written into an endpoint."""
    runtime = get_runtime()
    provider = runtime.provider
    return jsonify(
        name="contexis-runtime",
        version=runtime_version(),
        model=provider.model_id if provider else None,
        hf_endpoint=runtime.settings.hf_endpoint_public if provider else None,
        hf_api=runtime.settings.hf_wire_api if provider else None,
        hf_url=public_url(provider.url) if provider else None,
        chains=runtime.chains(),
    )

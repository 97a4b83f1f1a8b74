"""Operational routes: liveness, readiness and version, for probes and humans."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from app.config import public_url
from app.keys import SCOPE_METRICS
from app.lock import runtime_version
from app.web.auth import current_identity
from app.web.json import dumps_bytes
from app.web.runtime import get_runtime

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)

# The verdict /readyz last gave an anonymous caller (status, body): what gunicorn's poller repeats while
# every thread is busy (app/gunicorn_worker.py). Before the first check: not known to be ready.
_verdict: tuple[int, bytes] = (503, b'{"status":"unavailable"}')
_last_reason = ""


def last_verdict() -> tuple[int, bytes]:
    return _verdict


def _may_see_details() -> bool:
    """Why the runtime is not ready names files (tenants among them) and the database's address: with auth on,
    only a key with metrics:read is told; everyone else gets the verdict, and the reason is in the logs."""
    identity = current_identity()
    return identity is None or (identity.key is not None and SCOPE_METRICS in identity.key.scopes)


@bp.get("/healthz")
def healthz():
    """Alive: the process answers. Checks no dependency, so a slow model never restarts pods."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready: the project root is readable, every context in it is valid and memory answers."""
    global _verdict, _last_reason  # one verdict per process, read by its poller
    problems = get_runtime().problems()
    reason = "; ".join(problems)
    if reason != _last_reason:  # logged when it changes, not at every probe
        _last_reason = reason
        if reason:
            log.warning("not ready", extra={"fields": {"reason": reason}})
    status, body = (503, {"status": "unavailable"}) if problems else (200, {"status": "ok"})
    _verdict = (status, dumps_bytes(body))
    if problems and _may_see_details():
        body = {**body, "reason": reason}
    return jsonify(body), status


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
        # The hash of the project's context.lock.json when the server started (null without one).
        lock=runtime.lock.started_hash,
        chains=runtime.chains(),
    )

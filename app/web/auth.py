"""Who may call the runtime: the bearer key of each request, its tenant and its scopes.

With `CMP_AUTH_ENABLED=true` every route but the probes, `/version` and
`/openapi.json` needs `Authorization: Bearer <key>`; keys are parsed and looked up
by `app.keys`. Every denial writes one JSON audit line that names the key id,
never the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from flask import Flask, Response, current_app, g, request
from flask.globals import request_ctx

from app.config import Settings
from app.errors import AuthDenied, BadRequest
from app.keys import ANY_TENANT, SCOPE_CHAT, SCOPE_METRICS, SCOPE_TEST, SCOPE_USAGE, ApiKey, KeyStore
from app.names import NAME_RULE, is_safe_name
from app.validation import ChatRequest
from app.web.errors import error_response

# Routes anyone may call: probes must work without secrets, and the contract and version are public.
# The playground's page holds no secret: it asks for a key and sends it to the API routes (CMP_PLAYGROUND).
PUBLIC_ENDPOINTS = frozenset(
    {
        *("health.healthz", "health.readyz", "health.version_info", "openapi.document"),
        *("playground.page", "playground.script", "playground.style"),
    }
)
# Every other route needs a key; this says which scope, and chat:invoke is the default for new API routes.
ENDPOINT_SCOPES = {
    "prometheus_metrics": SCOPE_METRICS,
    "usage.usage_report": SCOPE_USAGE,
    "playground.run_context_tests": SCOPE_TEST,
}

_audit = logging.getLogger("contexis.audit")


@dataclass(frozen=True)
class Identity:
    """What the `Authorization` header of the current request proved."""

    key: ApiKey | None
    problem: str  # "" when a known key was presented, else missing_key / malformed_header / unknown_key


def _identify(store: KeyStore) -> Identity:
    header = request.headers.get("Authorization", "")
    if not header:
        return Identity(None, "missing_key")
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return Identity(None, "malformed_header")
    key = store.find(presented)
    return Identity(key, "" if key else "unknown_key")


def current_identity() -> Identity | None:
    """The current request's key check, done once; None when auth is off."""
    store: KeyStore | None = current_app.extensions.get("contexis_keys")
    if store is None:
        return None
    if "contexis_identity" not in g:
        g.contexis_identity = _identify(store)
    return g.contexis_identity


def client_identity() -> str:
    """Whom a rate limit counts: the key when a valid one came, the client address otherwise."""
    identity = current_identity()
    if identity is not None and identity.key is not None:
        return f"key:{identity.key.key_id}"
    return f"addr:{request.remote_addr or 'unknown'}"


def audit_denied(status: int, reason: str, tenant: str | None = None) -> None:
    """One JSON line per denied request: who (key id, never the key), for whom, why."""
    identity = current_identity()
    fields = {
        "event": "request_denied",
        "request_id": g.get("request_id"),
        "key_id": identity.key.key_id if identity and identity.key else None,
        "key_tenant": identity.key.tenant_id if identity and identity.key else None,
        "tenant": tenant,
        "reason": reason,
        "status": status,
        "method": request.method,
        "path": request.path,
        "client": request.remote_addr,
    }
    _audit.warning("request denied", extra={"fields": fields})


def tenant_for(requested: str) -> str:
    """The tenant a request acts for: an empty one becomes the key's own, another than the key's is 403."""
    identity = current_identity()
    if identity is None or identity.key is None:
        return requested
    key = identity.key
    if not requested and key.tenant_id != ANY_TENANT:
        return key.tenant_id
    if not key.allows_tenant(requested):
        g.contexis_denied_tenant = requested
        raise AuthDenied(f"this key may not act for tenant {requested!r}", status=403, reason="tenant_mismatch")
    return requested


def tenant_param(param: str, empty_ok: bool = True) -> str:
    """The tenant a GET acts for, from the query's `param` (`tenant_for`: the key's own when absent), logged; a
    value that is no name (nor empty, unless `empty_ok`) is a 400."""
    requested = request.args.get(param, "")
    if (requested or (not empty_ok and param in request.args)) and not is_safe_name(requested):
        raise BadRequest(f"{param}: not a valid name ({NAME_RULE})", code="invalid_request", param=param)
    tenant = tenant_for(requested)
    g.log_fields.update(tenant=tenant or None)
    return tenant


def bind_tenant(chat_request: ChatRequest) -> ChatRequest:
    """The request as its key may make it (`tenant_for`)."""
    tenant = tenant_for(chat_request.tenant_id)
    return chat_request if tenant == chat_request.tenant_id else replace(chat_request, tenant_id=tenant)


def _enforce() -> None:
    asked = request_ctx.request
    endpoint = asked.endpoint
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS or asked.method == "OPTIONS":
        return  # unrouted paths answer 404/405, which says nothing about keys
    identity = current_identity()
    if identity is None:
        return
    if identity.key is None:
        if identity.problem == "missing_key":
            raise AuthDenied(
                "an API key is required: send Authorization: Bearer <key>",
                status=401,
                reason="missing_key",
                challenge='Bearer realm="contexis"',
            )
        raise AuthDenied(
            "the API key is not valid",
            status=401,
            reason=identity.problem,
            challenge='Bearer realm="contexis", error="invalid_token"',
        )
    scope = ENDPOINT_SCOPES.get(endpoint, SCOPE_CHAT)
    if scope not in identity.key.scopes:
        raise AuthDenied(
            f"this key lacks the scope {scope}",
            status=403,
            reason="missing_scope",
            challenge=f'Bearer realm="contexis", error="insufficient_scope", scope="{scope}"',
        )


def init_auth(app: Flask, settings: Settings) -> None:
    """Check keys before every request when auth is on; render and audit every denial."""
    app.extensions["contexis_keys"] = KeyStore(settings.api_keys) if settings.auth_enabled else None
    if settings.auth_enabled:
        app.before_request(_enforce)

    @app.errorhandler(AuthDenied)
    def _denied(exc: AuthDenied) -> tuple[Response, int]:
        audit_denied(exc.status, exc.reason, g.pop("contexis_denied_tenant", None))
        response, status = error_response(exc.status, exc.code, exc.message)
        if exc.challenge:
            response.headers["WWW-Authenticate"] = exc.challenge
        return response, status

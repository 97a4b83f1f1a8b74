"""API keys: who may call the runtime, for which tenant, with which scopes.

With `CMP_AUTH_ENABLED=true` every route but the probes, `/version` and
`/openapi.json` needs `Authorization: Bearer <key>`. Only SHA-256 digests of the
keys are kept; a presented key is hashed and looked up by its digest, then
compared with `hmac.compare_digest`, so neither the lookup nor the comparison
times anything an attacker chose. Every denial writes one JSON audit line that
names the key id, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from flask import Flask, Response, current_app, g, request

from app.config import Settings, SettingsError
from app.errors import ContexisError, error_response
from app.validation import NAME_PATTERN, ChatRequest

SCOPE_CHAT = "chat:invoke"
SCOPE_METRICS = "metrics:read"
SCOPES = frozenset({SCOPE_CHAT, SCOPE_METRICS})
ANY_TENANT = "*"
# Routes anyone may call: probes must work without secrets, and the contract and version are public.
PUBLIC_ENDPOINTS = frozenset({"health.healthz", "health.readyz", "health.version_info", "openapi.document"})
# Every other route needs a key; this says which scope, and chat:invoke is the default for new API routes.
ENDPOINT_SCOPES = {"prometheus_metrics": SCOPE_METRICS}

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_TENANT = re.compile(NAME_PATTERN)
_audit = logging.getLogger("contexis.audit")


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, as its digest: the key itself is never stored."""

    key_id: str
    digest: bytes
    tenant_id: str
    scopes: frozenset[str]

    def allows_tenant(self, tenant_id: str) -> bool:
        return self.tenant_id in (ANY_TENANT, tenant_id)


class AuthDenied(ContexisError):
    """A request without a valid key (401) or outside its key's tenant or scopes (403)."""

    def __init__(self, message: str, *, status: int, reason: str, challenge: str = "") -> None:
        super().__init__(message, code="unauthorized" if status == 401 else "forbidden")
        self.status = status
        self.reason = reason
        self.challenge = challenge


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _key(key_id: Any, hex_digest: Any, tenant_id: Any, scopes: Any, where: str) -> ApiKey:
    if not isinstance(key_id, str) or not key_id.strip():
        raise SettingsError(f"{where}: key_id must be a non-empty string")
    if not isinstance(hex_digest, str) or not _HEX_DIGEST.match(hex_digest):
        raise SettingsError(f"{where} ({key_id}): hash must be the SHA-256 of the key as 64 hex digits")
    if not isinstance(tenant_id, str) or not (tenant_id == ANY_TENANT or _TENANT.match(tenant_id)):
        raise SettingsError(f"{where} ({key_id}): tenant_id must be a tenant name or '*'")
    if not isinstance(scopes, list | tuple) or not scopes or not all(isinstance(s, str) for s in scopes):
        raise SettingsError(f"{where} ({key_id}): scopes must be a non-empty list of strings")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise SettingsError(f"{where} ({key_id}): unknown scopes {unknown}; known: {sorted(SCOPES)}")
    return ApiKey(key_id.strip(), bytes.fromhex(hex_digest), tenant_id, frozenset(scopes))


def keys_from_json(text: str, where: str) -> list[ApiKey]:
    """`[{"key_id", "hash", "tenant_id", "scopes"}, ...]`, as in `CMP_API_KEYS` or a keys file."""
    if not text.strip():
        return []
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SettingsError(f"{where} must be a JSON list of objects with key_id, hash, tenant_id and scopes")
    return [
        _key(e.get("key_id"), e.get("hash"), e.get("tenant_id"), e.get("scopes"), f"{where}[{i}]")
        for i, e in enumerate(entries)
    ]


def keys_from_file(path: str) -> list[ApiKey]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SettingsError(f"CMP_API_KEYS_FILE {path!r} cannot be read ({exc.strerror})") from None
    return keys_from_json(text, f"CMP_API_KEYS_FILE {path!r}")


def keys_from_tokens(text: str) -> list[ApiKey]:
    """`key@tenant:scope1|scope2,...` for local work; the key is hashed at once and its id is its position."""
    keys = []
    for i, entry in enumerate(e.strip() for e in text.split(",") if e.strip()):
        where = f"CMP_API_TOKENS[{i}]"
        secret, at, rest = entry.rpartition("@")
        tenant_id, colon, scopes = rest.partition(":")
        if not (secret and at and colon):
            # The entry holds a key: the message must not echo it.
            raise SettingsError(f"{where} must look like key@tenant:scope1|scope2")
        keys.append(_key(where, hashlib.sha256(secret.encode()).hexdigest(), tenant_id, scopes.split("|"), where))
    return keys


def unique_keys(keys: list[ApiKey]) -> tuple[ApiKey, ...]:
    ids, digests = set(), set()
    for key in keys:
        if key.key_id in ids:
            raise SettingsError(f"key_id {key.key_id!r} is given twice")
        if key.digest in digests:
            raise SettingsError(f"key {key.key_id!r} has the same hash as another key")
        ids.add(key.key_id)
        digests.add(key.digest)
    return tuple(keys)


class KeyStore:
    """The accepted keys, found by the digest of a presented key."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._by_digest = {key.digest: key for key in keys}

    def find(self, presented: str) -> ApiKey | None:
        wanted = digest(presented)
        key = self._by_digest.get(wanted)
        return key if key is not None and hmac.compare_digest(key.digest, wanted) else None


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


def bind_tenant(chat_request: ChatRequest) -> ChatRequest:
    """The request as its key may make it: an empty tenant becomes the key's own, another tenant is 403."""
    identity = current_identity()
    if identity is None or identity.key is None:
        return chat_request
    key = identity.key
    if not chat_request.tenant_id and key.tenant_id != ANY_TENANT:
        return replace(chat_request, tenant_id=key.tenant_id)
    if not key.allows_tenant(chat_request.tenant_id):
        g.contexis_denied_tenant = chat_request.tenant_id
        raise AuthDenied(
            f"this key may not act for tenant {chat_request.tenant_id!r}", status=403, reason="tenant_mismatch"
        )
    return chat_request


def _enforce() -> None:
    endpoint = request.endpoint
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
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
    app.before_request(_enforce)

    @app.errorhandler(AuthDenied)
    def _denied(exc: AuthDenied) -> tuple[Response, int]:
        audit_denied(exc.status, exc.reason, g.pop("contexis_denied_tenant", None))
        response, status = error_response(exc.status, exc.code, exc.message)
        if exc.challenge:
            response.headers["WWW-Authenticate"] = exc.challenge
        return response, status

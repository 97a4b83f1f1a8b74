"""API keys: parsed from the settings' three sources and looked up by digest.

Only SHA-256 digests of the keys are kept; a presented key is hashed and looked up by its
digest, then compared with `hmac.compare_digest`, so neither the lookup nor the comparison
times anything an attacker chose. No Flask here: `Settings.from_env()` parses keys in
gunicorn's master too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from app.errors import SettingsError
from app.names import NAME_PATTERN

SCOPE_CHAT = "chat:invoke"
SCOPE_METRICS = "metrics:read"
SCOPE_USAGE = "usage:read"  # GET /api/v1/usage: a tenant-bound key sees its own tenant's usage only
SCOPE_TEST = "test:run"  # `POST /api/v1/test`: a context's test cases, each of which may call the model
SCOPES = frozenset({SCOPE_CHAT, SCOPE_METRICS, SCOPE_USAGE, SCOPE_TEST})
ANY_TENANT = "*"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_TENANT = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, as its digest: the key itself is never stored."""

    key_id: str
    digest: bytes
    tenant_id: str
    scopes: frozenset[str]

    def allows_tenant(self, tenant_id: str) -> bool:
        return self.tenant_id in (ANY_TENANT, tenant_id)


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
    except json.JSONDecodeError as exc:
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

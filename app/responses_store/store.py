"""What a store of Responses API responses offers the web layer: the `StoredResponse` and the `ResponseStore`.

A stored response belongs to one tenant ("" for requests without one): every read and delete names the tenant,
and a response of another tenant is as absent as one that never existed. Each expires `CMP_RESPONSES_TTL`
seconds after it was made; an expired one is never returned and is purged by later writes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

# Expired rows are purged by a write at most this often per process: a purge scans the expiry index.
PURGE_INTERVAL = 60.0


def new_response_id() -> str:
    """A response id as OpenAI's look (`resp_` and 32 hex digits): unguessable, so ids alone reveal nothing."""
    return f"resp_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class StoredResponse:
    """A response as answered (`response`, what GET returns) and the conversation through it (`items`: the input
    items before it, its own input and its output, as Responses input items), which `previous_response_id`
    continues."""

    id: str
    tenant: str
    response: dict[str, Any]
    items: list[dict[str, Any]]
    created_at: float
    expires_at: float

    @classmethod
    def new(cls, tenant: str, response: dict[str, Any], items: list[dict[str, Any]], ttl: float) -> StoredResponse:
        now = time.time()
        return cls(response["id"], tenant, response, items, now, now + ttl)


class ResponseStore(Protocol):
    """Stored responses of every tenant, each reachable only through its own tenant."""

    system: str  # the database kind, for spans and errors (`sqlite`, `postgresql`)

    def put(self, stored: StoredResponse) -> None:
        """Keep `stored` (replacing a response of the same tenant and id); `StoreUnavailable` when it cannot."""
        ...

    def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The tenant's unexpired response `response_id`, or None (another tenant's is None too)."""
        ...

    def delete(self, tenant: str, response_id: str) -> bool:
        """Delete the tenant's response; False when it has none by that id."""
        ...


class Purger:
    """Whether a write should purge expired responses now: at most once per `PURGE_INTERVAL` in a process."""

    def __init__(self) -> None:
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < PURGE_INTERVAL:
            return False
        self._last = now
        return True

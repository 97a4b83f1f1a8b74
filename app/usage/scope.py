"""Who a model call is made for: the request-scoped facts every ledger row carries, in context variables.

The web layer names the caller (`bind_caller`: request id, key id, route) before the pipeline runs; the
runtime adds the request's tenant and context (`CallScope`) before the first model call. A model call
reads the scope where it starts (`current`), so a stream that ends after its request's view returned
still records for whom it ran. Nothing here holds a key, only its id.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from app.usage import Meter


class Caller(NamedTuple):
    """What the HTTP layer knows of a request: its id, the id of the key it came with, the route it called."""

    request_id: str
    key_id: str | None
    route: str


class CallScope(NamedTuple):
    """Everything a model call's ledger row and budget check need besides the call itself (tuples, as both are
    made on every metered request: a frozen dataclass takes three times as long to build)."""

    meter: Meter
    request_id: str
    tenant: str
    key_id: str | None
    context: str
    route: str
    bill_to: str  # the organisation Inference Providers bill for this tenant ("" for the token's owner)


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("contexis_usage_caller", default=None)
_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar("contexis_usage_scope", default=None)


def bind_caller(request_id: str, key_id: str | None, route: str) -> None:
    """The current request's caller, for the scope the runtime builds next (a thread serves one request at a time)."""
    _caller.set(Caller(request_id, key_id, route))


def caller() -> Caller | None:
    return _caller.get()


def bind(scope: CallScope | None) -> None:
    _scope.set(scope)


def current() -> CallScope | None:
    """The scope of the model call starting now; None when nothing records or checks it (`ctx hf test-model`)."""
    return _scope.get()

"""What a failed model call means for the chain: move on at once, move on only to another endpoint, or stop.

The transport has already retried what is worth retrying (429, 5xx, refused connections) within the deadline,
so every failure that reaches the chain moves on at once, except a request no model would accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ProviderError
from app.providers.huggingface.errors import (
    HFBadRequest,
    HFBadResponse,
    HFConnectionError,
    HFEndpointRetired,
    HFForbidden,
    HFModelNotFound,
    HFPaymentRequired,
    HFRateLimited,
    HFTimeout,
    HFUnauthorized,
    HFUnavailable,
    HFUnsupportedField,
    model_not_supported,
)


@dataclass(frozen=True)
class Verdict:
    """`reason` labels `cmp_model_fallbacks_total`; `counts` makes it a failure of the model's circuit."""

    reason: str
    fall_back: bool = True
    counts: bool = True
    token_refused: bool = False  # the endpoint refused the token: only another endpoint may answer


_VERDICTS: tuple[tuple[type[ProviderError], Verdict], ...] = (
    (HFPaymentRequired, Verdict("payment_required")),
    (HFEndpointRetired, Verdict("gone")),
    (HFModelNotFound, Verdict("model_not_found")),
    (HFUnauthorized, Verdict("unauthorized", token_refused=True)),
    (HFForbidden, Verdict("forbidden", token_refused=True)),
    (HFRateLimited, Verdict("rate_limited")),
    (HFTimeout, Verdict("timeout")),
    (HFConnectionError, Verdict("connection_error")),
    (HFUnavailable, Verdict("unavailable")),
    (HFBadResponse, Verdict("invalid_response")),
)
MODEL_NOT_SUPPORTED = Verdict("model_not_supported")
# A parameter the model refused: the request's fault, which the next model would refuse too.
CLIENT_ERROR = Verdict("bad_request", fall_back=False, counts=False)
# Why an entry can be passed over without a call, besides the failures above.
SKIP_REASONS = ("circuit_open", "provider_down", "no_tools", "no_structured_output", "token_refused")
REASONS = (*(verdict.reason for _, verdict in _VERDICTS), MODEL_NOT_SUPPORTED.reason, *SKIP_REASONS)


# A provider that refused the request's tools or structured output: another may take them, and the model is
# not failing for requests without them (so its circuit does not count it). Any other refused field is the
# request's fault.
_UNSUPPORTED = {
    "tools": Verdict("no_tools", counts=False),
    "tool_choice": Verdict("no_tools", counts=False),
    "parallel_tool_calls": Verdict("no_tools", counts=False),
    "response_format": Verdict("no_structured_output", counts=False),
}


def verdict(error: ProviderError) -> Verdict:
    """What `error` means for the chain."""
    if isinstance(error, HFUnsupportedField):
        return _UNSUPPORTED.get(error.param or "", CLIENT_ERROR)
    if isinstance(error, HFBadRequest):
        return MODEL_NOT_SUPPORTED if model_not_supported(error) else CLIENT_ERROR
    for kind, found in _VERDICTS:
        if isinstance(error, kind):
            return found
    return Verdict(error.metric_code)

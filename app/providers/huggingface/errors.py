"""Every way a Hugging Face call fails, as a typed error with a hint the user can act on.

One table says, per upstream status, which error it becomes and whether it is retried;
the retry policy, the pre-created metric series and `transport.raise_for_status` all read it.
"""

from __future__ import annotations

import json
import re

from app.config import ROUTER_CHAT_ENDPOINT
from app.errors import ProviderError

HINT_AUTH = (
    'Verify HF_TOKEN scope and validity; a fine-grained token needs the "Make calls to Inference Providers" permission.'
)
HINT_MODEL = "Check HF_MODEL_ID spelling and access."
HINT_TIMEOUT = "Raise HF_TIMEOUT, confirm the model is available, or try a smaller model."
HINT_RATE = "The endpoint is rate limiting this token: slow down, retry later, or raise your plan's limits."
HINT_UNAVAILABLE = (
    "The model is loading or unavailable: retry shortly, confirm model availability, or try a smaller model."
)
HINT_CONNECTION = "Check HF_ENDPOINT and that the endpoint is reachable from the runtime."
HINT_RESPONSE = (
    "The endpoint answered something that is not a generation result: check HF_ENDPOINT, HF_API and HF_MODEL_ID."
)
HINT_REQUEST = (
    "The endpoint rejected the request: check the context's guardrails, and that a provider serves HF_MODEL_ID "
    "(ctx hf test-model lists them)."
)
HINT_RETIRED = f"Hugging Face retired this endpoint: set HF_ENDPOINT={ROUTER_CHAT_ENDPOINT}."
HINT_PAYMENT = (
    "The token's Inference Providers credits are spent: add credits or a plan at "
    "https://huggingface.co/settings/billing, or bill an organisation with HF_BILL_TO."
)


HINT_INTERRUPTED = (
    "The endpoint ended the answer before it was complete: retry the request; if it keeps happening, the "
    "serving provider is failing (try another one)."
)
HINT_UNSUPPORTED = (
    "The model's provider does not support this field: remove it, or pick a provider that does (the router's "
    "GET /v1/models lists supports_tools and supports_structured_output per provider)."
)


class HFError(ProviderError):
    """A Hugging Face call failed; the message ends with the hint of its class."""

    code = "hf_error"
    hint = ""

    def __init__(
        self,
        detail: str,
        *,
        metric_code: str,
        upstream_status: int | None = None,
        upstream_error: str = "",
        upstream_code: str = "",
        hint: str | None = None,
        param: str | None = None,
    ) -> None:
        self.detail = detail
        if hint is not None:
            self.hint = hint
        super().__init__(
            f"{detail} {self.hint}".strip(), metric_code=metric_code, upstream_status=upstream_status, param=param
        )
        self.upstream_error = upstream_error  # the upstream's own explanation, for callers that can act on it
        self.upstream_code = upstream_code  # OpenAI's `error.code` when the upstream sent one (`model_not_supported`)

    def rehinted(self, hints: dict[type[HFError], str]) -> HFError:
        """The same error with the hint `hints` gives its class (embeddings are fixed by other variables)."""
        hint = hints.get(type(self))
        if hint is None:
            return self
        return type(self)(
            self.detail,
            metric_code=self.metric_code,
            upstream_status=self.upstream_status,
            upstream_error=self.upstream_error,
            upstream_code=self.upstream_code,
            hint=hint,
            param=self.param,
        )


class HFRefused(HFError):
    """The upstream refused the call as sent (credentials, model, payload, billing): the same call fails again."""

    retryable = False


class HFUnauthorized(HFRefused):
    code, hint = "hf_unauthorized", HINT_AUTH


class HFForbidden(HFRefused):
    code, hint = "hf_forbidden", HINT_AUTH


class HFModelNotFound(HFRefused):
    code, hint = "hf_model_not_found", HINT_MODEL


class HFRateLimited(HFError):
    code, hint = "hf_rate_limited", HINT_RATE


class HFUnavailable(HFError):
    code, hint = "hf_unavailable", HINT_UNAVAILABLE


class HFBadRequest(HFRefused):
    code, hint = "hf_bad_request", HINT_REQUEST


class HFPaymentRequired(HFRefused):
    code, hint = "hf_payment_required", HINT_PAYMENT


class HFEndpointRetired(HFRefused):
    code, hint = "hf_endpoint_retired", HINT_RETIRED


class HFBadResponse(HFError):
    code, hint = "hf_bad_response", HINT_RESPONSE


class HFConnectionError(HFError):
    code, hint = "hf_connection_error", HINT_CONNECTION


class HFStreamInterrupted(HFError):
    """The endpoint began a streamed answer and broke off before its end."""

    code, hint = "hf_stream_interrupted", HINT_INTERRUPTED


class HFUnsupportedField(HFRefused):
    """The endpoint refused a field the client chose (the router's 400 with `param: tools` from a provider
    without tool calling): the client's request to change, so a 400 naming it, not a 502."""

    status, code, hint = 400, "unsupported_by_model", HINT_UNSUPPORTED


class HFTimeout(HFError):
    status, code, hint = 504, "hf_timeout", HINT_TIMEOUT


# status → error; the statuses whose error is `retryable` are retried. A status not listed is HFUnavailable
# when >= 500, HFBadResponse otherwise.
STATUS_ERRORS: dict[int, type[HFError]] = {
    400: HFBadRequest,
    401: HFUnauthorized,
    402: HFPaymentRequired,
    403: HFForbidden,
    404: HFModelNotFound,
    410: HFEndpointRetired,
    422: HFBadRequest,
    429: HFRateLimited,
    500: HFUnavailable,
    502: HFUnavailable,
    503: HFUnavailable,
    504: HFUnavailable,
}
# What `metric_code` holds when no status explains the failure.
FAILURE_KINDS = ("timeout", "connection_error", "invalid_response", "stream_error", "stream_interrupted")
RETRY_STATUSES = frozenset(status for status, error in STATUS_ERRORS.items() if error.retryable)
KNOWN_ERROR_CODES = (*(str(status) for status in STATUS_ERRORS), *FAILURE_KINDS)


def error_class(status: int) -> type[HFError]:
    """The error an upstream status becomes."""
    return STATUS_ERRORS.get(status) or (HFUnavailable if status >= 500 else HFBadResponse)


def bad_response(what: str) -> HFBadResponse:
    """The endpoint answered, but not with what the wire format expects."""
    return HFBadResponse(f"Hugging Face answered {what}.", metric_code="invalid_response")


def error_text(body: bytes) -> str:
    """The upstream's own explanation: `{"error": "...", "estimated_time"}`, OpenAI's `{"error": {"message"}}`, text."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] if text and not text.lstrip().startswith("<") else ""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            error = error["message"]
        message = error if isinstance(error, str) else str(error)
        if isinstance(data.get("estimated_time"), (int, float)):
            message += f" (estimated time {data['estimated_time']:.0f}s)"
        return message[:300]
    return ""


# The request fields a client chooses that an endpoint may refuse by name (`"param"` of OpenAI's error shape).
CLIENT_FIELDS = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "n",
        "seed",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "user",
        "stop",
    }
)


def error_param(body: bytes) -> str | None:
    """The field an OpenAI-shaped error names (`{"error": {"param": "tools"}}`), when it is one a client chose."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if param in CLIENT_FIELDS else None


def error_code(body: bytes) -> str:
    """OpenAI's machine code of an error body (`{"error": {"code": "model_not_supported"}}`), or ""."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:100] if isinstance(code, str) else ""


_NOT_SUPPORTED = "is not supported by any provider you have enabled"


def model_not_supported(error: HFError) -> bool:
    """The router's 400 for a model no enabled provider serves (in its OpenAI shape with `code`, or the older
    `{"error": "The requested model '...' is not supported by any provider you have enabled."}`)."""
    return error.upstream_status == 400 and (
        error.upstream_code == "model_not_supported" or _NOT_SUPPORTED in error.upstream_error
    )


_UNUSED_KWARGS = re.compile(r"The following `model_kwargs` are not used by the model: \[([^\]]*)\]")


def unused_model_kwargs(upstream_error: str) -> frozenset[str]:
    """The parameters a transformers-pipeline model rejects in its 400 ("`model_kwargs` are not used ..."), if any."""
    found = _UNUSED_KWARGS.search(upstream_error)
    return frozenset(re.findall(r"'([^']+)'", found.group(1))) if found else frozenset()

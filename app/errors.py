"""Every error the runtime can answer a client with, each knowing its HTTP status and stable `code`.

Layers raise these; `app.web.errors` renders them as `{"error": {"code", "message"}}`, so a
client never sees a traceback or an HTML page. Nothing here imports Flask: the pipeline and
the CLI raise the same errors.
"""

from __future__ import annotations


class SettingsError(ValueError):
    """An environment variable holds a value the runtime cannot use."""


class ContexisError(Exception):
    """Base of every error the runtime reports to a client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, when one is: OpenAI's error shape names it.
        self.param = param
        if code:
            self.code = code


class BadRequest(ContexisError):
    """The request body is malformed, mistyped or names an unsafe path."""

    status = 400
    code = "bad_request"


class UnsupportedMediaType(ContexisError):
    """The body is not declared JSON: a cross-site form post (text/plain, no type) must not reach the pipeline."""

    status = 415
    code = "unsupported_media_type"


class NotFound(ContexisError):
    """The context, component or prompt file the request names does not exist."""

    status = 404
    code = "not_found"


class MissingVariable(ContexisError):
    """The template uses a variable that the request's `data` does not provide."""

    status = 422
    code = "missing_variable"


class RenderLimit(ContexisError):
    """A render went past a bound (CMP_MAX_PROMPT_CHARS, CMP_RENDER_TIMEOUT): the request's data made the
    template build too much or loop too long. The message names the bound."""

    status = 422
    code = "render_limit"


class TemplateFailure(ContexisError):
    """The project's template is broken (syntax, sandbox violation, runtime error)."""

    status = 500
    code = "template_error"


class ContextInvalid(ContexisError):
    """A context file fails to parse, merge or validate."""

    status = 500
    code = "invalid_context"


class PayloadTooLarge(ContexisError):
    """`data` holds too many values, or a string is longer than the runtime accepts."""

    status = 413
    code = "payload_too_large"


class PayloadTooDeep(ContexisError):
    """`data` nests deeper than templates need; deep nesting only costs the server."""

    status = 400
    code = "payload_too_deep"


class AuthDenied(ContexisError):
    """A request without a valid key (401) or outside its key's tenant or scopes (403)."""

    def __init__(self, message: str, *, status: int, reason: str, challenge: str = "") -> None:
        super().__init__(message, code="unauthorized" if status == 401 else "forbidden")
        self.status = status
        self.reason = reason
        self.challenge = challenge


class ProviderError(ContexisError):
    """A model call failed; `metric_code` is the upstream status or failure kind counted in metrics."""

    status = 502
    code = "provider_error"
    # Whether the same request may succeed later; a client is told not to retry one that cannot.
    retryable = True

    def __init__(
        self, message: str, *, metric_code: str, upstream_status: int | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.metric_code = metric_code
        self.upstream_status = upstream_status
        # The upstream's `Retry-After` on a 429 or 503 (seconds or an HTTP date), passed on to the client.
        self.retry_after: str | None = None
        # Whether the runtime already retried the call as its policy allows: a client's retries would multiply.
        self.retried = False


class UnsupportedByEndpoint(BadRequest):
    """The request asks for what the configured wire format cannot carry (tools on `HF_API=text-generation`):
    refused by name, never dropped without a word."""

    code = "unsupported_by_endpoint"


class StructuredOutputInvalid(ProviderError):
    """The model's answer does not match the request's `response_format`, also when asked once more."""

    code = "structured_output_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message, metric_code="structured_output_invalid")
        self.retried = True  # the model was asked once more


class BudgetExceeded(ContexisError):
    """A tenant or key has spent a budget of `CMP_BUDGETS`: no model is called until the budget resets.

    Not worth retrying before `retry_after` seconds (the reset), which `Retry-After` tells the client.
    """

    status = 429
    code = "budget_exceeded"
    retryable = False

    def __init__(self, message: str, *, scope: str, name: str, limit: str, retry_after: int) -> None:
        super().__init__(message)
        self.scope = scope
        self.name = name
        self.limit = limit
        self.retry_after = retry_after


class UsageUnavailable(ContexisError):
    """The usage ledger cannot answer a report now (database down or slow, its schema not migrated)."""

    status = 503
    code = "usage_unavailable"


class MemoryStoreError(ContexisError):
    """Base of every memory failure the caller can report (bad config, bad path, bad name)."""

    code = "memory_error"


class MemoryConfigError(MemoryStoreError):
    """`memory_config.yaml` is unreadable or has a wrong key, type or range."""

    code = "invalid_memory_config"


class DocumentError(MemoryStoreError):
    """A file's content cannot be read as its type says (bad UTF-8, malformed JSON lines)."""

    code = "invalid_document"


class MemoryStoreBroken(MemoryStoreError):
    """A store that cannot be used as it is on disk: not a database, or a link leading outside the project root."""

    code = "memory_unavailable"


class MemoryUnavailable(MemoryStoreError):
    """The memory database cannot answer in time (down, unreachable, slow, or its schema not migrated)."""

    status = 503
    code = "memory_unavailable"


class InvalidNameError(MemoryStoreError):
    """A component or tenant name cannot safely become a path segment."""

    status = 400
    code = "invalid_request"


class GuardrailRefusal(ContexisError):
    """A context's guardrail refused the request or its answer; `guardrail` names which (pii, prompt_injection,
    require_citation, deny_output), so `ctx test` can expect it and clients can tell them apart."""

    def __init__(self, message: str, *, guardrail: str, status: int, code: str) -> None:
        super().__init__(message, code=code)
        self.guardrail = guardrail
        self.status = status


class GuardrailBlocked(GuardrailRefusal):
    """Personal data under `pii: block` (422), an injection under `prompt_injection: block` (403), or an
    answer matching `deny_output` (502): nothing of the matched text is in the message."""

    def __init__(self, message: str, *, guardrail: str, status: int) -> None:
        super().__init__(message, guardrail=guardrail, status=status, code="guardrail_blocked")


class ToolStepsExceeded(ContexisError):
    """The model kept calling a context's tools past `guardrails.max_tool_steps` without answering."""

    status = 502
    code = "tool_steps_exceeded"


class ModelsUnavailable(ProviderError):
    """Every model of a context's chain was passed over without a call (circuits open, providers down)."""

    status = 503
    code = "models_unavailable"


class StoreUnavailable(ContexisError):
    """The database of stored responses cannot answer in time (down, unreachable, slow, locked or unusable)."""

    status = 503
    code = "store_unavailable"

"""The telemetry of one Hugging Face call: the guide's `huggingface.generate` span (`huggingface.embed` for
embeddings) and `cmp_hf_*` metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.errors import ProviderError
from app.observability import RuntimeMetrics
from app.providers.base import GenerationParams, Usage
from app.providers.huggingface.errors import KNOWN_ERROR_CODES
from app.providers.huggingface.transport import deadline
from app.usage import start_call

TOKEN_KINDS = ("prompt", "completion")
_tracer = trace.get_tracer(__name__)


def precreate_series(metrics: RuntimeMetrics, model_id: str) -> None:
    """Series exist from the start (at zero), so dashboards and alerts see them before the first failure."""
    metrics.hf_latency.labels(model=model_id)
    metrics.hf_time_to_first_token.labels(model=model_id)
    for kind in TOKEN_KINDS:
        metrics.hf_tokens.labels(model=model_id, kind=kind)
    for code in KNOWN_ERROR_CODES:
        metrics.hf_errors.labels(code=code)


class CallTelemetry:
    """The span, metrics and ledger row of one inference call; a streamed call is observed until its last token.

    Its budgets are checked first (`BudgetExceeded`, and no call); `prompt` (what is sent) and the text that
    arrives are kept only to estimate the counts of an endpoint that reports none.
    """

    def __init__(
        self,
        metrics: RuntimeMetrics | None,
        model_id: str,
        operation: str,
        params: GenerationParams,
        prompt: Sequence[str] = (),
        endpoint: str = "",
        stream: bool = False,
    ) -> None:
        self.call = start_call(model_id, endpoint, stream, prompt)
        self.metrics = metrics
        self.model_id = model_id
        self.started = time.perf_counter()
        self.first_token_seen = False
        self.ended = False
        self.usage: Usage | None = None
        self.served: str | None = None
        self.text = ""
        self.outcome = "cancelled"  # until it succeeds or fails: the reader stopped before the end
        attributes: dict[str, AttributeValue] = {
            "provider": "huggingface",
            "model_id": model_id,
            "gen_ai.system": "huggingface",
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model_id,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.top_p": params.top_p,
        }
        self.span: Span = _tracer.start_span("huggingface.generate", attributes=attributes, record_exception=False)

    @contextlib.contextmanager
    def active(self, seconds: float) -> Iterator[None]:
        """The span is current (the HTTP call's span nests in it) and retries stop at `seconds` from now."""
        with deadline(seconds), trace.use_span(self.span, record_exception=False, set_status_on_exception=False):
            yield

    def first_token(self, text: str = "") -> None:
        """A piece of text arrived (each piece of a stream)."""
        if self.call is not None and text:
            self.call.pieces.append(text)
        if not self.first_token_seen:
            self.first_token_seen = True
            if self.metrics:
                elapsed = time.perf_counter() - self.started
                self.metrics.child(self.metrics.hf_time_to_first_token, self.model_id).observe(elapsed)

    def succeeded(self, usage: Usage | None, served: str | None = None, text: str = "") -> None:
        """The call answered: `usage` as reported, `served` the model the endpoint says answered, `text` if whole."""
        self.outcome, self.usage, self.served, self.text = "ok", usage, served, text
        self.span.set_attribute("gen_ai.response.model", self.model_id)
        if usage is None:
            return
        for kind, attribute, count in (
            ("prompt", "gen_ai.usage.input_tokens", usage.prompt_tokens),
            ("completion", "gen_ai.usage.output_tokens", usage.completion_tokens),
        ):
            if count is not None:
                self.span.set_attribute(attribute, count)
                if self.metrics:
                    self.metrics.child(self.metrics.hf_tokens, self.model_id, kind).inc(count)

    def failed(self, exc: ProviderError) -> None:
        self.outcome = exc.metric_code
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, exc.code))
        self.span.set_attribute("error.type", exc.metric_code)
        if self.metrics:
            self.metrics.hf_errors.labels(code=exc.metric_code).inc()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.metrics:
            self.metrics.child(self.metrics.hf_latency, self.model_id).observe(time.perf_counter() - self.started)
        self.span.end()
        if self.call is not None:
            self.call.finish(self.usage, self.served, self.text, self.outcome)


def precreate_embed_series(metrics: RuntimeMetrics, model_id: str) -> None:
    """The embedding series at zero from the start, as `precreate_series` does for generation."""
    metrics.hf_embed_latency.labels(model=model_id)
    for code in KNOWN_ERROR_CODES:
        metrics.hf_embed_errors.labels(code=code)


@contextlib.contextmanager
def observe_embedding(metrics: RuntimeMetrics | None, model_id: str, inputs: int, seconds: float) -> Iterator[None]:
    """One embedding call: the `huggingface.embed` span is current, retries stop at `seconds`, failures counted."""
    attributes: dict[str, AttributeValue] = {
        "provider": "huggingface",
        "model_id": model_id,
        "gen_ai.system": "huggingface",
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": model_id,
        "embeddings.inputs": inputs,
    }
    started = time.perf_counter()
    span = _tracer.start_span("huggingface.embed", attributes=attributes, record_exception=False)
    try:
        with deadline(seconds), trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield
    except ProviderError as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, exc.code))
        span.set_attribute("error.type", exc.metric_code)
        if metrics:
            metrics.hf_embed_errors.labels(code=exc.metric_code).inc()
        raise
    finally:
        if metrics:
            metrics.hf_embed_latency.labels(model=model_id).observe(time.perf_counter() - started)
        span.end()

"""The request pipeline shared by the HTTP API and the CLI: context → guardrails → memory → prompt → provider →
guardrails.

It knows nothing of HTTP: `app.web` turns requests into `ChatRequest`s and answers into responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from app.config import Settings
from app.contexts import ContextStore
from app.errors import BadRequest
from app.guardrails import Guard, Guardrails
from app.memory import Retrieval, SearchResult, open_memory
from app.observability import RuntimeMetrics
from app.prompts import PromptRenderer, system_message
from app.providers import build_classifier, build_embedder, build_provider
from app.providers.base import GenerationParams, TokenStream, Usage
from app.validation import ChatRequest

_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Rendered:
    """A request's resolved context, its memory matches and the prompt they produced."""

    context: dict[str, Any]
    results: list[SearchResult]
    prompt: str
    request: ChatRequest  # as the guardrails passed it (personal data redacted)
    degraded: str = ""  # why memory searched keywords only, when it had to
    guard: Guard | None = None  # the request's guardrails, when its context enforces any


@dataclass(frozen=True)
class Answer:
    """What one chat request produced."""

    rendered: str
    model: str | None
    sources: list[dict[str, Any]]
    usage: Usage | None = None
    finish_reason: str = "stop"
    degraded: str = ""
    redacted: tuple[str, ...] = ()  # the personal data types the guardrails replaced, in and out


@dataclass(frozen=True)
class StreamedAnswer:
    """What one streamed chat request produces: the model's deltas, and the memory sources known up front."""

    stream: TokenStream
    sources: list[dict[str, Any]]
    degraded: str = ""


class Runtime:
    """The services of one project root, built once per process from the settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or RuntimeMetrics()
        self.contexts = ContextStore(settings.project_root)
        self.prompts = PromptRenderer(settings.project_root, settings.max_prompt_chars, settings.render_timeout)
        self.provider = build_provider(settings, self.metrics)
        self.embedder = build_embedder(settings, self.metrics)
        self.memory = open_memory(settings, self.embedder)
        self.guardrails = Guardrails(settings, self.metrics, build_classifier(settings))

    def problems(self) -> list[str]:
        """Why the runtime cannot serve now (for `/readyz`): invalid contexts, memory unreachable."""
        problems = self.contexts.problems()
        memory = self.memory.problem()
        return [*problems, memory] if memory else problems

    def search(self, request: ChatRequest, component: str = "") -> Retrieval:
        """The memory matches of `component` (the request's by default) for the request's query (none without one)."""
        component = component or request.component
        if not request.query.strip():
            return Retrieval([], "keyword")
        attributes: dict[str, AttributeValue] = {
            "memory.component": component,
            "memory.top_k": request.top_k,
            "db.system": self.memory.system,
        }
        with _tracer.start_as_current_span("memory.search", attributes=attributes) as span:
            started = time.perf_counter()
            try:
                store = self.memory.store(component, request.tenant_id or None)
                retrieval = store.retrieve(request.query, request.top_k)
            except Exception:
                self.metrics.memory_search_errors.labels(component=component).inc()
                raise
            self.metrics.child(self.metrics.memory_search, component).observe(time.perf_counter() - started)
            span.set_attribute("memory.results", len(retrieval.results))
            span.set_attribute("memory.mode", retrieval.mode)
            if retrieval.degraded:
                span.set_attribute("memory.degraded", retrieval.degraded)
        return retrieval

    def render(self, request: ChatRequest) -> Rendered:
        """Resolve the context, search memory and render the prompt for `request`.

        Memory is the request's component when it names one other than its context; otherwise the
        context's `memory.component` when it names one (so a client that names only the context, as OpenAI
        clients do, still gets retrieval), else the request's component.
        """
        context = self.contexts.resolve(request.context, request.tenant_id)
        guard = self.guardrails.guard(context, request)
        if guard:
            request = guard.check_request(request)
        named = request.component != request.context
        retrieval = self.search(request, "" if named else (context.get("memory") or {}).get("component", ""))
        results = guard.check_results(retrieval.results) if guard else retrieval.results
        variables = {
            **request.data,
            # The runtime's own variables win over same-named keys in `data`.
            "context": context,
            "results": [result.as_dict() for result in results],
            "tenant_id": request.tenant_id,
            "query": request.query,
            "messages": [dict(message) for message in request.messages],
            # True when the model gets the history as turns, so a template need not repeat it.
            "history_in_turns": bool(self.provider and self.provider.history_in_turns),
        }
        started = time.perf_counter()
        prompt = self.prompts.render(request.component, request.prompt_file, variables)
        self.metrics.child(self.metrics.prompt_render, request.component).observe(time.perf_counter() - started)
        return Rendered(context, results, prompt, request, retrieval.degraded, guard)

    def answer(self, request: ChatRequest) -> Answer:
        """The model's text when a model is configured, the rendered prompt otherwise."""
        rendered = self.render(request)
        sources = _sources(rendered)
        guard = rendered.guard
        if self.provider is None:
            redacted = guard.redacted if guard else ()
            return Answer(rendered.prompt, model=None, sources=sources, degraded=rendered.degraded, redacted=redacted)
        generation = self.provider.generate(rendered.prompt, *_inference_inputs(rendered.context, rendered.request))
        text = guard.check_answer(generation.text) if guard else generation.text
        return Answer(
            rendered=text,
            model=self.provider.model_id,
            sources=sources,
            usage=generation.usage,
            finish_reason=generation.finish_reason or "stop",
            degraded=rendered.degraded,
            redacted=guard.redacted if guard else (),
        )

    def stream(self, request: ChatRequest) -> StreamedAnswer:
        """`answer`, piece by piece: the model's deltas, or the rendered prompt in one piece without a model."""
        rendered = self.render(request)
        if self.provider is None:
            prompt_only = TokenStream(iter([rendered.prompt]), model=None)
            return StreamedAnswer(prompt_only, _sources(rendered), rendered.degraded)
        stream = self.provider.stream(rendered.prompt, *_inference_inputs(rendered.context, rendered.request))
        if rendered.guard:
            stream = rendered.guard.check_stream(stream)
        return StreamedAnswer(stream, _sources(rendered), rendered.degraded)


def _sources(rendered: Rendered) -> list[dict[str, Any]]:
    """The memory matches a response names, so a client can cite them."""
    return [{"id": r.id, "source": r.source, "score": r.score} for r in rendered.results]


def _inference_inputs(
    context: dict[str, Any], request: ChatRequest
) -> tuple[GenerationParams, str, tuple[dict[str, str], ...]]:
    """What goes with the rendered prompt: sampling parameters, the chat system message and the history."""
    return _params(context, request), system_message(context), request.messages


def _params(context: dict[str, Any], request: ChatRequest) -> GenerationParams:
    """The guardrails' sampling, with what the client asked for where it stays within `guardrails.client_max`."""
    guardrails = context.get("guardrails") or {}
    params = GenerationParams.from_guardrails(guardrails)
    overrides = request.overrides
    for name, ceiling in guardrails.get("client_max", {}).items():
        if overrides.get(name, 0) > ceiling:
            raise BadRequest(
                f"{name}: {overrides[name]} is more than context {context['name']!r} allows ({ceiling})",
                code="invalid_request",
                param=name,
            )
    return replace(
        params,
        max_new_tokens=overrides.get("max_tokens", params.max_new_tokens),
        temperature=overrides.get("temperature", params.temperature),
        top_p=overrides.get("top_p", params.top_p),
        stop=overrides.get("stop", params.stop),
    )

"""The request pipeline shared by the HTTP API and the CLI: context → memory → prompt → provider.

It knows nothing of HTTP: `app.web` turns requests into `ChatRequest`s and answers into responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from app.config import Settings
from app.contexts import ContextStore
from app.memory import SearchResult, open_memory
from app.observability import RuntimeMetrics
from app.prompts import PromptRenderer, system_message
from app.providers import build_provider
from app.providers.base import GenerationParams, TokenStream, Usage
from app.validation import ChatRequest

_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Rendered:
    """A request's resolved context, its memory matches and the prompt they produced."""

    context: dict[str, Any]
    results: list[SearchResult]
    prompt: str


@dataclass(frozen=True)
class Answer:
    """What one chat request produced."""

    rendered: str
    model: str | None
    sources: list[dict[str, Any]]
    usage: Usage | None = None


@dataclass(frozen=True)
class StreamedAnswer:
    """What one streamed chat request produces: the model's deltas, and the memory sources known up front."""

    stream: TokenStream
    sources: list[dict[str, Any]]


class Runtime:
    """The services of one project root, built once per process from the settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or RuntimeMetrics()
        self.contexts = ContextStore(settings.project_root)
        self.prompts = PromptRenderer(settings.project_root)
        self.provider = build_provider(settings, self.metrics)
        self.memory = open_memory(settings)

    def problems(self) -> list[str]:
        """Why the runtime cannot serve now (for `/readyz`): invalid contexts, memory unreachable."""
        problems = self.contexts.problems()
        memory = self.memory.problem()
        return [*problems, memory] if memory else problems

    def search(self, request: ChatRequest) -> list[SearchResult]:
        """The component's memory matches for the request's query (none without a query)."""
        if not request.query.strip():
            return []
        attributes: dict[str, AttributeValue] = {
            "memory.component": request.component,
            "memory.top_k": request.top_k,
            "db.system": self.memory.system,
        }
        with _tracer.start_as_current_span("memory.search", attributes=attributes) as span:
            started = time.perf_counter()
            store = self.memory.store(request.component, request.tenant_id or None)
            results = store.search(request.query, request.top_k)
            self.metrics.memory_search.labels(component=request.component).observe(time.perf_counter() - started)
            span.set_attribute("memory.results", len(results))
        return results

    def render(self, request: ChatRequest) -> Rendered:
        """Resolve the context, search memory and render the prompt for `request`."""
        context = self.contexts.resolve(request.context, request.tenant_id)
        results = self.search(request)
        variables = {
            **request.data,
            # The runtime's own variables win over same-named keys in `data`.
            "context": context,
            "results": [result.as_dict() for result in results],
            "tenant_id": request.tenant_id,
            "query": request.query,
        }
        started = time.perf_counter()
        prompt = self.prompts.render(request.component, request.prompt_file, variables)
        self.metrics.prompt_render.labels(component=request.component).observe(time.perf_counter() - started)
        return Rendered(context=context, results=results, prompt=prompt)

    def answer(self, request: ChatRequest) -> Answer:
        """The model's text when a model is configured, the rendered prompt otherwise."""
        rendered = self.render(request)
        sources = _sources(rendered)
        if self.provider is None:
            return Answer(rendered=rendered.prompt, model=None, sources=sources)
        generation = self.provider.generate(rendered.prompt, *_inference_inputs(rendered.context))
        return Answer(rendered=generation.text, model=self.provider.model_id, sources=sources, usage=generation.usage)

    def stream(self, request: ChatRequest) -> StreamedAnswer:
        """`answer`, piece by piece: the model's deltas, or the rendered prompt in one piece without a model."""
        rendered = self.render(request)
        if self.provider is None:
            return StreamedAnswer(TokenStream(iter([rendered.prompt]), model=None), _sources(rendered))
        stream = self.provider.stream(rendered.prompt, *_inference_inputs(rendered.context))
        return StreamedAnswer(stream, _sources(rendered))


def _sources(rendered: Rendered) -> list[dict[str, Any]]:
    """The memory matches a response names, so a client can cite them."""
    return [{"id": r.id, "source": r.source, "score": r.score} for r in rendered.results]


def _inference_inputs(context: dict[str, Any]) -> tuple[GenerationParams, str]:
    """What the context adds to the rendered prompt: sampling parameters and the chat system message."""
    return GenerationParams.from_guardrails(context.get("guardrails")), system_message(context)

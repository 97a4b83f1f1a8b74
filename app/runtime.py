"""The request pipeline shared by the HTTP API and the CLI: context → memory → prompt → provider."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.config import Settings
from app.contexts import ContextStore
from app.huggingface import GenerationParams, HuggingFaceClient, TokenStream, Usage
from app.observability import RuntimeMetrics
from app.prompts import PromptRenderer, system_message
from app.validation import ChatRequest


@dataclass(frozen=True)
class Answer:
    """What one chat request produced."""

    rendered: str
    model: str | None
    usage: Usage | None = None


class Runtime:
    """The services of one project root, built once per process from the settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or RuntimeMetrics()
        self.contexts = ContextStore(settings.project_root)
        self.prompts = PromptRenderer(settings.project_root)
        self.provider = HuggingFaceClient(settings, self.metrics) if settings.hf_enabled else None

    def render(self, request: ChatRequest) -> tuple[dict[str, Any], str]:
        """The resolved context and the rendered prompt for `request`."""
        context = self.contexts.resolve(request.context, request.tenant_id)
        variables = {
            **request.data,
            # The runtime's own variables win over same-named keys in `data`.
            "context": context,
            "results": [],
            "tenant_id": request.tenant_id,
            "query": request.query,
        }
        started = time.perf_counter()
        rendered = self.prompts.render(request.component, request.prompt_file, variables)
        self.metrics.prompt_render.labels(component=request.component).observe(time.perf_counter() - started)
        return context, rendered

    def answer(self, request: ChatRequest) -> Answer:
        """The model's text when a model is configured, the rendered prompt otherwise."""
        context, rendered = self.render(request)
        if self.provider is None:
            return Answer(rendered=rendered, model=None)
        generation = self.provider.generate(rendered, *_inference_inputs(context))
        return Answer(rendered=generation.text, model=self.provider.model_id, usage=generation.usage)

    def stream(self, request: ChatRequest) -> TokenStream:
        """`answer`, piece by piece: the model's deltas, or the rendered prompt in one piece without a model."""
        context, rendered = self.render(request)
        if self.provider is None:
            return TokenStream(iter([rendered]), model=None)
        return self.provider.stream(rendered, *_inference_inputs(context))


def _inference_inputs(context: dict[str, Any]) -> tuple[GenerationParams, str]:
    """What the context adds to the rendered prompt: sampling parameters and the chat system message."""
    return GenerationParams.from_guardrails(context.get("guardrails")), system_message(context)


def get_runtime() -> Runtime:
    """The runtime of the application handling the current request."""
    return current_app.extensions["contexis"]

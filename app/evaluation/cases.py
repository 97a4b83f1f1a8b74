"""Test cases of a context's `testing.cases`, and what the chat pipeline produced for one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.errors import GuardrailRefusal
from app.providers.base import Usage
from app.runtime import Runtime
from app.validation import ChatRequest, parse_chat_request

# The keys of a case that become the chat request's body (as `/api/v1/chat` would receive them).
_BODY_FIELDS = ("component", "query", "top_k", "prompt_file", "messages")


@dataclass(frozen=True)
class Case:
    """One case, as written in the context, with the context and tenant it runs for."""

    context: str
    name: str
    spec: dict[str, Any]
    tenant_id: str = ""

    @property
    def mode(self) -> str:
        """`prompt`: checks the rendered prompt, never calls the model; `answer`: the model's text when one is
        configured, the rendered prompt otherwise; `model`: needs a model, skipped without one."""
        return self.spec.get("mode", "answer")

    def request(self) -> ChatRequest:
        """The chat request, built and validated like an HTTP body, so every field the API accepts flows through."""
        data = dict(self.spec.get("data", {}))
        if "input" in self.spec:
            data["user_input"] = self.spec["input"]
        body: dict[str, Any] = {
            "context": self.context,
            "tenant_id": self.spec.get("tenant_id", self.tenant_id),
            "data": data,
        }
        body.update({key: self.spec[key] for key in _BODY_FIELDS if key in self.spec})
        return parse_chat_request(body)


def cases_of(context_name: str, context: dict[str, Any], tenant_id: str) -> list[Case]:
    """The cases of a resolved (so validated) context; an unnamed one is called `case-<n>`, as validation does."""
    return [
        Case(context=context_name, name=spec.get("name", f"case-{number}"), spec=spec, tenant_id=tenant_id)
        for number, spec in enumerate(context.get("testing", {}).get("cases", []), start=1)
    ]


@dataclass(frozen=True)
class Observation:
    """What a case's request produced: the text the assertions read, its sources, time and tokens."""

    text: str
    latency_ms: float
    sources: list[str] = field(default_factory=list)
    model: str | None = None
    usage: Usage | None = None
    blocked: str = ""  # the guardrail that refused the request or its answer
    redacted: tuple[str, ...] = ()  # the personal data types the guardrails replaced
    tool_calls: list[str] | None = None  # the context tools called, in order; None when no model was asked


def observe(runtime: Runtime, case: Case) -> Observation:
    """Run the case through the pipeline; the runtime's errors (a failed model call too) propagate, but for a
    guardrail's refusal that the case expects (`expect_blocked`), which is what it observed."""
    request = case.request()
    started = time.perf_counter()
    try:
        if case.mode == "prompt":
            rendered = runtime.render(request)
            elapsed = (time.perf_counter() - started) * 1000
            redacted = rendered.guard.redacted if rendered.guard else ()
            sources = [result.source for result in rendered.results]
            return Observation(rendered.prompt, elapsed, sources, redacted=redacted)
        answer = runtime.answer(request)
    except GuardrailRefusal as exc:
        if "expect_blocked" not in case.spec:
            raise
        return Observation(exc.message, (time.perf_counter() - started) * 1000, blocked=exc.guardrail)
    elapsed = (time.perf_counter() - started) * 1000
    sources = [source["source"] for source in answer.sources]
    tools = None if answer.model is None else [call["name"] for call in answer.tools or []]
    return Observation(
        answer.rendered,
        elapsed,
        sources,
        model=answer.model,
        usage=answer.usage,
        redacted=answer.redacted,
        tool_calls=tools,
    )

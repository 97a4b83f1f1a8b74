"""What the guardrails did, told three ways: a JSON line on the `contexis.audit` logger, the
`cmp_guardrail_actions_total` counter and an event on the request's span.

A decision names the guardrail, the action, the stage, the context, the tenant, the request and the types
and counts of what was found; never the text that matched (docs/security.md lists the fields).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span

from app.contexts import GUARDRAILS
from app.observability import RuntimeMetrics, current_request_id

AUDIT_LOGGER = "contexis.audit"
ACTIONS = ("redact", "block", "flag", "drop")
STAGES = ("in", "out")

_log = logging.getLogger(AUDIT_LOGGER)
_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Decision:
    """One guardrail acting once: `entities` counts the personal data types found; `reason` says more where
    the action alone does not (`retrieved_chunk`, `tool_result`, `classifier_unavailable`, `no_sources`)."""

    guardrail: str
    action: str
    stage: str
    entities: dict[str, int] = field(default_factory=dict)
    reason: str = ""


def entity_counts(entities: list[str]) -> dict[str, int]:
    """`{type: count}`, in a stable order for logs and messages."""
    return dict(sorted(Counter(entities).items()))


class Audit:
    """The decisions of one request, recorded as they are made, for the context and tenant that made them."""

    def __init__(self, metrics: RuntimeMetrics, context: str, tenant: str) -> None:
        self.metrics = metrics
        self.context = context
        self.tenant = tenant
        # Captured while the request is being served: a stream's later decisions still name the request,
        # and go to its span (or, once that span has ended, to a span of their own under it).
        self.request_id = current_request_id.get()
        self.span: Span = trace.get_current_span()
        self.decisions: list[Decision] = []

    def record(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.metrics.child(self.metrics.guardrail_actions, decision.guardrail, decision.action, decision.stage).inc()
        fields: dict[str, object] = {
            "guardrail": decision.guardrail,
            "action": decision.action,
            "stage": decision.stage,
            "context": self.context,
            "tenant": self.tenant or None,
            "request_id": self.request_id or None,
            "entities": decision.entities,
        }
        if decision.reason:
            fields["reason"] = decision.reason
        _log.info("guardrail", extra={"fields": fields})
        attributes = {
            "guardrail.name": decision.guardrail,
            "guardrail.action": decision.action,
            "guardrail.stage": decision.stage,
            "guardrail.entities": [f"{name}:{count}" for name, count in decision.entities.items()],
        }
        if self.span.is_recording():
            self.span.add_event("guardrail", attributes)
        elif self.span.get_span_context().is_valid:
            with _tracer.start_as_current_span("guardrail", context=trace.set_span_in_context(self.span)) as span:
                span.add_event("guardrail", attributes)

    def redacted(self) -> tuple[str, ...]:
        """The personal data types replaced so far."""
        return tuple(sorted({name for d in self.decisions if d.action == "redact" for name in d.entities}))


def precreate_series(metrics: RuntimeMetrics) -> None:
    """Every guardrail's block series exists at zero from the start, so the alert's rate sees its first block."""
    for guardrail in GUARDRAILS:
        for stage in STAGES:
            metrics.child(metrics.guardrail_actions, guardrail, "block", stage)

"""Guardrails that act: personal data (in, context tools' results included, and out), prompt injection (the
request, its retrieved chunks and its context tools' results), citations and denied output, each per context
with the environment as the default (docs/security.md).

pii.py         personal data found with maintained checks (python-stdnum, phonenumbers) and redacted
injection.py   injection phrasings, and the optional classifier model (`CMP_PI_MODEL`)
citations.py   whether an answer cites a retrieved source
deny.py        `deny_output` patterns
policy.py      a context's policy, its fields defaulting to CMP_PII_MODE, CMP_PI_ENFORCEMENT, CMP_REQUIRE_CITATION
guard.py       one request's checks, in and out
values.py      values as the checks read them: `data`'s strings, a tool's result parsed (and sent as judged)
stream.py      the hold-back window of a streamed answer
audit.py       the audit line, the metric and the span event of each decision

The runtime asks `Guardrails.guard` for a request's `Guard`: None when its context enforces nothing, so such a
request does no guardrail work at all.
"""

from __future__ import annotations

import threading
from typing import Any

from app.config import Settings
from app.guardrails.audit import Audit, precreate_series
from app.guardrails.guard import Guard
from app.guardrails.injection import Classifier, InjectionDetector
from app.guardrails.pii import Detector
from app.guardrails.policy import Policy, policy_of
from app.observability import RuntimeMetrics
from app.validation import ChatRequest

__all__ = ["Guard", "Guardrails", "Policy"]

_MAX_POLICIES = 1024


class Guardrails:
    """The process's guardrails: each context's policy composed once, the detectors built once."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics, classifier: Classifier | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.injection = InjectionDetector(
            classifier, threshold=settings.pi_model_threshold, fail_closed=settings.pi_model_failure == "closed"
        )
        # Keyed by the resolved context's identity: the context store hands out the same dict while its files
        # are unchanged, so a request costs one lookup; the dict is kept with it, so its id is not reused.
        self._policies: dict[int, tuple[dict[str, Any], Policy]] = {}
        self._detectors: dict[tuple[str, ...], Detector] = {}
        self._lock = threading.Lock()
        precreate_series(metrics)

    def policy(self, context: dict[str, Any]) -> Policy:
        cached = self._policies.get(id(context))
        if cached is not None and cached[0] is context:
            return cached[1]
        policy = policy_of(context, self.settings)
        with self._lock:
            if len(self._policies) >= _MAX_POLICIES:
                self._policies.clear()  # contexts re-read many times over: start again
            self._policies[id(context)] = (context, policy)
        return policy

    def guard(self, context: dict[str, Any], request: ChatRequest) -> Guard | None:
        """The checks of one request under its context's policy; None when the policy enforces nothing."""
        policy = self.policy(context)
        if not policy.active:
            return None
        audit = Audit(self.metrics, context.get("name", request.context), request.tenant_id)
        return Guard(policy, self._detector(policy.pii_entities), self.injection, audit)

    def _detector(self, entities: tuple[str, ...]) -> Detector:
        detector = self._detectors.get(entities)
        if detector is None:
            detector = self._detectors[entities] = Detector(entities, self.settings.pii_phone_region)
        return detector

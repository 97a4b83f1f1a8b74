"""The policy of one context: its `guardrails:` fields, each defaulting to the operator's environment
(CMP_PII_MODE, CMP_PI_ENFORCEMENT, CMP_REQUIRE_CITATION)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from app.config import Settings
from app.guardrails.deny import compile_denials
from app.guardrails.pii import ENTITIES

PII_MODES = ("off", "redact", "block")
PI_MODES = ("off", "flag", "block")


@dataclass(frozen=True)
class Policy:
    """What the guardrails enforce for one context; `active` is False when nothing is, so a request pays nothing."""

    pii: str = "off"
    pii_entities: tuple[str, ...] = ENTITIES
    prompt_injection: str = "off"
    require_citation: bool = False
    deny_output: tuple[re.Pattern[str], ...] = ()

    @property
    def active(self) -> bool:
        return self.pii != "off" or self.prompt_injection != "off" or self.require_citation or bool(self.deny_output)

    @property
    def checks_tool_results(self) -> bool:
        return self.pii != "off" or self.prompt_injection != "off"

    @property
    def checks_output(self) -> bool:
        return self.pii != "off" or self.require_citation or bool(self.deny_output)

    @cached_property
    def fingerprint(self) -> str:
        """The policy as one text, written once: the response cache's key holds it (an answer kept under another
        policy is never served under this one)."""
        return repr(self)


def policy_of(context: dict[str, Any], settings: Settings) -> Policy:
    """The resolved context's policy: a field it sets wins over the environment's default."""
    guardrails = context.get("guardrails") or {}
    return Policy(
        pii=guardrails.get("pii", settings.pii_mode) or "off",  # YAML reads a bare `off` as false
        pii_entities=tuple(guardrails.get("pii_entities", ENTITIES)),
        prompt_injection=guardrails.get("prompt_injection", settings.pi_enforcement) or "off",
        require_citation=guardrails.get("require_citation", settings.require_citation),
        deny_output=compile_denials(guardrails.get("deny_output", ())),
    )

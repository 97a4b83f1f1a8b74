"""Prompt injection: text that tries to overrule the context's instructions, typed by a user or planted in a
retrieved document.

The default detector needs no model: well-known phrasings (override the instructions, reveal the system
prompt, jailbreak role-play openers, chat-template markers and notes addressed to the model hidden in
documents), matched on text normalised as attackers vary it (Unicode compatibility forms, zero-width
characters, case, runs of spaces). An operator may add a classifier model (`CMP_PI_MODEL`): it is asked only
about text the patterns let through, within its own timeout.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from typing import Protocol

from app.errors import ProviderError

log = logging.getLogger(__name__)

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_OVERRIDE = (
    r"(?:ignore|disregard|forget|override|bypass|skip|drop)\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?"
    r"(?:the\s+|your\s+|my\s+|these\s+|those\s+)?(?:previous|prior|above|earlier|preceding|original|initial|system)"
    r"\s+(?:instructions?|prompts?|rules|directions|guidelines|context|messages?|commands?)"
)
_REVEAL = (
    r"(?:reveal|print|show|repeat|output|display|leak|dump|recite|tell\s+me|give\s+me|what\s+(?:is|are|was))"
    r"\s+(?:me\s+)?(?:your|the)\s+(?:(?:full|entire|exact|complete)\s+)?(?:system|initial|original|hidden|secret|developer)"
    r"\s+(?:prompt|instructions?|message|rules)"
)
_JAILBREAK = (
    r"\bdo\s+anything\s+now\b|\byou\s+are\s+(?:now\s+)?(?:dan|jailbroken|unfiltered|unrestricted)\b"
    r"|\b(?:developer|god|jailbreak|dan)\s+mode\s+(?:enabled|activated|on)\b"
    r"|\b(?:act|behave|respond)\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?an?\s+(?:\w+\s+){0,3}"
    r"(?:without|with\s+no)\s+(?:any\s+)?(?:restrictions|filters|rules|limits|guidelines)"
    r"|\bpretend\s+(?:that\s+)?(?:you\s+are|to\s+be)\s+(?:\w+\s+){0,6}(?:without|with\s+no|free\s+of)\s+(?:any\s+)?"
    r"(?:restrictions|filters|rules|limits|guidelines)"
    r"|\bfrom\s+now\s+on,?\s+you\s+(?:will|are|must)\s+(?:ignore|no\s+longer|not\s+follow|answer\s+without)"
)
_PLANTED = (
    r"<\|im_start\|>\s*system|\[/?inst\]|<<\s*sys\s*>>|^\s*#{2,}\s*(?:system|new\s+instructions)\b"
    r"|\b(?:new|updated|real|important)\s+(?:system\s+)?instructions\s*:"
    r"|\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:ai|assistant|llm|language\s+model|chatbot|model)s?\b"
    r"|\b(?:ai|assistant|llm|chatbot)s?\s+(?:reading|processing|summari[sz]ing)\s+this\b"
)
# Searched one after another (the first match ends it): Python's `re` tries every branch of one big alternation
# at every position, which measured slower than the four searches.
PATTERNS = tuple(re.compile(p, re.MULTILINE) for p in (_OVERRIDE, _REVEAL, _JAILBREAK, _PLANTED))


def normalise(text: str) -> str:
    """`text` as the patterns read it: compatibility forms folded, invisible characters dropped, case folded,
    whitespace runs made one space."""
    folded = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).casefold()
    return " ".join(folded.split()) if "\n" not in folded else re.sub(r"[^\S\n]+", " ", folded)


def matches_pattern(text: str) -> bool:
    """Whether `text` holds a well-known injection phrasing."""
    normalised = normalise(text)
    return any(pattern.search(normalised) for pattern in PATTERNS)


class Classifier(Protocol):
    """A text-classification model that scores text for prompt injection (`app.providers.build_classifier`)."""

    model_id: str

    def injection_scores(self, texts: Sequence[str]) -> list[float]:
        """The probability that each text is an injection, in order; a `ProviderError` when the model cannot answer."""
        ...


class ClassifierUnavailable(Exception):
    """The classifier did not answer (down, slow past its timeout, an answer it cannot read) and the operator
    chose to fail closed."""


class InjectionDetector:
    """The patterns, then the classifier when one is configured, for each of a request's texts.

    `fail_closed`: a classifier that cannot answer counts as a finding (`ClassifierUnavailable`); otherwise the
    text goes on as the patterns judged it, and the failure is logged (without the text).
    """

    def __init__(self, classifier: Classifier | None = None, threshold: float = 0.9, fail_closed: bool = False) -> None:
        self.classifier = classifier
        self.threshold = threshold
        self.fail_closed = fail_closed

    def flagged(self, texts: Sequence[str]) -> list[bool]:
        """For each text, whether it is an injection."""
        found = [matches_pattern(text) for text in texts]
        unjudged = [i for i, hit in enumerate(found) if not hit and texts[i].strip()]
        if self.classifier is None or not unjudged:
            return found
        try:
            scores = self.classifier.injection_scores([texts[i] for i in unjudged])
        except ProviderError as exc:
            log.warning(
                "prompt injection classifier failed",
                extra={"fields": {"model": self.classifier.model_id, "error": type(exc).__name__}},
            )
            if self.fail_closed:
                raise ClassifierUnavailable(self.classifier.model_id) from None
            return found
        for i, score in zip(unjudged, scores, strict=True):
            found[i] = score >= self.threshold
        return found

"""`deny_output`: regular expressions a context's answers must never match (checked before the answer leaves)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def compile_denials(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """The context's patterns, compiled once per context (validation has checked that each compiles)."""
    return tuple(re.compile(pattern) for pattern in patterns)


def denied(text: str, patterns: tuple[re.Pattern[str], ...]) -> bool:
    """Whether any pattern matches anywhere in `text`."""
    return any(pattern.search(text) for pattern in patterns)

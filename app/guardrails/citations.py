"""`require_citation`: an answer must cite one of the memory sources it was given.

A citation is what the quick start's template asks for: a source's index in square brackets (`[1]`, for the
first result) or its name, as the prompt lists it (`returns.md`, or its path `CustomerDocs/returns.md`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_INDEX = re.compile(r"\[(\d{1,3})\]")


def cites(answer: str, sources: Sequence[str]) -> bool:
    """Whether `answer` cites one of `sources` (in the order the prompt listed them) by index or name."""
    if any(1 <= int(index) <= len(sources) for index in _INDEX.findall(answer)):
        return True
    return any(name and name in answer for source in sources for name in (source, source.rsplit("/", 1)[-1]))

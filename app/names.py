"""Names that become path segments, and the bounds every layer agrees on."""

from __future__ import annotations

import re

# A name that becomes a path segment: no separators, never "." or "..".
# `(?!.*\n)`: `$` also matches before a final newline, which must not slip through.
NAME_PATTERN = r"^(?!\.{1,2}$)(?!.*\n)[A-Za-z0-9_.-]{1,128}$"
_NAME_RE = re.compile(NAME_PATTERN)
# The pattern said for people, in the errors that refuse a name (which never quote it: it may be anything).
NAME_RULE = "1-128 of A-Z a-z 0-9 _ . -, not '.' or '..'"
# More memory matches than this only dilute a prompt; 0 means the component's default.
MAX_TOP_K = 50


def is_safe_name(name: str) -> bool:
    """True when `name` can be used as one path segment under the project root."""
    return bool(_NAME_RE.match(name))

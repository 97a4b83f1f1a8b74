"""Values as the guardrails read them: every string of a request's `data`, and a context tool's result, JSON parsed
so that it is judged by what it says (escapes decoded, each key and value on its own) and the model reads what was
judged."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from app.guardrails.pii import BAR

_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_ESCAPE_LEVELS = 3
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def mapped(value: Any, change: Callable[[str], str], every: bool = False) -> Any:
    """`data` with `change` applied to every string in it; with `every` (a tool's result) to its keys and numbers
    as written too (a card number may come as a JSON number), a number `change` alters becoming the text it made."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        if every:
            return _distinct((change(key), mapped(item, change, every)) for key, item in value.items())
        return {key: mapped(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [mapped(item, change, every) for item in value]
    if every and isinstance(value, int | float) and not isinstance(value, bool):
        written = str(value)
        digits = written.removeprefix("-")  # a minus is no part of a number a finding reads
        changed = change(digits)
        return value if changed == digits else written[: len(written) - len(digits)] + changed
    return value


def each_scalar(value: Any, change: Callable[[str], str]) -> Any:
    """A tool result's value with `change` applied to its keys, strings and numbers."""
    return mapped(value, change, every=True)


def _distinct(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """An object from `pairs` whose keys may have been made equal (two addresses, each now `<EMAIL_ADDRESS>`):
    a repeated key is numbered (`<EMAIL_ADDRESS>#2`), so no entry is lost."""
    out: dict[str, Any] = {}
    last: dict[str, int] = {}  # the number each repeated key got last: counting goes on from there
    for key, item in pairs:
        named = key
        if named in out:
            n = last.get(key, 1)
            while named in out:
                n += 1
                named = f"{key}#{n}"
            last[key] = n
        out[named] = item
    return out


def tool_value(content: str) -> tuple[Any, bool]:
    """A tool result as its values read, and whether it is JSON: an object, an array or a string parsed (escapes
    decoded, integers exact, decimals as doubles), else the text as it is. The model then reads the parsed value
    dumped again (`dumped`), which is what was judged: a key written twice is kept once by the parser, and its other
    value must not reach the model unjudged. A result nested past the interpreter's depth raises RecursionError."""
    if content.lstrip()[:1] not in ("{", "[", '"'):
        return content, False
    try:
        return json.loads(content, parse_float=_finite, parse_constant=_no_constant), True
    except ValueError:  # not JSON after all (text that starts with a bracket, lines of JSON, NaN, 1e400)
        return content, False


def _finite(written: str) -> float:
    """A decimal a dump writes back as JSON: `1e400` is infinite, which JSON cannot write."""
    number = float(written)
    if math.isinf(number):
        raise ValueError(written)
    return number


def _no_constant(written: str) -> float:
    raise ValueError(written)  # NaN and Infinity are not JSON


def dumped(value: Any) -> str:
    """A parsed result as compact JSON, its text unescaped unless a lone surrogate (valid JSON, not UTF-8) is in it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text


def texts(value: Any, walk: Callable[[Any, Callable[[str], str]], Any]) -> list[str]:
    """The strings `walk` (`mapped`, `each_scalar`, a message's content) would change in `value`."""
    found: list[str] = []

    def keep(text: str) -> str:
        found.append(text)
        return text

    walk(value, keep)
    return found


def read(value: Any) -> str:
    """A parsed result as the injection check reads it: an array's items as lines of one text (a document sent as
    its lines), a bar between an object's keys and values (a key and its value make no phrase)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return BAR.join(f"{key}{BAR}{read(item)}" for key, item in value.items())
    if isinstance(value, list):
        return "\n".join(read(item) for item in value)
    return "" if value is None or isinstance(value, bool) else str(value)


class TooDeep(Exception):
    """A result the guardrails cannot read to the end: nested, or escaped, past what they walk."""


def unescaped(text: str) -> str:
    """`text` with the JSON escapes in it decoded, as a model reading it may (`\\u0040` is `@`, `\\n` a new line):
    a result that is not JSON, or the strings of one that hold JSON of their own, to `_ESCAPE_LEVELS` levels (JSON
    in a string in a string); `TooDeep` past them. Every surrogate, paired or not, becomes U+FFFD (what the checks
    read has no emoji to find). Judged, never sent in the text's place."""
    for _ in range(_ESCAPE_LEVELS):
        if "\\" not in text:
            return text
        decoded = _ESCAPE.sub(_decoded, text)
        if decoded == text:
            return text
        text = decoded
    if "\\" in text and _ESCAPE.search(text):
        raise TooDeep
    return text


def _decoded(match: re.Match[str]) -> str:
    if match[2]:
        return _SIMPLE[match[2]]
    code = int(match[1], 16)
    return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)

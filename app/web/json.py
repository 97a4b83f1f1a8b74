"""Flask's JSON, with orjson writing every answer (JSON bodies and SSE events alike).

Requests are still read by the standard library: orjson would turn integers past 64 bits into
floats, and a body must mean what its client wrote. Writing is where the time goes (every
answer, every streamed event), and there orjson's output is the same JSON, UTF-8 instead of
`\\u` escapes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

from app.errors import BadRequest, PayloadTooDeep


def dumps_bytes(obj: Any) -> bytes:
    """`obj` as compact JSON; types orjson does not know go through Flask's defaults (dates, decimals...).

    What orjson cannot write but JSON can, an integer past 64 bits or a lone surrogate that a client's body held
    (an answer may echo the client's own values), is written by the standard library, escaped to ASCII.
    """
    try:
        return orjson.dumps(obj, default=DefaultJSONProvider.default)
    except TypeError:
        return json.dumps(obj, default=DefaultJSONProvider.default, separators=(",", ":")).encode()


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity, which JSON has not: a temperature of NaN must not reach a model."""
    raise BadRequest(f"{constant} is not valid JSON: numbers must be finite", code="invalid_json")


def _finite(text: str) -> float:
    """A number past a float's range (`1e400`) reads as infinity, which JSON has not either."""
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 32 else f"{text[:32]}…"
        raise BadRequest(f"{shown} is out of range: numbers must be finite", code="invalid_json")
    return value


# One decoder for every body: json.loads with an option builds a decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
# Where a lone surrogate can come from: an escape of U+D800 to U+DFFF, or one passed through from the bytes.
# A pair is joined into one character by the decoder; what is left alone is no text.
_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(text: str, value: Any) -> None:
    """A lone surrogate is no Unicode text: every later step (UTF-8 logs, the model call) would fail on it.
    The scan is one regex over the body; only a body with a candidate is checked by encoding it."""
    if _SURROGATE.search(text) is None:
        return
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        message = "the body holds a lone surrogate (U+D800 to U+DFFF), which is not text"
        raise BadRequest(message, code="invalid_json") from None


class JSONProvider(DefaultJSONProvider):
    """orjson for answers; a body nested past Python's recursion limit, or holding NaN, Infinity or a lone
    surrogate, is a 400."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs:  # an explicit option (indent, sort_keys...) asks for the standard library's output
            return super().dumps(obj, **kwargs)
        return dumps_bytes(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            if kwargs:
                return super().loads(s, parse_constant=_not_json, parse_float=_finite, **kwargs)
            if isinstance(s, bytes | bytearray):  # as json.loads reads bytes
                s = s.decode(json.detect_encoding(s), "surrogatepass")
            value = _DECODER.decode(s)
            _refuse_lone_surrogates(s, value)
            return value
        except RecursionError:
            raise PayloadTooDeep("the body nests too deeply to be decoded") from None

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(dumps_bytes(obj) + b"\n", mimetype=self.mimetype)

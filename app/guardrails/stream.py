"""A streamed answer checked before it leaves: what may still grow into personal data is held back until the
text after it arrives, so that a number or an address split across deltas is redacted (or the stream blocked)
before any part of it is sent.

What is held: the last word (a run without spaces: an e-mail address, a number still arriving) and, when that
word may be part of a number written in groups, the groups before it (digits, `+`, brackets, an IBAN's groups
of four), at most `MAX_HELD` characters. Every other word goes out as soon as the next one begins, with the
space before the held word kept back, so deltas keep the shape the model gave them. With `deny_output`, the
last `HOLD_BACK` characters are held as well, so that a match of up to that length is seen before any of it
is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from app.errors import ContexisError
from app.providers.base import ChoiceDelta, Finish, ServedBy, StreamPiece, TokenStream, Usage

HOLD_BACK = 64
MAX_HELD = 256
# A group of a number as people write one: digits with separators, a leading `+` or brackets; an IBAN's groups.
_NUMBER_GROUP = re.compile(r"[\d+()./-]*\d[\d+()./-]*|[+(]|[A-Z0-9]{1,4}")


def _cut(text: str, window: int) -> int:
    """How much of the screened `text` may be sent now (all but what may still grow into a finding)."""
    floor = max(len(text) - MAX_HELD, 0)
    at = len(text)
    while at > floor and not text[at - 1].isspace():
        at -= 1  # the last word: it may go on in the next delta
    numeric = at == len(text) or _NUMBER_GROUP.fullmatch(text[at:]) is not None
    while numeric and at > floor:
        start = at
        while start > floor and text[start - 1].isspace():
            start -= 1
        end = start
        while start > floor and not text[start - 1].isspace():
            start -= 1
        if start == end or not _NUMBER_GROUP.fullmatch(text[start:end]):
            break
        at = start
    if at < len(text):
        while at > floor and text[at - 1].isspace():
            at -= 1  # the space before the held words goes with them
    return min(at, len(text) - window) if window else at


def held_back(
    stream: TokenStream,
    screen: Callable[[str, bool], str],
    finish: Callable[[str], None] | None = None,
    window: int = 0,
) -> TokenStream:
    """`stream` as a new `TokenStream` whose text has passed `screen(text, partial)` (which redacts, or raises
    to end the stream) with at least `window` characters held; `finish`, when given, judges the whole answer
    once the model is done (a citation's absence).

    Closing the new stream closes `stream`, so a client going away still stops the generation.
    """

    def pieces() -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
        held = ""
        sent: list[str] = []
        deltas = iter(stream)
        try:
            while True:
                try:
                    delta = next(deltas)
                except StopIteration:
                    break
                except ContexisError:
                    if held:  # the upstream failed: what arrived is all there is, and goes out checked
                        yield screen(held, False)
                    raise
                if isinstance(delta, ChoiceDelta):
                    # Another choice's text (n > 1) or text with its logprobs: checked piece by piece, as the
                    # logprobs belong to that piece; a tool call's piece goes as it came.
                    yield ChoiceDelta(delta.choice, screen(delta.text, False), delta.logprobs)
                    continue
                if not isinstance(delta, str) or not delta:
                    yield delta  # a tool call's piece; an empty piece marks a context tool's call ending
                    continue
                held = screen(held + delta, True)
                cut = _cut(held, window)
                if cut > 0:
                    if finish:
                        sent.append(held[:cut])
                    yield held[:cut]
                    held = held[cut:]
            if held:
                held = screen(held, False)
                if finish:
                    sent.append(held)
                yield held
            if finish:
                finish("".join(sent))
        finally:
            stream.close()
        if stream.usage:
            yield stream.usage
        if stream.response_model:
            yield ServedBy(stream.response_model)
        for choice, reason in stream.finish_reasons.items():
            yield Finish(reason, choice)

    return TokenStream(pieces(), model=stream.model)

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

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
        others: dict[int, _Choice] = {}  # what is held of each `ChoiceDelta` choice
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
                    yield from _rest(others, screen)
                    raise
                if isinstance(delta, ChoiceDelta):
                    # Another choice's text (n > 1) or text with its logprobs: held back as the first choice's is.
                    piece = others.setdefault(delta.choice, _Choice()).add(delta, screen, window)
                    if piece is not None:
                        yield piece
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
            yield from _rest(others, screen)
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


class _Choice:
    """What is held of one `ChoiceDelta` choice: its text, and the logprobs of that text. Logprobs spell the
    tokens, so they wait with the text and go out once all of it has, and not at all when a finding was
    redacted from it."""

    def __init__(self) -> None:
        self.text = ""
        self.logprobs: list[Mapping[str, Any]] = []
        self.redacted = False

    def add(self, delta: ChoiceDelta, screen: Callable[[str, bool], str], window: int) -> ChoiceDelta | None:
        raw = self.text + delta.text
        text = screen(raw, True)
        self.redacted = self.redacted or text != raw
        if delta.logprobs:
            self.logprobs.append(delta.logprobs)
        cut = _cut(text, window)
        self.text = text[cut:]
        return self._piece(delta.choice, text[:cut]) if cut > 0 else None

    def rest(self, choice: int, screen: Callable[[str, bool], str]) -> ChoiceDelta | None:
        if not self.text:
            return None
        text = screen(self.text, False)
        self.redacted = self.redacted or text != self.text
        self.text = ""
        return self._piece(choice, text)

    def _piece(self, choice: int, text: str) -> ChoiceDelta:
        if self.text:  # some of it is still held: its logprobs wait
            return ChoiceDelta(choice, text)
        logprobs = None if self.redacted or not self.logprobs else _joined(self.logprobs)
        self.logprobs, self.redacted = [], False
        return ChoiceDelta(choice, text, logprobs)


def _joined(logprobs: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """Several chunks' logprobs as one chunk's: their `content` tokens in order."""
    return {**logprobs[0], "content": [token for chunk in logprobs for token in chunk.get("content") or ()]}


def _rest(others: dict[int, _Choice], screen: Callable[[str, bool], str]) -> Iterator[ChoiceDelta]:
    """What is still held of each other choice's text, checked as the end of that choice."""
    for choice, held in others.items():
        piece = held.rest(choice, screen)
        if piece is not None:
            yield piece
    others.clear()

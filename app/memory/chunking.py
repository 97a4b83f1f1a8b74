"""Documents cut into chunks that keep sections and paragraphs together, with overlap at forced cuts."""

from __future__ import annotations

import re
from collections.abc import Iterator

_ATX_HEADING = re.compile(r"^#{1,6}\s+\S")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
_FENCE = re.compile(r"^(```|~~~)")


def _blocks(text: str) -> Iterator[tuple[str, bool]]:
    """Yield ``(block, is_heading)``: markdown/RST headings and blank-line separated paragraphs."""
    lines = text.splitlines()
    paragraph: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
            paragraph.append(line)
        elif in_fence:
            paragraph.append(line)
        elif _ATX_HEADING.match(line) or (line.strip() and not paragraph and _UNDERLINE.match(nxt)):
            if paragraph:
                yield "\n".join(paragraph).strip(), False
                paragraph = []
            yield line.strip(), True
            i += 0 if _ATX_HEADING.match(line) else 1  # skip the underline
        elif _UNDERLINE.match(line) or not line.strip():
            # blank line, overline or rule: ends the paragraph
            if paragraph:
                yield "\n".join(paragraph).strip(), False
                paragraph = []
        else:
            paragraph.append(line)
        i += 1
    if paragraph:
        yield "\n".join(paragraph).strip(), False


def _hard_split(text: str, size: int) -> Iterator[str]:
    """Pieces of at most ``size`` chars, cut at the last space when there is one."""
    while len(text) > size:
        cut = text.rfind(" ", 0, size + 1)
        cut = cut if cut > 0 else size
        yield text[:cut]
        text = text[cut:].lstrip()
    if text:
        yield text


def _units(block: str, size: int) -> Iterator[tuple[str, str]]:
    """Yield ``(separator_before, text)`` for each line/sentence of a block, none longer than ``size``."""
    for line_no, line in enumerate(block.split("\n")):
        for sentence_no, sentence in enumerate(re.split(r"(?<=[.!?])\s+", line.strip())):
            sep = "\n\n" if line_no == sentence_no == 0 else ("\n" if sentence_no == 0 else " ")
            for piece_no, piece in enumerate(_hard_split(sentence, size)):
                yield (sep if piece_no == 0 else " "), piece


def _tail(text: str, limit: int) -> str:
    """The last ``limit`` chars of ``text`` starting at a word boundary (the overlap)."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    space = tail.find(" ")
    return tail[space + 1 :] if space >= 0 else ""


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Split text into chunks of at most ``size`` chars.

    A heading starts a new chunk so sections stay together; paragraphs are packed greedily and kept
    whole when they fit, longer ones are split at lines and sentences; a chunk cut for size repeats
    up to ``overlap`` chars of its predecessor so text spanning the cut stays findable.
    """
    chunks: list[str] = []
    current = ""
    heading_only = False  # consecutive headings stay together with the text that follows

    def add(sep: str, unit: str) -> None:
        nonlocal current
        if not current:
            current = unit
        elif len(current) + len(sep) + len(unit) <= size:
            current += sep + unit
        else:
            chunks.append(current)
            tail = _tail(current, min(overlap, size - len(unit) - 1))
            current = f"{tail} {unit}" if tail else unit

    for block, is_heading in _blocks(text):
        if not block:
            continue
        if is_heading:
            heading = block[:size]
            if current and heading_only and len(current) + 1 + len(heading) <= size:
                current += "\n" + heading
            else:
                if current:
                    chunks.append(current)
                current = heading
            heading_only = True
            continue
        if len(block) <= size:  # a paragraph that fits is never split
            add("\n\n", block)
        else:
            for sep, unit in _units(block, size):
                add(sep, unit)
        heading_only = False
    if current:
        chunks.append(current)
    return chunks

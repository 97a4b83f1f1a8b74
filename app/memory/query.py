"""What both backends make of an untrusted search query: its distinct non-stop words, so no query syntax of
the caller's (FTS5's or PostgreSQL's) ever reaches the database's parser."""

from __future__ import annotations

import re

# Longer queries add cost, not precision: only this many distinct words are searched.
MAX_QUERY_TERMS = 16

_WORD_RE = re.compile(r"\w+")

# fmt: off
STOP_WORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
        "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
        "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
        "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
        "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on",
        "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she",
        "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves",
        "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
        "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
        "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves",
    }
)
# fmt: on


def query_terms(query: str) -> list[str]:
    """The distinct non-stop words of an untrusted query, in order, at most ``MAX_QUERY_TERMS``."""
    terms: list[str] = []
    for word in _WORD_RE.findall(query.lower()):
        word = word.strip("_")
        if word and word not in STOP_WORDS and word not in terms:
            terms.append(word)
    return terms[:MAX_QUERY_TERMS]

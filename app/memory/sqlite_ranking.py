"""How a SQLite store ranks its chunks: BM25 over FTS5 within a scoring budget, and vectors by cosine.

Each process keeps a store's vectors as a ``vectors.VectorIndex``, rebuilt when the store's
``vectors_version`` changes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from app.memory.vectors import VectorIndex

# Cost control: FTS5 computes BM25 for every chunk a query matches (about 2-3 us each), so a query is
# allowed to score at most this many chunks per store; see ``rank``.
SCORE_BUDGET = 2000

_COUNT_SQL = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
_RANK_SQL = "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid > ? ORDER BY rank LIMIT ?"
_FLOOR_SQL = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?"


def _phrase(term: str) -> str:
    """An FTS5 string: ``\\w`` never contains a double quote, so the term can only ever be words."""
    return f'"{term}"'


def rank(conn: sqlite3.Connection, terms: list[str], top_k: int) -> list[tuple[int, float]]:
    """``(rowid, score)`` of the best chunks for the terms (ORed), scoring at most ~``SCORE_BUDGET`` chunks.

    When the terms' chunk counts fit the budget this is plain BM25 over the OR of all terms.
    Otherwise the rarest terms that fit the budget (R) decide which chunks are candidates, and
    ``R AND C`` and ``R NOT C`` (C: the common terms) split them in two without scoring any chunk
    twice. Both queries name every term once, so each candidate gets its exact BM25 score: the
    result is exact among chunks holding a rare term and gives up chunks with common terms only.
    When even the rarest term is over budget, the OR is ranked within its newest
    ``SCORE_BUDGET`` chunks.
    """
    phrases = [_phrase(t) for t in terms]
    counts = [conn.execute(_COUNT_SQL, (p,)).fetchone()[0] for p in phrases]
    every = " OR ".join(phrases)
    if sum(counts) <= SCORE_BUDGET:
        return conn.execute(_RANK_SQL, (every, -1, top_k)).fetchall()
    rare: list[str] = []
    total = 0
    for count, phrase in sorted(zip(counts, phrases, strict=True)):
        if total + count > SCORE_BUDGET:
            break
        rare.append(phrase)
        total += count
    if not rare:
        floor = conn.execute(_FLOOR_SQL, (every, SCORE_BUDGET)).fetchone()[0]
        return conn.execute(_RANK_SQL, (every, floor, top_k)).fetchall()
    candidates = f"({' OR '.join(rare)})"
    common = f"({' OR '.join(p for p in phrases if p not in rare)})"
    scores = conn.execute(_RANK_SQL, (f"{candidates} AND {common}", -1, top_k)).fetchall()
    scores += conn.execute(_RANK_SQL, (f"{candidates} NOT {common}", -1, top_k)).fetchall()
    return sorted(scores, key=lambda item: item[1], reverse=True)[:top_k]



def contents(conn: sqlite3.Connection, rowids: list[int]) -> dict[int, tuple[str, str, str]]:
    """The id, content and source of the chunks ``rowids``, by rowid (none for an empty list)."""
    if not rowids:
        return {}
    marks = ",".join("?" * len(rowids))
    rows = conn.execute(f"SELECT rowid, id, content, source FROM chunks WHERE rowid IN ({marks})", rowids)  # noqa: S608
    return {rowid: (i, content, source) for rowid, i, content, source in rows}



# (pid, database) -> (vectors_version, its index): one index per store and process, shared by its threads.
_indexes: dict[tuple[int, str], tuple[object, VectorIndex]] = {}
_indexes_lock = threading.Lock()


def vector_index(conn: sqlite3.Connection, path: Path, version: object, dimension: int) -> VectorIndex:
    """The store's vectors at ``version``, loaded once per version and process (call inside a read transaction)."""
    key = (os.getpid(), str(path))
    cached = _indexes.get(key)
    if cached is None or cached[0] != version:
        with _indexes_lock:
            cached = _indexes.get(key)
            if cached is None or cached[0] != version:
                rows = conn.execute("SELECT rowid, vector FROM vectors ORDER BY rowid").fetchall()
                index = VectorIndex([rowid for rowid, _ in rows], [blob for _, blob in rows], dimension)
                cached = _indexes[key] = (version, index)
    return cached[1]


"""Component memory: document chunks in SQLite FTS5, searched with BM25.

One database per component and owner under the project root:
``memory/<Component>/memory.db`` holds documents shared by every tenant and
``memory/<Component>/tenant_<id>/memory.db`` one tenant's own. A tenant's search
covers its own store and the shared one and never another tenant's.

The module needs no server and only the standard library plus PyYAML. Callers
(HTTP, CLI) time ``search()`` themselves for metrics and spans.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from app.errors import ContexisError
from app.validation import MAX_TOP_K, is_safe_name

DB_NAME = "memory.db"
CONFIG_NAME = "memory_config.yaml"
SUPPORTED_SUFFIXES = frozenset({".md", ".txt", ".rst", ".html", ".htm", ".jsonl"})
# Longer queries add cost, not precision: only this many distinct words are searched.
MAX_QUERY_TERMS = 16
SCHEMA_VERSION = 1

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

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    source       TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    chunking     TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    chunks       INTEGER NOT NULL,
    ingested_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    rowid        INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    source       TEXT NOT NULL,
    position     INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    content      TEXT NOT NULL
);
-- ids are derived from (source, position), so this index also keeps them unique.
CREATE UNIQUE INDEX IF NOT EXISTS chunks_by_source ON chunks (source, position);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5 (
    content, content='chunks', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
END;
PRAGMA user_version = {SCHEMA_VERSION};
"""  # noqa: S608 - constants only, no input

# Cost control: FTS5 computes BM25 for every chunk a query matches (about 2-3 us each), so a query is
# allowed to score at most this many chunks per store; see ``_rank``.
SCORE_BUDGET = 2000

_COUNT_SQL = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
_RANK_SQL = "SELECT rowid, -rank FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid > ? ORDER BY rank LIMIT ?"
_FLOOR_SQL = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rowid DESC LIMIT 1 OFFSET ?"


class MemoryStoreError(ContexisError):
    """Base of every memory failure the caller can report (bad config, bad path, bad name)."""

    code = "memory_error"


class MemoryConfigError(MemoryStoreError):
    """``memory_config.yaml`` is unreadable or has a wrong key, type or range."""

    code = "invalid_memory_config"


class DocumentError(MemoryStoreError):
    """A file's content cannot be read as its type says (bad UTF-8, malformed JSON lines)."""

    code = "invalid_document"


class InvalidNameError(MemoryStoreError):
    """A component or tenant name cannot safely become a path segment."""

    status = 400
    code = "invalid_request"


@dataclass(frozen=True)
class MemoryConfig:
    """Chunking and retrieval settings of one component."""

    chunk_size: int = 800
    chunk_overlap: int = 100
    top_k: int = 5

    @property
    def chunking(self) -> str:
        """Stored with each document so a changed chunking re-ingests unchanged files."""
        return f"{self.chunk_size}/{self.chunk_overlap}"


@dataclass(frozen=True)
class SearchResult:
    """One ranked chunk; a higher score is a better match."""

    id: str
    content: str
    score: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The mapping templates and JSON answers use."""
        return asdict(self)


@dataclass
class IngestReport:
    """What one ``ingest()`` call did, for the command's summary line."""

    ingested: int = 0
    unchanged: int = 0
    unsupported: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return asdict(self)


@dataclass(frozen=True)
class StoreStats:
    """Size of one store; ``db_bytes`` counts the database with its WAL file."""

    component: str
    tenant_id: str | None
    path: Path
    documents: int
    chunks: int
    source_bytes: int
    db_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {**asdict(self), "path": str(self.path)}


def _digest(text: str) -> str:
    """A stable short fingerprint for ids and change detection (not a security boundary)."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _check_name(kind: str, name: str) -> str:
    if not is_safe_name(name):
        raise InvalidNameError(f"{kind} {name!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -, not '.' or '..')")
    return name


def _int_setting(data: dict[str, Any], key: str, default: int, low: int, high: int, path: Path) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemoryConfigError(f"{path}: {key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise MemoryConfigError(f"{path}: {key} must be between {low} and {high}, got {value}")
    return value


@functools.lru_cache(maxsize=256)
def _load_config(path: Path, mtime_ns: int) -> MemoryConfig:
    """Parse once per file version; ``mtime_ns`` is part of the cache key so edits are seen."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MemoryConfigError(f"{path}: cannot read memory config: {exc}") from exc
    if data is None:
        return MemoryConfig()
    if not isinstance(data, dict):
        raise MemoryConfigError(f"{path}: memory config must be a mapping, got {type(data).__name__}")
    defaults = MemoryConfig()
    unknown = sorted(set(map(str, data)) - {"chunk_size", "chunk_overlap", "top_k"})
    if unknown:
        raise MemoryConfigError(f"{path}: unknown memory config keys: {', '.join(unknown)}")
    size = _int_setting(data, "chunk_size", defaults.chunk_size, 100, 20_000, path)
    overlap = _int_setting(data, "chunk_overlap", defaults.chunk_overlap, 0, size // 2, path)
    top_k = _int_setting(data, "top_k", defaults.top_k, 1, MAX_TOP_K, path)
    return MemoryConfig(chunk_size=size, chunk_overlap=overlap, top_k=top_k)


def load_config(component_dir: Path) -> MemoryConfig:
    """The component's settings, or the defaults when it has no config file."""
    path = component_dir / CONFIG_NAME
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        return MemoryConfig()
    return _load_config(path, mtime_ns)


# ---------------------------------------------------------------------------
# Text extraction and chunking


class _HTMLText(HTMLParser):
    """Collects visible text; block tags become paragraph breaks and h1-h6 markdown headings."""

    _BLOCKS = frozenset(
        {
            "address",
            "article",
            "aside",
            "blockquote",
            "dd",
            "div",
            "dl",
            "dt",
            "fieldset",
            "figcaption",
            "figure",
            "footer",
            "form",
            "header",
            "hr",
            "li",
            "main",
            "nav",
            "ol",
            "p",
            "pre",
            "section",
            "table",
            "td",
            "th",
            "tr",
            "ul",
        }
    )
    _HIDDEN = frozenset({"script", "style", "template", "noscript", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")
        elif tag == "br":
            self.parts.append("\n")
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS or (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456"):
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def extract_text(path: Path, data: bytes) -> str:
    """The searchable text of a file; raises ``DocumentError`` for undecodable or malformed content."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return "".join(parser.parts)
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocumentError(f"line {number}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DocumentError(f"line {number}: expected an object with a string 'text' field")
            records.append(record["text"])
        return "\n\n".join(records)
    return text


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


def query_terms(query: str) -> list[str]:
    """The distinct non-stop words of an untrusted query, in order, at most ``MAX_QUERY_TERMS``."""
    terms: list[str] = []
    for word in _WORD_RE.findall(query.lower()):
        word = word.strip("_")
        if word and word not in STOP_WORDS and word not in terms:
            terms.append(word)
    return terms[:MAX_QUERY_TERMS]


def _phrase(term: str) -> str:
    """An FTS5 string: ``\\w`` never contains a double quote, so the term can only ever be words."""
    return f'"{term}"'


def _rank(conn: sqlite3.Connection, terms: list[str], top_k: int) -> list[tuple[int, float]]:
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


# ---------------------------------------------------------------------------
# Connections and the store

_local = threading.local()


def _configure(conn: sqlite3.Connection) -> None:
    """WAL lets readers run beside one writer; NORMAL sync is durable at checkpoints and needs no
    fsync per document; the cache and mmap keep the FTS index in memory for searches."""
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA cache_size = -32000")
    conn.execute("PRAGMA mmap_size = 268435456")


def _connection(path: Path, create: bool) -> sqlite3.Connection | None:
    """This thread's connection to ``path``, or ``None`` when the database is absent and not to be created.

    Connections are cached per thread and per process: a sqlite3 connection must not cross a
    ``fork`` (gunicorn preload) and is cheapest reused within one thread.
    """
    cache: dict[tuple[int, str], sqlite3.Connection] = _local.__dict__.setdefault("connections", {})
    key = (os.getpid(), str(path))
    conn = cache.get(key)
    if conn is not None and not path.exists():
        conn.close()  # the database was removed under us: start over
        del cache[key]
        conn = None
    if conn is None:
        if not path.exists():
            if not create:
                return None
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        _configure(conn)
        cache[key] = conn
    if create and conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
    return conn


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; ``IMMEDIATE`` takes the write lock up front so concurrent writers wait
    (``busy_timeout``) instead of failing on a lock upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _file_bytes(path: Path) -> int:
    """Disk use of a database: recent writes live in its WAL file until a checkpoint."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


class MemoryStore:
    """The memory of one component, as seen by one tenant (``None`` or ``""``: the shared store).

    Writes (``ingest``, ``delete``) go to the owner's own database; ``search`` reads the tenant's
    database and the shared one. Instances are cheap and hold no connection themselves.
    """

    def __init__(self, root: Path, component: str, tenant_id: str | None = None) -> None:
        self.root = Path(root)
        self.component = _check_name("component", component)
        self.tenant_id = _check_name("tenant", tenant_id) if tenant_id else None
        self.component_dir = self.root / "memory" / component
        self.config = load_config(self.component_dir)

    @property
    def path(self) -> Path:
        """The database this store writes to."""
        if self.tenant_id is None:
            return self.component_dir / DB_NAME
        return self.component_dir / f"tenant_{self.tenant_id}" / DB_NAME

    @property
    def search_paths(self) -> list[Path]:
        """The databases a search reads: the tenant's own (if any) and the shared one."""
        shared = self.component_dir / DB_NAME
        return [shared] if self.tenant_id is None else [self.path, shared]

    def source_name(self, path: Path) -> str:
        """How a file is named in the store: relative to the project root when under it, else absolute.

        The same file gets the same name however it was given (file or directory, any cwd), which is
        what makes re-ingest replace instead of duplicate.
        """
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return resolved.as_posix()

    # -- ingest ------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[Path],
        progress: Callable[[int, int, str], None] | None = None,
    ) -> IngestReport:
        """Add files and directories (recursively, hidden entries skipped) to the store.

        Each document is written in its own transaction, so readers see all of its chunks or none.
        A file whose bytes and the chunking settings are unchanged is skipped; a changed one has its
        chunks replaced. Unsupported extensions are counted, unreadable files reported in ``failed``.
        ``progress(done, total, source)`` is called after each file.
        """
        started = time.perf_counter()
        report = IngestReport()
        files = self._collect(paths, report)
        conn = _connection(self.path, create=True)
        assert conn is not None
        for done, file in enumerate(files, 1):
            source = self.source_name(file)
            try:
                self._ingest_file(conn, file, source, report)
            except (OSError, DocumentError) as exc:
                report.failed.append((source, str(exc)))
            if progress is not None:
                progress(done, len(files), source)
        report.seconds = time.perf_counter() - started
        return report

    def _collect(self, paths: Iterable[Path], report: IngestReport) -> list[Path]:
        files: list[Path] = []
        for given in map(Path, paths):
            if given.is_dir():
                candidates = sorted(
                    p
                    for p in given.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(given).parts)
                )
            elif given.is_file():
                candidates = [given]
            else:
                raise MemoryStoreError(f"{given}: no such file or directory")
            for candidate in candidates:
                if candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                    files.append(candidate)
                else:
                    report.unsupported += 1
        return files

    def _ingest_file(self, conn: sqlite3.Connection, file: Path, source: str, report: IngestReport) -> None:
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        chunking = self.config.chunking
        row = conn.execute("SELECT content_hash, chunking FROM documents WHERE source = ?", (source,)).fetchone()
        if row == (digest, chunking):
            report.unchanged += 1
            return
        text = extract_text(file, data)
        chunks = chunk_text(text, self.config.chunk_size, self.config.chunk_overlap)
        prefix = _digest(source)[:12]
        rows = [
            (f"{prefix}-{position}", source, position, _digest(chunk)[:16], chunk)
            for position, chunk in enumerate(chunks)
        ]
        with _write(conn):
            removed = conn.execute("DELETE FROM chunks WHERE source = ?", (source,)).rowcount
            conn.executemany(
                "INSERT INTO chunks (id, source, position, content_hash, content) VALUES (?, ?, ?, ?, ?)", rows
            )
            conn.execute(
                "INSERT OR REPLACE INTO documents (source, content_hash, chunking, bytes, chunks, ingested_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (source, digest, chunking, len(data), len(rows), time.time()),
            )
        report.ingested += 1
        report.chunks_added += len(rows)
        report.chunks_removed += removed

    # -- search ------------------------------------------------------------

    def search(self, query: str, top_k: int | None = None) -> list[SearchResult]:
        """The ``top_k`` best chunks for an untrusted query, best first; ``top_k`` 0/None: the default.

        Scores are negated BM25 (higher is better) and merged across the tenant's and the shared
        store. No database, or a query without searchable words, gives ``[]``; nothing is created.
        """
        if top_k is None or top_k == 0:
            top_k = self.config.top_k
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        terms = query_terms(query)
        if not terms:
            return []
        results: list[SearchResult] = []
        for path in self.search_paths:
            conn = _connection(path, create=False)
            if conn is None:
                continue
            try:
                # One read transaction: ranking and content come from the same snapshot.
                conn.execute("BEGIN")
                ranked = _rank(conn, terms, top_k)
                marks = ",".join("?" * len(ranked))
                rows = conn.execute(
                    f"SELECT rowid, id, content, source FROM chunks WHERE rowid IN ({marks})",  # noqa: S608
                    [rowid for rowid, _ in ranked],
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):  # created by a concurrent ingest, schema not yet committed
                    continue
                raise
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
            found = {rowid: (i, content, source) for rowid, i, content, source in rows}
            results.extend(
                SearchResult(id=found[r][0], content=found[r][1], score=score, source=found[r][2])
                for r, score in ranked
                if r in found
            )
        results.sort(key=lambda r: r.score, reverse=True)
        return results[:top_k]

    # -- maintenance -------------------------------------------------------

    def delete(self, source: str | None = None) -> int:
        """Remove one document (by stored name or by path) or, with ``None``, every document.

        Returns the number of documents removed; a store without a database removes nothing.
        """
        conn = _connection(self.path, create=False)
        if conn is None:
            return 0
        with _write(conn):
            if source is None:
                conn.execute("DELETE FROM chunks")
                return conn.execute("DELETE FROM documents").rowcount
            names = (source, self.source_name(Path(source)))
            conn.execute("DELETE FROM chunks WHERE source IN (?, ?)", names)
            return conn.execute("DELETE FROM documents WHERE source IN (?, ?)", names).rowcount

    def stats(self) -> StoreStats:
        """Documents, chunks and sizes of this store's own database (zeros when it has none)."""
        conn = _connection(self.path, create=False)
        documents = chunks = source_bytes = 0
        if conn is not None:
            row = conn.execute("SELECT count(*), coalesce(sum(chunks), 0), coalesce(sum(bytes), 0) FROM documents")
            documents, chunks, source_bytes = row.fetchone()
        return StoreStats(
            component=self.component,
            tenant_id=self.tenant_id,
            path=self.path,
            documents=documents,
            chunks=chunks,
            source_bytes=source_bytes,
            db_bytes=_file_bytes(self.path) if conn is not None else 0,
        )


def list_stores(root: Path) -> list[MemoryStore]:
    """Every store with a database under ``root/memory``, shared before tenants, for ``ctx memory stats``."""
    stores: list[MemoryStore] = []
    base = Path(root) / "memory"
    if not base.is_dir():
        return stores
    for component_dir in sorted(p for p in base.iterdir() if p.is_dir() and is_safe_name(p.name)):
        if (component_dir / DB_NAME).is_file():
            stores.append(MemoryStore(root, component_dir.name))
        for tenant_dir in sorted(component_dir.glob(f"tenant_*/{DB_NAME}")):
            tenant = tenant_dir.parent.name.removeprefix("tenant_")
            if is_safe_name(tenant):
                stores.append(MemoryStore(root, component_dir.name, tenant))
    return stores

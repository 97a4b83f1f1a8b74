"""Behaviour of the memory store: chunking, ingest, ranked search, isolation, hostile queries, concurrency.

Every test that stores takes `memory_at` and so runs on both backends: SQLite files and PostgreSQL.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import DocumentError, InvalidNameError, MemoryConfigError, MemoryStoreError
from app.memory import SearchResult, open_memory, sqlite_ranking
from app.memory.chunking import chunk_text
from app.memory.config import MemoryConfig
from app.memory.extract import extract_text
from app.memory.query import MAX_QUERY_TERMS, query_terms
from app.memory.sqlite import SqliteStore


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    write(
        docs / "returns.md",
        "# Returns policy\n\nYou can return any item within 30 days. Returns need the receipt.\n\n"
        "## Refunds\n\nRefunds go back to the original card within five business days.\n",
    )
    write(docs / "shipping.txt", "Shipping is free above 50 euros. Express shipping arrives the next day.\n")
    write(docs / "warranty.rst", "Warranty\n========\n\nEvery device has a two year warranty against defects.\n")
    write(
        docs / "account.html",
        "<html><head><style>.x{color:red}</style><script>var password = 1;</script></head>"
        "<body><h1>Account</h1><p>Reset your password from the login page &amp; check your mail.</p></body></html>",
    )
    write(docs / "faq.jsonl", '{"text": "Gift cards never expire."}\n\n{"text": "Stores open at nine."}\n')
    write(docs / "manual.pdf", "not text we read")
    return tmp_path


# -- chunking -----------------------------------------------------------------


def test_chunks_are_bounded_keep_all_words_and_overlap() -> None:
    sentences = [f"Sentence number {i} talks about topic{i % 7} in some detail." for i in range(120)]
    text = "# Title\n\n" + " ".join(sentences[:60]) + "\n\n## Second\n\n" + "\n\n".join(sentences[60:])
    chunks = chunk_text(text, size=300, overlap=60)

    assert len(chunks) > 10
    assert all(len(c) <= 300 for c in chunks)
    joined = set(words(" ".join(chunks)))
    assert set(words(text)) <= joined
    assert chunks[0].startswith("# Title")
    assert any(c.startswith("## Second") for c in chunks)
    # A chunk cut for size starts with the tail of its predecessor (at most `overlap` chars).
    overlapping = 0
    for prev, nxt in itertools.pairwise(chunks):
        if nxt.startswith("#"):
            continue
        head = nxt.split(" Sentence")[0]
        assert prev.endswith(head) and len(head) <= 60
        overlapping += 1
    assert overlapping > 5


def test_a_heading_starts_a_new_chunk_and_long_words_are_split() -> None:
    chunks = chunk_text("# A\n\nshort text\n\n# B\n\n" + "x" * 1000, size=200, overlap=20)
    assert chunks[0] == "# A\n\nshort text"
    assert chunks[1].startswith("# B")
    assert all(len(c) <= 200 for c in chunks)
    assert sum(c.count("x") for c in chunks) >= 1000


def test_paragraphs_that_fit_are_never_split() -> None:
    paragraphs = [f"Paragraph {i} " + "lorem ipsum. " * 15 for i in range(3)]
    chunks = chunk_text("\n\n".join(p.strip() for p in paragraphs), size=300, overlap=0)
    assert chunks == [p.strip() for p in paragraphs]


def test_zero_overlap_and_empty_text() -> None:
    chunks = chunk_text(" ".join(f"w{i}." for i in range(500)), size=100, overlap=0)
    assert words(" ".join(chunks)) == [f"w{i}" for i in range(500)]
    assert chunk_text("  \n\n ", size=100, overlap=10) == []


def test_extract_text_strips_html_and_reads_jsonl() -> None:
    html = b"<h2>Title</h2><p>One &amp; two</p><script>secret()</script><style>p{}</style><p>three</p>"
    text = extract_text(Path("a.html"), html)
    assert "## Title" in text and "One & two" in text and "three" in text
    assert "secret" not in text and "p{}" not in text
    assert extract_text(Path("a.jsonl"), b'{"text": "a"}\n{"text": "b"}\n') == "a\n\nb"
    with pytest.raises(DocumentError, match="line 2"):
        extract_text(Path("a.jsonl"), b'{"text": "a"}\n{"body": "b"}\n')


# -- ingest -------------------------------------------------------------------


def test_ingest_counts_skips_unchanged_and_replaces_changed(memory_at, memory_url: str, project: Path) -> None:
    store = memory_at(project).store("CustomerDocs")
    seen: list[tuple[int, int, str]] = []
    first = store.ingest([project / "docs"], progress=lambda done, total, source: seen.append((done, total, source)))
    assert (first.ingested, first.unchanged, first.unsupported, first.failed) == (5, 0, 1, [])
    assert first.chunks_added >= 5
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5] and {s[1] for s in seen} == {5}
    if memory_url:  # PostgreSQL: no SQLite file is created
        assert not (project / "memory").exists()
    else:
        assert store.location == str(project / "memory" / "CustomerDocs" / "memory.db")

    again = store.ingest([project / "docs"])
    assert (again.ingested, again.unchanged, again.chunks_added) == (0, 5, 0)

    write(project / "docs" / "shipping.txt", "Shipping now takes a carrier pigeon.\n")
    changed = store.ingest([project / "docs"])
    assert (changed.ingested, changed.unchanged, changed.chunks_added, changed.chunks_removed) == (1, 4, 1, 1)
    assert store.search("pigeon", 5)[0].source == "docs/shipping.txt"
    assert store.search("express", 5) == []


def test_same_file_given_as_file_or_directory_is_one_document(memory_at, project: Path) -> None:
    store = memory_at(project).store("CustomerDocs")
    store.ingest([project / "docs"])
    report = store.ingest([project / "docs" / "returns.md"])
    assert report.unchanged == 1 and store.stats().documents == 5


def test_ingest_reports_bad_files_and_missing_paths(memory_at, project: Path) -> None:
    write(project / "docs" / "broken.jsonl", "{not json}\n")
    (project / "docs" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = memory_at(project).store("CustomerDocs").ingest([project / "docs"])
    assert report.ingested == 5
    assert sorted(source for source, _ in report.failed) == ["docs/broken.jsonl", "docs/latin1.txt"]
    with pytest.raises(MemoryStoreError, match="no such file"):
        memory_at(project).store("CustomerDocs").ingest([project / "missing"])


def test_chunk_ids_are_stable_and_carry_position(memory_at, project: Path) -> None:
    store = memory_at(project).store("CustomerDocs")
    store.ingest([project / "docs"])
    before = {r.id for r in store.search("refunds returns receipt", 10)}
    store.delete()
    store.ingest([project / "docs"])
    assert {r.id for r in store.search("refunds returns receipt", 10)} == before
    assert all(re.fullmatch(r"[0-9a-f]{12}-\d+", i) for i in before)


# -- config -------------------------------------------------------------------


def test_config_sets_chunking_and_default_top_k(memory_at, project: Path) -> None:
    write(project / "memory" / "CustomerDocs" / "memory_config.yaml", "chunk_size: 100\nchunk_overlap: 0\ntop_k: 2\n")
    write(project / "long" / "a.md", " ".join(f"Refund rule {i} applies." for i in range(40)))
    store = memory_at(project).store("CustomerDocs")
    assert store.config == MemoryConfig(chunk_size=100, chunk_overlap=0, top_k=2)
    report = store.ingest([project / "long"])
    assert report.chunks_added >= 8
    assert len(store.search("refund", 0)) == 2 and len(store.search("refund")) == 2
    assert len(store.search("refund", 7)) == 7
    with pytest.raises(ValueError, match="top_k"):
        store.search("refund", -1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("chunk_size: big\n", "chunk_size must be an integer"),
        ("chunk_size: true\n", "chunk_size must be an integer"),
        ("chunk_size: 10\n", "between 100 and 20000"),
        ("chunk_size: 200\nchunk_overlap: 150\n", "chunk_overlap must be between 0 and 100"),
        ("top_k: 51\n", "top_k must be between 1 and 50"),
        ("chunk_sise: 300\n", "unknown memory config keys: chunk_sise"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("chunk_size: [\n", "cannot read memory config"),
    ],
)
def test_bad_config_is_a_clear_error(memory_at, project: Path, content: str, message: str) -> None:
    write(project / "memory" / "CustomerDocs" / "memory_config.yaml", content)
    with pytest.raises(MemoryConfigError, match=re.escape(message)):
        memory_at(project).store("CustomerDocs")


# -- search -------------------------------------------------------------------


def test_search_ranks_the_most_relevant_chunk_first(memory_at, project: Path) -> None:
    write(project / "docs" / "misc.md", "Returns are mentioned here once among many other unrelated words.\n")
    store = memory_at(project).store("CustomerDocs")
    store.ingest([project / "docs"])

    results = store.search("How do I return an item? refund", 3)
    assert results[0].source == "docs/returns.md"
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert all(isinstance(r, SearchResult) and r.score > 0 for r in results)
    assert results[0].as_dict().keys() == {"id", "content", "score", "source"}
    assert store.search("password reset", 1)[0].source == "docs/account.html"
    assert store.search("gift cards", 1)[0].content.startswith("Gift cards never expire.")
    assert store.search("warranty", 1)[0].source == "docs/warranty.rst"
    assert store.search("zebra", 5) == []


def test_missing_component_returns_nothing_and_creates_nothing(memory_at, tmp_path: Path) -> None:
    assert memory_at(tmp_path).store("Nobody").search("anything", 5) == []
    assert memory_at(tmp_path).store("Nobody", "acme").search("anything", 5) == []
    assert memory_at(tmp_path).store("Nobody").delete("x.md") == 0
    assert memory_at(tmp_path).store("Nobody").stats().documents == 0
    assert not (tmp_path / "memory").exists()


def test_tenants_see_their_own_and_shared_documents_only(memory_at, memory_url: str, tmp_path: Path) -> None:
    shared = write(tmp_path / "shared" / "hours.md", "Opening hours: the helpdesk opens at eight.\n")
    secret_a = write(tmp_path / "a" / "plan.md", "Acme helpdesk escalation codeword is aardvark.\n")
    secret_b = write(tmp_path / "b" / "plan.md", "Globex helpdesk escalation codeword is bumblebee.\n")
    memory_at(tmp_path).store("Support").ingest([shared])
    memory_at(tmp_path).store("Support", "acme").ingest([secret_a])
    memory_at(tmp_path).store("Support", "globex").ingest([secret_b])

    def sources(tenant: str | None, query: str) -> set[str]:
        return {r.source for r in memory_at(tmp_path).store("Support", tenant).search(query, 50)}

    assert sources("acme", "helpdesk codeword aardvark bumblebee") == {"a/plan.md", "shared/hours.md"}
    assert sources("globex", "helpdesk codeword aardvark bumblebee") == {"b/plan.md", "shared/hours.md"}
    assert sources(None, "helpdesk codeword aardvark bumblebee") == {"shared/hours.md"}
    assert sources("initech", "aardvark bumblebee") == set()
    assert sources("", "helpdesk") == {"shared/hours.md"}
    assert (tmp_path / "memory" / "Support" / "tenant_acme" / "memory.db").is_file() != bool(memory_url)


def test_tenant_and_shared_results_merge_by_score(memory_at, tmp_path: Path) -> None:
    write(tmp_path / "s" / "strong.md", "Llama llama llama care guide.\n")
    write(tmp_path / "t" / "weak.md", "A long note that mentions a llama once among many many other words here.\n")
    memory_at(tmp_path).store("Zoo").ingest([tmp_path / "s"])
    memory_at(tmp_path).store("Zoo", "t1").ingest([tmp_path / "t"])
    results = memory_at(tmp_path).store("Zoo", "t1").search("llama", 1)
    assert [r.source for r in results] == ["s/strong.md"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../etc", "", "x" * 129, "tenant one", "a\\b"])
def test_unsafe_names_are_rejected(memory_at, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        memory_at(tmp_path).store(name)
    if name:  # an empty tenant means the shared store
        with pytest.raises(InvalidNameError):
            memory_at(tmp_path).store("Ok", name)


HOSTILE = [
    '"',
    '"unbalanced',
    "a OR b",
    "alpha OR beta",
    "NEAR(alpha beta)",
    "NEAR(alpha beta, 0)",
    "*",
    "alph*",
    "-alpha",
    "content:alpha",
    "nosuchcolumn:alpha",
    "{content}: alpha",
    ")(",
    "^alpha",
    "alpha AND NOT beta",
    "the and of or",
    "",
    "   ",
    "!!! ??? ...",
    "αλφα ünïcödé 日本語 🦙",
    "alpha\x00beta",
    "'; DROP TABLE chunks; --",
    "a" * 10_000,
    " ".join(f"word{i}" for i in range(500)),
]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise_or_widen(memory_at, tmp_path: Path, query: str) -> None:
    docs = tmp_path / "docs"
    for name, text in {"alpha": "alpha stuff", "beta": "beta stuff", "gamma": "gamma stuff", "cafe": "café"}.items():
        write(docs / f"{name}.md", text + "\n")
    store = memory_at(tmp_path).store("Hostile")
    store.ingest([docs])

    results = store.search(query, 10)

    allowed = {f"docs/{w}.md" for w in query_terms(query)}
    assert {r.source for r in results} <= allowed  # only documents holding a word of the query itself
    assert store.stats().chunks == 4  # and the store is untouched


def test_query_terms_drop_stop_words_and_syntax() -> None:
    assert query_terms('NEAR(a "Refund" OR refund) content:Shipping -x*') == [
        "near",
        "refund",
        "content",
        "shipping",
        "x",
    ]
    assert query_terms("the of and") == []
    assert len(query_terms(" ".join(f"w{i}" for i in range(100)))) == MAX_QUERY_TERMS


def test_budgeted_scoring_matches_exhaustive_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    for i in range(40):
        body = "common " * (1 + i % 5) + ("rare " * (i % 3) if i % 4 == 0 else "") + f"filler{i}"
        write(docs / f"d{i:02d}.md", body + "\n")
    store = SqliteStore(tmp_path, "Budget")
    store.ingest([docs])
    for query in ("common rare", "rare", "common", "common filler7 rare"):
        exhaustive = store.search(query, 5)
        monkeypatch.setattr(sqlite_ranking, "SCORE_BUDGET", 12)
        budgeted = store.search(query, 5)
        monkeypatch.undo()
        assert len(budgeted) == len(exhaustive) == 5
        if query != "common":  # a rare term decides the candidates: the ranking is exact
            assert [(r.id, round(r.score, 9)) for r in budgeted] == [(r.id, round(r.score, 9)) for r in exhaustive]


# -- concurrency ----------------------------------------------------------------


def test_readers_never_see_a_half_ingested_document(memory_at, tmp_path: Path) -> None:
    """A writer re-ingests a many-chunk document while a reader counts its chunks in search results."""
    doc = tmp_path / "docs" / "big.md"
    write(tmp_path / "docs" / "other.md", "quokka lives elsewhere\n")
    sections = 30
    store = memory_at(tmp_path).store("Race")
    store.ingest([tmp_path / "docs" / "other.md"])
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                results = memory_at(tmp_path).store("Race").search("quokka", 50)
                seen.append(sum(r.source == "docs/big.md" for r in results))
        except (sqlite3.Error, MemoryStoreError) as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for version in range(25):
            write(doc, "\n\n".join(f"# Part {i}\n\nquokka version {version} part {i}" for i in range(sections)))
            report = store.ingest([doc])
            assert report.chunks_added == sections
            if version % 5 == 4:
                assert store.delete("docs/big.md") == 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert sections in seen and set(seen) <= {0, sections}


def _count_in_child(root: Path, url: str, queue: multiprocessing.Queue) -> None:
    memory = open_memory(Settings(project_root=root, memory_url=url))
    queue.put(len(memory.store("Forked").search("quokka", 10)))


def test_a_forked_worker_opens_its_own_connection(memory_at, memory_url: str, tmp_path: Path) -> None:
    """gunicorn forks workers after the app is loaded; a parent's cached connection must not be reused."""
    store = memory_at(tmp_path).store("Forked")
    store.ingest([write(tmp_path / "docs" / "q.md", "quokka\n")])
    assert len(store.search("quokka", 10)) == 1  # the parent now holds a cached connection
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_count_in_child, args=(tmp_path, memory_url, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and queue.get(timeout=5) == 1
    assert len(store.search("quokka", 10)) == 1


# -- maintenance ----------------------------------------------------------------


def test_delete_and_stats(memory_at, project: Path) -> None:
    store = memory_at(project).store("CustomerDocs")
    report = store.ingest([project / "docs"])
    stats = store.stats()
    assert (stats.documents, stats.chunks) == (5, report.chunks_added)
    assert stats.source_bytes > 0 and stats.db_bytes > 0 and stats.tenant_id is None

    assert store.delete("docs/returns.md") == 1
    assert store.search("refunds", 5) == []
    assert store.delete(str(project / "docs" / "shipping.txt")) == 1  # a path names the same document
    assert store.delete("docs/returns.md") == 0
    assert store.stats().documents == 3
    assert store.delete() == 3
    assert (store.stats().documents, store.stats().chunks) == (0, 0)


def test_list_stores_finds_shared_and_tenant_stores(memory_at, memory_url: str, project: Path) -> None:
    memory_at(project).store("CustomerDocs").ingest([project / "docs" / "returns.md"])
    memory_at(project).store("CustomerDocs", "acme").ingest([project / "docs" / "shipping.txt"])
    memory_at(project).store("Other", "beta").ingest([project / "docs" / "warranty.rst"])
    (project / "memory" / "Empty").mkdir(parents=True)

    listed = [(s.component, s.tenant_id) for s in memory_at(project).stores()]
    assert listed == [("CustomerDocs", None), ("CustomerDocs", "acme"), ("Other", "beta")]
    assert [s.stats().documents for s in memory_at(project).stores()] == [1, 1, 1]
    # SQLite stores live under the root; PostgreSQL's are the database's, whatever the root.
    assert len(memory_at(project / "nowhere").stores()) == (3 if memory_url else 0)

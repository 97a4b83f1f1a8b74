"""Memory benchmark: ingest a synthetic corpus, then time top-5 searches over it, by keywords and hybrid.

The corpus is deterministic: Zipf-distributed words (English stop words at the top ranks, then
pseudo-words) in markdown documents of ten sections, each section one chunk at the default chunk
size. Queries draw 1-4 words with the same skew, so popular words (long posting lists) are
searched as often as real users would. Then every chunk gets a generated unit vector of
``--dimensions`` (no model: the vectors are random, the cost of storing and ranking them is not) and
the same queries are timed in hybrid mode, their own vectors given up front (the embedder's time is
the model server's, not the store's). For the vector search alone: the share of the exact 5 nearest
chunks it finds for these queries (`vector_recall`; uniform random directions have no near neighbours,
the worst case of an approximate index: `--clusters` makes them lean towards topics, as real embeddings
do), and how often it finds the chunk a query was made near (`vector_answer_found`; a stored vector plus
as much noise). Run from the repository root:

    python bench/bench_memory.py [bench/out/memory.json] [--chunks 100000] [--queries 2000] [--dimensions 384]
                                 [--clusters 1000]
    python bench/bench_memory.py bench/out/memory-postgres.json --backend postgres [--url postgresql://...]

`--backend postgres` without `--url` starts a PostgreSQL 16 with pgvector from PyPI `pgserver` (the test
suite's own, as an ordinary role so row-level security costs what it costs in production, 512 MB of shared
buffers) and migrates it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from app.config import Settings
from app.memory import Memory, MemoryStore, SearchResult, open_memory
from app.memory.postgres import PostgresMemory
from app.memory.query import STOP_WORDS
from app.memory.sqlite import SqliteStore

SECTIONS_PER_DOC = 10
SECTION_CHARS = 600
VOCABULARY = 30_000
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["ar", "en", "il", "or", "us"]
TARGETS = {
    "ingest_seconds": 60.0,
    "search_p50_ms": 5.0,
    "search_p99_ms": 20.0,
    "hybrid_p50_ms": 15.0,
    "hybrid_p99_ms": 50.0,
    "vector_mbytes": 200.0,
}


class GeneratedVectors:
    """An `Embedder` without a model: a random unit vector per text, seeded by the text, so runs repeat.

    With `clusters`, each text also leans towards one of as many random topics (the sum of its own and its
    topic's random direction, normalised: cosine 0.5 within a topic, 0 across), as real embeddings cluster
    by subject; without, the directions are uniform, which no index can navigate well. It keeps what it
    embedded (`made`), so the exact nearest chunks are known.
    """

    model_id = "bench/generated"
    batch_size = 256

    def __init__(self, dimensions: int, clusters: int = 0) -> None:
        self.dimensions = dimensions
        self.topics = [self._random(f"topic {number}") for number in range(clusters)]
        self.queries: dict[str, list[float]] = {}
        self.made: dict[str, np.ndarray] = {}

    def _random(self, text: str) -> np.ndarray:
        vector = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dimensions)
        return vector / np.linalg.norm(vector)

    def _vector(self, text: str) -> list[float]:
        vector = self._random(text)
        if self.topics:
            vector = vector + self.topics[zlib.crc32(text.encode(), 1) % len(self.topics)]
        return (vector / np.linalg.norm(vector)).tolist()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = [self._vector(text) for text in texts]
        self.made.update((t, np.asarray(v, dtype=np.float32)) for t, v in zip(texts, vectors, strict=True))
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self.queries[text]  # computed before timing: the store's cost only


def timed(search, batch: list[str]) -> tuple[list[float], list[float], int]:
    """Wall and CPU milliseconds of each query (sorted) and how many found something."""
    for query in batch[:100]:  # warm the page cache, this thread's connection, the vector matrix
        search(query)
    timings: list[float] = []
    cpu: list[float] = []
    hits = 0
    for query in batch:
        t0, c0 = time.perf_counter(), time.thread_time()
        results = search(query)
        timings.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
        hits += bool(results)
    return sorted(timings), sorted(cpu), hits


def checkpointed_bytes(path: Path) -> int:
    """The database's size once its WAL is folded in, so two sizes compare."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def recall(
    search: Callable[[str], list[SearchResult]], vectors: GeneratedVectors, batch: list[str], depth: int
) -> float:
    """The share of each query's exact `depth` nearest chunks (by cosine, from the generated vectors) that the
    vector search returns, over `batch`."""
    texts = list(vectors.made)
    matrix = np.stack([vectors.made[text] for text in texts])
    found = 0
    for query in batch:
        scores = matrix @ np.asarray(vectors.queries[query], dtype=np.float32)
        exact = {texts[i] for i in np.argpartition(-scores, depth - 1)[:depth]}
        found += len(exact & {result.content for result in search(query)})
    return found / (depth * len(batch))


def near_queries(vectors: GeneratedVectors, rng: random.Random, count: int) -> list[str]:
    """`count` queries that each have an answer: a stored chunk's vector plus as much random noise (cosine about
    0.7 to it, about 0 to the others), registered with `vectors` under their own names."""
    names = []
    for number, text in enumerate(rng.sample(sorted(vectors.made), count)):
        noise = vectors._random(f"noise {number}").astype(np.float32)
        query = vectors.made[text] + noise
        names.append(f"near {number}")
        vectors.queries[names[-1]] = (query / np.linalg.norm(query)).tolist()
    return names


def started_postgres(cleanup: ExitStack) -> str:
    """A migrated PostgreSQL from pgserver, stopped when ``cleanup`` closes; the runtime role's URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import Postgres

    server = Postgres()
    cleanup.callback(server.close)
    # initdb's 128 MB of shared buffers hold less than the 100,000 chunks' table (~160 MB): a database
    # server for such a corpus caches it, as SQLite's page cache and mmap do in the runtime.
    server.admin("ALTER SYSTEM SET shared_buffers = '512MB'")
    server.stop()
    server.start()
    PostgresMemory(Settings(memory_url=server.url, memory_timeout=60)).migrate()
    return server.url


def server_version(memory: PostgresMemory) -> str:
    """The PostgreSQL server's and pgvector's versions, as the figures record the database."""
    with memory.transaction(None) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        ).fetchone()
    return f"PostgreSQL {row[0]}, pgvector {row[1]}" if row else "PostgreSQL"


def vector_bytes(memory: Memory, store: MemoryStore, before: int) -> tuple[int, int]:
    """What the vectors take: (rows, indexes). SQLite: the file's growth since `before` (no index; each
    worker holds them in memory); PostgreSQL: the vector table with its TOAST, and its indexes (HNSW)."""
    if isinstance(memory, PostgresMemory):
        with memory.transaction(None) as conn:
            row = conn.execute(
                "SELECT pg_table_size('memory_vectors'), pg_indexes_size('memory_vectors')"
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
    assert isinstance(store, SqliteStore)
    return checkpointed_bytes(store.path) - before, 0


def timing(function: Callable[[], None], seconds: list[float]) -> Callable[[], None]:
    """`function`, appending the seconds of each call to `seconds`."""

    def timed_call() -> None:
        started = time.perf_counter()
        try:
            function()
        finally:
            seconds.append(time.perf_counter() - started)

    return timed_call


def vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """Stop words first, then distinct pseudo-words; cumulative Zipf (s=1) weights over the ranks."""
    words = sorted(STOP_WORDS)
    rng.shuffle(words)
    seen = set(words)
    while len(words) < VOCABULARY:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words, list(itertools.accumulate(1.0 / rank for rank in range(1, len(words) + 1)))


def section(rng: random.Random, words: list[str], cum: list[float]) -> str:
    """A heading and one paragraph of sentences, about ``SECTION_CHARS`` long."""
    heading = " ".join(rng.choices(words[len(STOP_WORDS) :], k=3))
    sentences: list[str] = []
    size = 0
    while size < SECTION_CHARS:
        sentence = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(6, 14))).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    return f"## {heading.title()}\n\n{' '.join(sentences)}\n"


def write_corpus(directory: Path, chunks: int, rng: random.Random, words: list[str], cum: list[float]) -> int:
    """Write ``chunks / SECTIONS_PER_DOC`` markdown files; returns the number of bytes written."""
    written = 0
    for number in range(chunks // SECTIONS_PER_DOC):
        text = "\n".join(section(rng, words, cum) for _ in range(SECTIONS_PER_DOC))
        path = directory / f"{number // 1000:03d}" / f"doc{number:06d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        written += path.write_text(text, encoding="utf-8")
    return written


def queries(rng: random.Random, words: list[str], cum: list[float], count: int) -> list[str]:
    """Skewed 1-4 word queries; about a third also carry a stop word, as typed questions do."""
    content, content_cum = words[len(STOP_WORDS) :], [c - cum[len(STOP_WORDS) - 1] for c in cum[len(STOP_WORDS) :]]
    out = []
    for _ in range(count):
        terms = rng.choices(content, cum_weights=content_cum, k=rng.randint(1, 4))
        if rng.random() < 0.33:
            terms.insert(0, rng.choice(sorted(STOP_WORDS)))
        out.append(" ".join(terms))
    return out


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench/out/memory.json", type=Path)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20240605)
    parser.add_argument("--dimensions", type=int, default=384, help="0: keyword search only")
    parser.add_argument("--clusters", type=int, default=0, help="topics the vectors cluster in (0: uniform)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--url", default="", help="a migrated PostgreSQL (default: a pgserver started here)")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    words, cum = vocabulary(rng)
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        url = args.url
        if args.backend == "postgres" and not url:
            url = started_postgres(cleanup)
        started = time.perf_counter()
        corpus_bytes = write_corpus(workdir / "corpus", args.chunks, rng, words, cum)
        generate_seconds = time.perf_counter() - started

        settings = Settings(project_root=workdir / "project", memory_url=url, memory_timeout=30)
        memory = open_memory(settings)
        store = memory.store("Bench")
        cpu_started = time.process_time()
        report = store.ingest([workdir / "corpus"])
        ingest_cpu = time.process_time() - cpu_started
        if report.failed or report.chunks_added != args.chunks:
            print(f"unexpected ingest: {report.chunks_added} chunks, failed={report.failed[:3]}", file=sys.stderr)
            return 1

        batch = queries(rng, words, cum, args.queries)
        # Wall time is the target; CPU time shows what is ours on a machine shared with other work.
        timings, cpu, hits = timed(lambda query: store.search(query, args.top_k), batch)
        stats = store.stats()
        vector_figures: dict[str, object] = {}
        if args.dimensions:
            vectors = GeneratedVectors(args.dimensions, args.clusters)
            vectors.queries = {query: vectors._vector("query " + query) for query in batch}
            keyword_bytes = checkpointed_bytes(store.path) if isinstance(store, SqliteStore) else 0
            hybrid_memory = open_memory(settings, vectors)
            index_seconds: list[float] = []
            if isinstance(hybrid_memory, PostgresMemory):  # the embedding ingest ends by building the HNSW index
                hybrid_memory.prepare_searches = timing(hybrid_memory.prepare_searches, index_seconds)  # type: ignore[method-assign]
            hybrid_store = hybrid_memory.store("Bench")
            embedded = hybrid_store.ingest([workdir / "corpus"])
            stored, indexed = vector_bytes(memory, store, keyword_bytes)
            first = time.perf_counter()
            hybrid_store.search(batch[0], args.top_k)
            first_seconds = time.perf_counter() - first
            hybrid, hybrid_cpu, _ = timed(lambda query: hybrid_store.search(query, args.top_k, "hybrid"), batch)

            def nearest(query: str) -> list[SearchResult]:
                return hybrid_store.search(query, args.top_k, "vector")

            vector_only, _, _ = timed(nearest, batch)
            random_recall = recall(nearest, vectors, batch[:200], args.top_k)
            answered = recall(nearest, vectors, near_queries(vectors, rng, 200), 1)
            vector_figures = {
                "dimensions": args.dimensions,
                "clusters": args.clusters,
                "embed_seconds": round(embedded.seconds, 2),
                "index_seconds": round(sum(index_seconds), 2),
                "vectors": hybrid_store.stats().chunks_with_vectors,
                "vector_mbytes": round(stored / 1e6, 1),
                "vector_index_mbytes": round(indexed / 1e6, 1),
                "first_search_seconds": round(first_seconds, 3),
                "hybrid_p50_ms": round(percentile(hybrid, 0.50), 3),
                "hybrid_p90_ms": round(percentile(hybrid, 0.90), 3),
                "hybrid_p99_ms": round(percentile(hybrid, 0.99), 3),
                "hybrid_cpu_p50_ms": round(percentile(hybrid_cpu, 0.50), 3),
                "hybrid_cpu_p99_ms": round(percentile(hybrid_cpu, 0.99), 3),
                "vector_p50_ms": round(percentile(vector_only, 0.50), 3),
                "vector_p99_ms": round(percentile(vector_only, 0.99), 3),
                "vector_recall": round(random_recall, 3),
                "vector_answer_found": round(answered, 3),
            }
        database = server_version(memory) if isinstance(memory, PostgresMemory) else f"SQLite {sqlite3.sqlite_version}"

    figures = {
        "backend": args.backend,
        "chunks": report.chunks_added,
        "documents": report.ingested,
        "corpus_bytes": corpus_bytes,
        "db_bytes": stats.db_bytes,
        "generate_seconds": round(generate_seconds, 2),
        "ingest_seconds": round(report.seconds, 2),
        "ingest_cpu_seconds": round(ingest_cpu, 2),
        "ingest_chunks_per_second": round(report.chunks_added / report.seconds),
        "queries": len(timings),
        "queries_with_results": hits,
        "top_k": args.top_k,
        "search_p50_ms": round(percentile(timings, 0.50), 3),
        "search_p90_ms": round(percentile(timings, 0.90), 3),
        "search_p99_ms": round(percentile(timings, 0.99), 3),
        "search_max_ms": round(timings[-1], 3),
        "search_mean_ms": round(statistics.fmean(timings), 3),
        "search_cpu_p50_ms": round(percentile(cpu, 0.50), 3),
        "search_cpu_p99_ms": round(percentile(cpu, 0.99), 3),
        **vector_figures,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "database": database,
    }
    passed = {name: figures[name] < limit for name, limit in TARGETS.items() if name in figures}
    figures["targets"] = {name: {"limit": TARGETS[name], "ok": ok} for name, ok in passed.items()}

    print(f"{'figure':<26}{'value':>14}  target")
    for name, value in figures.items():
        if name == "targets":
            continue
        target = f"< {TARGETS[name]:g}  {'ok' if passed[name] else 'MISSED'}" if name in passed else ""
        print(f"{name:<26}{value!s:>14}  {target}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(passed.values()) else 2


if __name__ == "__main__":
    sys.exit(main())

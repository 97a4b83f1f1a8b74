"""Memory benchmark: ingest a synthetic corpus, then time top-5 searches over it, by keywords and hybrid.

The corpus is deterministic: Zipf-distributed words (English stop words at the top ranks, then
pseudo-words) in markdown documents of ten sections, each section one chunk at the default chunk
size. Queries draw 1-4 words with the same skew, so popular words (long posting lists) are
searched as often as real users would. Then every chunk gets a generated unit vector of
``--dimensions`` (no model: the vectors are random, the cost of storing and ranking them is not) and
the same queries are timed in hybrid mode, their own vectors given up front (the embedder's time is
the model server's, not the store's). Run from the repository root:

    python bench/bench_memory.py [bench/out/memory.json] [--chunks 100000] [--queries 2000] [--dimensions 384]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from app.memory.sqlite import STOP_WORDS, SqliteStore

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
    """An `Embedder` without a model: a random unit vector per text, seeded by the text, so runs repeat."""

    model_id = "bench/generated"
    batch_size = 256

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.queries: dict[str, list[float]] = {}

    def _vector(self, text: str) -> list[float]:
        vector = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dimensions)
        return (vector / np.linalg.norm(vector)).tolist()

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(text) for text in texts]

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
    args = parser.parse_args()

    rng = random.Random(args.seed)
    words, cum = vocabulary(rng)
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        started = time.perf_counter()
        corpus_bytes = write_corpus(workdir / "corpus", args.chunks, rng, words, cum)
        generate_seconds = time.perf_counter() - started

        store = SqliteStore(workdir / "project", "Bench")
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
            vectors = GeneratedVectors(args.dimensions)
            vectors.queries = {query: vectors._vector("query " + query) for query in batch}
            keyword_bytes = checkpointed_bytes(store.path)
            hybrid_store = SqliteStore(workdir / "project", "Bench", embedder=vectors)
            embedded = hybrid_store.ingest([workdir / "corpus"])
            vector_bytes = checkpointed_bytes(store.path) - keyword_bytes
            loaded = time.perf_counter()
            hybrid_store.search(batch[0], args.top_k)
            load_seconds = time.perf_counter() - loaded
            hybrid, hybrid_cpu, _ = timed(lambda query: hybrid_store.search(query, args.top_k, "hybrid"), batch)
            vector_only, _, _ = timed(lambda query: hybrid_store.search(query, args.top_k, "vector"), batch)
            vector_figures = {
                "dimensions": args.dimensions,
                "embed_seconds": round(embedded.seconds, 2),
                "vectors": hybrid_store.stats().chunks_with_vectors,
                "vector_mbytes": round(vector_bytes / 1e6, 1),
                "matrix_load_seconds": round(load_seconds, 3),
                "hybrid_p50_ms": round(percentile(hybrid, 0.50), 3),
                "hybrid_p90_ms": round(percentile(hybrid, 0.90), 3),
                "hybrid_p99_ms": round(percentile(hybrid, 0.99), 3),
                "hybrid_cpu_p50_ms": round(percentile(hybrid_cpu, 0.50), 3),
                "hybrid_cpu_p99_ms": round(percentile(hybrid_cpu, 0.99), 3),
                "vector_p50_ms": round(percentile(vector_only, 0.50), 3),
                "vector_p99_ms": round(percentile(vector_only, 0.99), 3),
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {
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
        "sqlite": sqlite3.sqlite_version,
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

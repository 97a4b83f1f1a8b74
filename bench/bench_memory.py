"""Memory benchmark: ingest a synthetic corpus, then time top-5 searches over it.

The corpus is deterministic: Zipf-distributed words (English stop words at the top ranks, then
pseudo-words) in markdown documents of ten sections, each section one chunk at the default chunk
size. Queries draw 1-4 words with the same skew, so popular words (long posting lists) are
searched as often as real users would. Run from the repository root:

    python bench/bench_memory.py [bench/out/memory.json] [--chunks 100000] [--queries 2000]
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
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from app.memory import open_memory
from app.memory.sqlite import STOP_WORDS

SECTIONS_PER_DOC = 10
SECTION_CHARS = 600
VOCABULARY = 30_000
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["ar", "en", "il", "or", "us"]
TARGETS = {"ingest_seconds": 60.0, "search_p50_ms": 5.0, "search_p99_ms": 20.0}


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


def started_postgres(cleanup: ExitStack) -> str:
    """A migrated PostgreSQL from pgserver, stopped when ``cleanup`` closes; the runtime role's URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from helpers import Postgres

    from app.memory.postgres import PostgresMemory

    server = Postgres()
    cleanup.callback(server.close)
    # initdb's 128 MB of shared buffers hold less than the 100,000 chunks' table (~160 MB): a database
    # server for such a corpus caches it, as SQLite's page cache and mmap do in the runtime.
    server.admin("ALTER SYSTEM SET shared_buffers = '512MB'")
    server.stop()
    server.start()
    PostgresMemory(Settings(memory_url=server.url, memory_timeout=60)).migrate()
    return server.url


def server_version(memory: object) -> str:
    """The PostgreSQL server's version, as the figures record the database."""
    from app.memory.postgres import PostgresMemory

    assert isinstance(memory, PostgresMemory)
    with memory.transaction(None) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


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

        memory = open_memory(Settings(project_root=workdir / "project", memory_url=url, memory_timeout=30))
        store = memory.store("Bench")
        cpu_started = time.process_time()
        report = store.ingest([workdir / "corpus"])
        ingest_cpu = time.process_time() - cpu_started
        if report.failed or report.chunks_added != args.chunks:
            print(f"unexpected ingest: {report.chunks_added} chunks, failed={report.failed[:3]}", file=sys.stderr)
            return 1

        batch = queries(rng, words, cum, args.queries)
        for query in batch[:100]:  # warm the page cache and this thread's connection
            store.search(query, args.top_k)
        # Wall time is the target; CPU time shows what is ours on a machine shared with other work.
        timings: list[float] = []
        cpu: list[float] = []
        hits = 0
        for query in batch:
            t0, c0 = time.perf_counter(), time.thread_time()
            results = store.search(query, args.top_k)
            timings.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            hits += bool(results)
        timings.sort()
        cpu.sort()
        stats = store.stats()
        database = server_version(memory) if url else sqlite3.sqlite_version

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
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "database": database,
    }
    passed = {name: figures[name] < limit for name, limit in TARGETS.items()}
    figures["targets"] = {name: {"limit": TARGETS[name], "ok": ok} for name, ok in passed.items()}

    print(f"{'figure':<26}{'value':>14}  target")
    for name, value in figures.items():
        if name == "targets":
            continue
        target = f"< {TARGETS[name]:g}  {'ok' if passed[name] else 'MISSED'}" if name in TARGETS else ""
        print(f"{name:<26}{value!s:>14}  {target}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(passed.values()) else 2


if __name__ == "__main__":
    sys.exit(main())

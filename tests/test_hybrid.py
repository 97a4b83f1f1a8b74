"""Memory by meaning: vectors at ingest (batches, resume, model change), hybrid retrieval, isolation, degradation."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from fake_hf import FakeHF, RawHF, Reply, feature_extraction, openai_embeddings
from helpers import SEARCH_BODY, TOKEN, chat, metric, run

from app import create_app
from app.config import Settings
from app.errors import MemoryConfigError
from app.memory import SearchResult, vectors
from app.memory.fusion import reciprocal_rank_fusion
from app.memory.sqlite import SqliteStore
from app.providers.huggingface import HuggingFaceEmbedder

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Shares no word with returns.md (nor a stem: "reimbursed" is not "reimbursement" to the porter stemmer).
PARAPHRASE = "will I be repaid?"
PARAPHRASE_SEARCH = {**SEARCH_BODY, "query": PARAPHRASE, "data": {"user_input": PARAPHRASE}}


@pytest.fixture
def fake():
    with FakeHF(Reply(body=feature_extraction)) as server:
        yield server


@pytest.fixture
def embed_settings(settings: Settings, fake: FakeHF) -> Settings:
    return settings.replace(
        hf_token=TOKEN, hf_embed_model_id=EMBED_MODEL, hf_embed_endpoint=fake.url, hf_backoff_factor=0
    )


def embedder(settings: Settings, **changes) -> HuggingFaceEmbedder:
    return HuggingFaceEmbedder(settings.replace(**changes))


def docs(project: Path) -> Path:
    return project / "docs" / "CustomerDocs"


def inputs(fake: FakeHF) -> list[int]:
    """How many texts each upstream call carried."""
    return [len(seen.body["inputs"]) for seen in fake.seen]


def test_ingest_embeds_in_batches_and_only_new_or_changed_chunks(project, embed_settings, fake):
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings, hf_embed_batch=3))
    report = store.ingest([docs(project)])
    chunks = report.chunks_added
    assert report.chunks_embedded == chunks and not report.embed_error
    assert inputs(fake) == [3] * (chunks // 3) + ([chunks % 3] if chunks % 3 else [])
    stats = store.stats()
    assert (stats.embed_model, stats.embed_dimension, stats.chunks_with_vectors) == (EMBED_MODEL, 64, chunks)

    fake.seen.clear()
    assert store.ingest([docs(project)]).chunks_embedded == 0 and fake.seen == []

    # One section of one file changes: only its chunk is embedded again, the file's other chunks keep theirs.
    returns = docs(project) / "returns.md"
    returns.write_text(returns.read_text().replace("final sale", "final sale and never exchanged"))
    assert store.ingest([returns]).chunks_embedded == 1
    assert inputs(fake) == [1]
    assert store.stats().chunks_with_vectors == chunks


def test_an_interrupted_ingest_keeps_its_batches_and_a_rerun_continues(project, embed_settings):
    failing = [Reply(body=feature_extraction), Reply(status=400, body={"error": "Input validation error"})]
    with FakeHF(*failing, Reply(body=feature_extraction)) as fake:
        store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings, hf_embed_endpoint=fake.url))
        store.embedder.batch_size = 4
        report = store.ingest([docs(project)])
        assert report.embed_error.startswith("hf_bad_request:")
        assert report.chunks_embedded == 4 == store.stats().chunks_with_vectors

        fake.seen.clear()
        rerun = store.ingest([docs(project)])
    assert (rerun.ingested, rerun.chunks_embedded, rerun.embed_error) == (0, report.chunks_added - 4, "")
    assert sum(inputs(fake)) == report.chunks_added - 4
    assert store.stats().chunks_with_vectors == report.chunks_added


def test_another_model_re_embeds_everything(project, embed_settings, fake):
    SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings)).ingest([docs(project)])
    fake.seen.clear()
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings, hf_embed_model_id="BAAI/bge-small"))
    report = store.ingest([docs(project)])
    assert report.ingested == 0 and report.chunks_embedded == store.stats().chunks > 0
    assert store.stats().embed_model == "BAAI/bge-small"
    assert fake.seen[0].path == "/BAAI/bge-small/pipeline/feature-extraction"
    # The old model's query vectors no longer match anything: vector search finds nothing rather than nonsense.
    old = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    assert old.search(PARAPHRASE, mode="vector") == []


def test_hybrid_finds_by_meaning_what_keywords_miss(project, embed_settings):
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    store.ingest([docs(project)])
    assert store.search(PARAPHRASE, mode="keyword") == []
    for mode in ("vector", "hybrid"):
        retrieval = store.retrieve(PARAPHRASE, 3, mode)
        assert retrieval.mode == mode and not retrieval.degraded
        assert retrieval.results[0].source == "docs/CustomerDocs/returns.md"
        assert "Refunds" in retrieval.results[0].content
    # Hybrid is the default with an embedder; a keyword match still ranks high.
    hybrid = store.retrieve("tracking link carrier", 3)
    assert hybrid.mode == "hybrid" and hybrid.results[0].source == "docs/CustomerDocs/shipping.md"


def test_search_mode_from_memory_config_and_its_validation(project, embed_settings):
    config = project / "memory" / "CustomerDocs" / "memory_config.yaml"
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    store.ingest([docs(project)])
    config.write_text(config.read_text() + "search_mode: keyword\n")
    assert SqliteStore(project, "CustomerDocs", embedder=store.embedder).retrieve(PARAPHRASE).mode == "keyword"
    config.write_text(config.read_text().replace("search_mode: keyword", "search_mode: semantic"))
    with pytest.raises(MemoryConfigError, match="search_mode must be one of keyword, vector, hybrid"):
        SqliteStore(project, "CustomerDocs")


def test_vectors_are_per_tenant_like_chunks(project, embed_settings, tmp_path):
    secret = tmp_path / "acme" / "refund-terms.md"
    secret.parent.mkdir()
    secret.write_text("# Acme reimbursement\n\nAcme customers are repaid in gold coins.\n")
    vectors = embedder(embed_settings)
    SqliteStore(project, "CustomerDocs", embedder=vectors).ingest([docs(project)])
    SqliteStore(project, "CustomerDocs", "acme", vectors).ingest([secret])
    acme = SqliteStore(project, "CustomerDocs", "acme", vectors).search(PARAPHRASE, 10, mode="vector")
    assert {r.source for r in acme} >= {secret.as_posix(), "docs/CustomerDocs/returns.md"}
    for tenant in ("globex", None):
        found = SqliteStore(project, "CustomerDocs", tenant, vectors).search(PARAPHRASE, 50, mode="vector")
        assert found and all("gold" not in r.content for r in found)


def test_deleting_a_document_deletes_its_vectors(project, embed_settings):
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    report = store.ingest([docs(project)])
    returns = store.search(PARAPHRASE, 50, mode="vector")
    assert store.delete("docs/CustomerDocs/returns.md") == 1
    left = store.stats()
    assert left.chunks_with_vectors == left.chunks < report.chunks_added
    assert all(r.source != "docs/CustomerDocs/returns.md" for r in store.search(PARAPHRASE, 50, mode="vector"))
    assert len(returns) > len(store.search(PARAPHRASE, 50, mode="vector"))


def test_reciprocal_rank_fusion_rewards_agreement():
    def results(*ids: str) -> list[SearchResult]:
        return [SearchResult(id=i, content=i, score=0.0, source="s") for i in ids]

    fused = reciprocal_rank_fusion([results("a", "b", "c"), results("c", "d", "b")], top_k=3)
    # c: 1/63 + 1/61, b: 1/62 + 1/63: found by both beats first in one; a (1/61) beats d (1/62).
    assert [r.id for r in fused] == ["c", "b", "a"]
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)


# -- the chat route ----------------------------------------------------------


def test_a_chat_query_sharing_no_word_cites_the_right_document_first(project, embed_settings, fake):
    app = create_app(embed_settings)
    SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings)).ingest([docs(project)])
    response = chat(app, PARAPHRASE_SEARCH)
    assert response.status_code == 200
    assert response.get_json()["sources"][0]["source"] == "docs/CustomerDocs/returns.md"
    assert "X-Contexis-Degraded" not in response.headers
    assert metric(app, "cmp_hf_embed_latency_seconds_count", model=EMBED_MODEL) == 1
    # The same query again is answered from the process's cache.
    calls = len(fake.seen)
    chat(app, PARAPHRASE_SEARCH)
    assert len(fake.seen) == calls


@pytest.mark.parametrize("fault", ["refused", "slow", "error"])
def test_the_embedder_down_or_slow_still_answers_from_keywords(project, embed_settings, fault, caplog):
    SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings)).ingest([docs(project)])
    body = {**PARAPHRASE_SEARCH, "query": "refund"}
    with RawHF(lambda conn: None, listening=False) as refused, FakeHF(
        Reply(delay=5, body=feature_extraction) if fault == "slow" else Reply(status=500, body={"error": "boom"})
    ) as broken:
        url = refused.url if fault == "refused" else broken.url
        app = create_app(embed_settings.replace(hf_embed_endpoint=url, hf_embed_query_timeout=0.5, hf_max_retries=0))
        started = time.monotonic()
        response = chat(app, body)
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and elapsed < 3
    assert response.headers["X-Contexis-Degraded"] == "memory-keywords-only"
    assert response.get_json()["sources"][0]["source"] == "docs/CustomerDocs/returns.md"
    code = {"refused": "connection_error", "slow": "timeout", "error": "500"}[fault]
    assert metric(app, "cmp_hf_embed_errors_total", code=code) == 1
    assert any("searching keywords only" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text
    streamed = chat(app, {**body, "stream": True})
    assert streamed.headers["X-Contexis-Degraded"] == "memory-keywords-only"
    openai = {"model": "SupportBot", "messages": [{"role": "user", "content": "refund"}]}
    completion = app.test_client().post("/v1/chat/completions", json=openai)
    assert completion.status_code == 200
    assert completion.headers["X-Contexis-Degraded"] == "memory-keywords-only"


def test_without_an_embedding_model_search_is_todays_keywords(project, client):
    SqliteStore(project, "CustomerDocs").ingest([docs(project)])
    response = chat(client, PARAPHRASE_SEARCH)
    assert response.status_code == 200 and response.get_json()["sources"] == []
    assert "X-Contexis-Degraded" not in response.headers
    assert SqliteStore(project, "CustomerDocs").stats().embed_model is None


@pytest.mark.parametrize(
    "query", ['"', "refund OR *", "NEAR(refund warranty)", "-refund", ")(", "\u0000\n\r", "ü" * 3000, "<script>"]
)
def test_hostile_queries_are_200_and_sent_as_plain_text(project, embed_settings, fake, query):
    SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings)).ingest([docs(project)])
    fake.seen.clear()
    response = chat(create_app(embed_settings), {**PARAPHRASE_SEARCH, "query": query})
    assert response.status_code == 200 and "X-Contexis-Degraded" not in response.headers
    for source in response.get_json()["sources"]:
        assert source["source"].startswith("docs/CustomerDocs/")
    assert fake.seen[0].body == {"inputs": [query[:2000]]}


# -- the command line --------------------------------------------------------


def test_memory_commands_with_an_openai_compatible_server(project):
    with FakeHF(Reply(body=openai_embeddings)) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_EMBED_MODEL_ID": EMBED_MODEL, "HF_EMBED_ENDPOINT": f"{fake.url}/v1"}
        root = ("--root", str(project))
        ingest = run("memory", "ingest", *root, "--component", "CustomerDocs", str(docs(project)), env=env)
        assert ingest.returncode == 0, ingest.stderr
        assert "chunks embedded" in ingest.stdout
        stats = run("memory", "stats", *root, env=env)
        assert f"{EMBED_MODEL} (64)" in stats.stdout
        search = run(
            "memory", "search", *root, "--component", "CustomerDocs", "--query", PARAPHRASE, "--json",
            "--mode", "vector", env=env,
        )
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout)[0]["source"] == "docs/CustomerDocs/returns.md"
    assert "mode: vector" in search.stderr
    assert fake.seen[0].path == "/v1/embeddings"
    bad = run("memory", "search", *root, "--component", "CustomerDocs", "--query", "x", "--mode", "semantic")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_an_ingest_whose_embedder_fails_says_so_and_exits_1(project):
    with FakeHF(Reply(status=404, body={"error": "Model not found"})) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_EMBED_MODEL_ID": "nobody/nothing", "HF_EMBED_ENDPOINT": fake.url}
        root = ("--root", str(project))
        ingest = run("memory", "ingest", *root, "--component", "CustomerDocs", str(docs(project)), env=env)
    assert ingest.returncode == 1
    assert "embedding stopped (run ingest again to continue): hf_model_not_found" in ingest.stderr
    assert TOKEN not in ingest.stderr + ingest.stdout


def test_large_stores_rank_by_sign_bits_then_exactly():
    rng = np.random.default_rng(7)
    stored = rng.standard_normal((vectors.EXACT_LIMIT + 5000, 24)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    keys = list(range(100, 100 + len(stored)))
    index = vectors.VectorIndex(keys, [vectors.to_blob(v) for v in stored], 24)
    assert index.bits is not None and len(index) == len(stored)
    for row in (0, 17, len(stored) - 1):
        query = stored[row] + rng.normal(0, 0.05, 24).astype(np.float32)
        query /= np.linalg.norm(query)
        found = index.nearest(query.tolist(), 3)
        assert found[0][0] == keys[row]
        # Candidates come from the sign bits, their scores are the exact cosines, best first.
        assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
        for key, score in found:
            assert score == pytest.approx(float(stored[key - 100] @ query), abs=2e-3)
    small = vectors.VectorIndex(keys[:10], [vectors.to_blob(v) for v in stored[:10]], 24)
    assert small.bits is None and [k for k, _ in small.nearest(stored[3].tolist(), 1)] == [103]


def test_a_model_whose_dimension_changes_between_ingests_is_refused(project, embed_settings):
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    store.ingest([docs(project)])
    returns = docs(project) / "returns.md"
    returns.write_text(returns.read_text() + "\n## New\n\nA new section.\n")
    with FakeHF(Reply(body=lambda request: [[1.0, 0.0]] * len(request["inputs"]))) as other:
        report = SqliteStore(
            project, "CustomerDocs", embedder=embedder(embed_settings, hf_embed_endpoint=other.url)
        ).ingest([returns])
    assert "2-dimensional vectors where the store holds 64-dimensional ones" in report.embed_error
    assert store.search(PARAPHRASE, 1, mode="vector")[0].source == "docs/CustomerDocs/returns.md"


def test_a_store_made_before_vectors_is_upgraded_by_the_next_ingest(project, embed_settings):
    db = project / "memory" / "CustomerDocs" / "memory.db"
    SqliteStore(project, "CustomerDocs").ingest([docs(project)])
    with sqlite3.connect(db) as conn:  # as schema 1 left it: no meta, no vectors
        conn.executescript(
            "DROP TRIGGER chunks_vector_ad; DROP TABLE vectors; DROP TABLE meta; PRAGMA user_version = 1;"
        )
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    degraded_free = store.retrieve(PARAPHRASE, 3)
    assert degraded_free.mode == "hybrid" and degraded_free.results == []  # keywords find nothing, no vectors yet
    report = store.ingest([docs(project)])
    assert report.ingested == 0 and report.chunks_embedded == store.stats().chunks > 0
    assert store.search(PARAPHRASE, 1)[0].source == "docs/CustomerDocs/returns.md"


def test_an_asked_for_vector_search_also_falls_back_to_keywords(project, embed_settings):
    SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings)).ingest([docs(project)])
    with RawHF(lambda conn: None, listening=False) as refused:
        down = embedder(embed_settings, hf_embed_endpoint=refused.url, hf_max_retries=0)
        retrieval = SqliteStore(project, "CustomerDocs", embedder=down).retrieve("refund", 2, "vector")
    assert (retrieval.mode, retrieval.degraded) == ("keyword", "memory-keywords-only")
    assert retrieval.results[0].source == "docs/CustomerDocs/returns.md"


def test_a_store_removed_and_made_anew_is_not_served_from_the_old_vectors(project, embed_settings, tmp_path):
    money, parcels = "## Money\n\nRefunds and reimbursement.\n", "## Parcels\n\nParcel delivery by courier.\n"
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    first.write_text(f"{money}\n{parcels}")
    store.ingest([first])
    assert "Refunds" in store.search(PARAPHRASE, 1, mode="vector")[0].content
    for path in store.path.parent.glob("memory.db*"):  # as `rm memory.db*` does
        path.unlink()
    # As many vectors (so the same version count) in another order: the old index would point at parcels.
    second.write_text(f"{parcels}\n{money}")
    store.ingest([second])
    assert "Refunds" in store.search(PARAPHRASE, 1, mode="vector")[0].content

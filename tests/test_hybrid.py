"""Memory by meaning: vectors at ingest (batches, resume, model change), hybrid retrieval, isolation, degradation.

`embed_settings` carries `memory_url`, so the tests that take it run on both backends (SQLite, PostgreSQL);
those of SQLite's own storage (files, sign bits, schema upgrade) take `sqlite_embed_settings`.
"""

from __future__ import annotations

import json
import shutil
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
from app.memory import MemoryStore, SearchResult, copy_memory, open_memory, vectors
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
def sqlite_embed_settings(settings: Settings, fake: FakeHF) -> Settings:
    return settings.replace(
        hf_token=TOKEN, hf_embed_model_id=EMBED_MODEL, hf_embed_endpoint=fake.url, hf_backoff_factor=0
    )


@pytest.fixture
def embed_settings(sqlite_embed_settings: Settings, memory_url: str) -> Settings:
    """Embeddings from the fake server, memory on the backend under test."""
    return sqlite_embed_settings.replace(memory_url=memory_url)


def embedder(settings: Settings, **changes) -> HuggingFaceEmbedder:
    return HuggingFaceEmbedder(settings.replace(**changes))


def store(settings: Settings, tenant: str | None = None, **changes) -> MemoryStore:
    """CustomerDocs (of `tenant`) on the settings' backend, embedding with their model as `changes` alter it."""
    return open_memory(settings, embedder(settings, **changes)).store("CustomerDocs", tenant)


def keywords_only(settings: Settings) -> MemoryStore:
    """CustomerDocs on the settings' backend without an embedder."""
    return open_memory(settings).store("CustomerDocs")


def docs(project: Path) -> Path:
    return project / "docs" / "CustomerDocs"


def inputs(fake: FakeHF) -> list[int]:
    """How many texts each upstream call carried."""
    return [len(seen.body["inputs"]) for seen in fake.seen]


def test_ingest_embeds_in_batches_and_only_new_or_changed_chunks(project, embed_settings, fake):
    customer_docs = store(embed_settings, hf_embed_batch=3)
    report = customer_docs.ingest([docs(project)])
    chunks = report.chunks_added
    assert report.chunks_embedded == chunks and not report.embed_error
    assert inputs(fake) == [3] * (chunks // 3) + ([chunks % 3] if chunks % 3 else [])
    stats = customer_docs.stats()
    assert (stats.embed_model, stats.embed_dimension, stats.chunks_with_vectors) == (EMBED_MODEL, 64, chunks)

    fake.seen.clear()
    assert customer_docs.ingest([docs(project)]).chunks_embedded == 0 and fake.seen == []

    # One section of one file changes: only its chunk is embedded again, the file's other chunks keep theirs.
    returns = docs(project) / "returns.md"
    returns.write_text(returns.read_text().replace("final sale", "final sale and never exchanged"))
    assert customer_docs.ingest([returns]).chunks_embedded == 1
    assert inputs(fake) == [1]
    assert customer_docs.stats().chunks_with_vectors == chunks
    assert customer_docs.search(PARAPHRASE, 1, mode="vector")[0].source == "docs/CustomerDocs/returns.md"


def test_an_interrupted_ingest_keeps_its_batches_and_a_rerun_continues(project, embed_settings):
    failing = [Reply(body=feature_extraction), Reply(status=400, body={"error": "Input validation error"})]
    with FakeHF(*failing, Reply(body=feature_extraction)) as fake:
        customer_docs = store(embed_settings, hf_embed_endpoint=fake.url, hf_embed_batch=4)
        report = customer_docs.ingest([docs(project)])
        assert report.embed_error.startswith("hf_bad_request:")
        assert report.chunks_embedded == 4 == customer_docs.stats().chunks_with_vectors

        fake.seen.clear()
        rerun = customer_docs.ingest([docs(project)])
    assert (rerun.ingested, rerun.chunks_embedded, rerun.embed_error) == (0, report.chunks_added - 4, "")
    assert sum(inputs(fake)) == report.chunks_added - 4
    assert customer_docs.stats().chunks_with_vectors == report.chunks_added


def test_another_model_re_embeds_everything(project, embed_settings, fake):
    store(embed_settings).ingest([docs(project)])
    fake.seen.clear()
    other = store(embed_settings, hf_embed_model_id="BAAI/bge-small")
    report = other.ingest([docs(project)])
    assert report.ingested == 0 and report.chunks_embedded == other.stats().chunks > 0
    assert other.stats().embed_model == "BAAI/bge-small"
    assert other.stats().chunks_with_vectors == other.stats().chunks
    assert fake.seen[0].path == "/BAAI/bge-small/pipeline/feature-extraction"
    # The old model's query vectors no longer match anything: vector search finds nothing rather than nonsense.
    assert store(embed_settings).search(PARAPHRASE, mode="vector") == []
    assert other.search(PARAPHRASE, 1, mode="vector")[0].source == "docs/CustomerDocs/returns.md"


def test_hybrid_finds_by_meaning_what_keywords_miss(project, embed_settings):
    customer_docs = store(embed_settings)
    customer_docs.ingest([docs(project)])
    assert customer_docs.search(PARAPHRASE, mode="keyword") == []
    for mode in ("vector", "hybrid"):
        retrieval = customer_docs.retrieve(PARAPHRASE, 3, mode)
        assert retrieval.mode == mode and not retrieval.degraded
        assert retrieval.results[0].source == "docs/CustomerDocs/returns.md"
        assert "Refunds" in retrieval.results[0].content
    # Scores are cosines, best first; hybrid's are fused reciprocal ranks.
    scores = [r.score for r in customer_docs.search(PARAPHRASE, 5, mode="vector")]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    # Hybrid is the default with an embedder; a keyword match still ranks high.
    hybrid = customer_docs.retrieve("tracking link carrier", 3)
    assert hybrid.mode == "hybrid" and hybrid.results[0].source == "docs/CustomerDocs/shipping.md"


def test_search_mode_from_memory_config_and_its_validation(project, embed_settings):
    config = project / "memory" / "CustomerDocs" / "memory_config.yaml"
    store(embed_settings).ingest([docs(project)])
    config.write_text(config.read_text() + "search_mode: keyword\n")
    assert store(embed_settings).retrieve(PARAPHRASE).mode == "keyword"
    config.write_text(config.read_text().replace("search_mode: keyword", "search_mode: semantic"))
    with pytest.raises(MemoryConfigError, match="search_mode must be one of keyword, vector, hybrid"):
        store(embed_settings)


def test_vectors_are_per_tenant_like_chunks(project, embed_settings, tmp_path):
    secret = tmp_path / "acme" / "refund-terms.md"
    secret.parent.mkdir()
    secret.write_text("# Acme reimbursement\n\nAcme customers are repaid in gold coins.\n")
    store(embed_settings).ingest([docs(project)])
    store(embed_settings, "acme").ingest([secret])
    acme = store(embed_settings, "acme").search(PARAPHRASE, 10, mode="vector")
    assert {r.source for r in acme} >= {secret.as_posix(), "docs/CustomerDocs/returns.md"}
    assert store(embed_settings, "acme").stats().chunks_with_vectors == 1
    for tenant in ("globex", None):
        found = store(embed_settings, tenant).search(PARAPHRASE, 50, mode="vector")
        assert found and all("gold" not in r.content for r in found)


def test_deleting_a_document_deletes_its_vectors(project, embed_settings):
    customer_docs = store(embed_settings)
    report = customer_docs.ingest([docs(project)])
    returns = customer_docs.search(PARAPHRASE, 50, mode="vector")
    assert customer_docs.delete("docs/CustomerDocs/returns.md") == 1
    left = customer_docs.stats()
    assert left.chunks_with_vectors == left.chunks < report.chunks_added
    assert all(r.source != "docs/CustomerDocs/returns.md" for r in customer_docs.search(PARAPHRASE, 50, mode="vector"))
    assert len(returns) > len(customer_docs.search(PARAPHRASE, 50, mode="vector"))
    customer_docs.delete()
    assert customer_docs.stats().chunks_with_vectors == 0 and customer_docs.search(PARAPHRASE, mode="vector") == []


def test_a_copy_carries_the_vectors_and_embeds_nothing_again(project, embed_settings, fake, tmp_path):
    """`ctx memory copy` (SQLite into the backend under test): chunks and their vectors, as stored."""
    source = SqliteStore(project, "CustomerDocs", embedder=embedder(embed_settings))
    source.ingest([docs(project)])
    target = tmp_path / "target"  # the same documents under another root: the same source names
    shutil.copytree(project, target, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    target_settings = embed_settings.replace(project_root=target)
    fake.seen.clear()
    report = copy_memory(open_memory(embed_settings.replace(memory_url="")), open_memory(target_settings))
    assert (report.copied, fake.seen) == (4, [])
    copied = store(target_settings)
    assert copied.stats().chunks_with_vectors == source.stats().chunks_with_vectors > 0
    assert (copied.stats().embed_model, copied.stats().embed_dimension) == (EMBED_MODEL, 64)
    found, expected = (s.search(PARAPHRASE, 5, mode="vector") for s in (copied, source))
    assert [(r.id, r.source) for r in found] == [(r.id, r.source) for r in expected]
    assert [r.score for r in found] == pytest.approx([r.score for r in expected], abs=1e-3)
    fake.seen.clear()
    assert copied.ingest([docs(target)]).unchanged == 4 and fake.seen == []
    # Vectors of another model than the target's stay behind: the target's next ingest embeds those chunks.
    other = store(target_settings, "acme", hf_embed_model_id="BAAI/bge-small")
    other.ingest([docs(target) / "shipping.md"])
    store(embed_settings.replace(memory_url=""), "acme").ingest([docs(project) / "returns.md"])
    copy_memory(open_memory(embed_settings.replace(memory_url="")), open_memory(target_settings))
    assert other.stats().chunks_with_vectors < other.stats().chunks
    assert other.ingest([docs(target) / "returns.md"]).chunks_embedded > 0
    assert other.stats().chunks_with_vectors == other.stats().chunks


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
    store(embed_settings).ingest([docs(project)])
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
    store(embed_settings).ingest([docs(project)])
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


def test_without_an_embedding_model_search_is_todays_keywords(project, settings, memory_url):
    plain = settings.replace(memory_url=memory_url)
    keywords_only(plain).ingest([docs(project)])
    response = chat(create_app(plain), PARAPHRASE_SEARCH)
    assert response.status_code == 200 and response.get_json()["sources"] == []
    assert "X-Contexis-Degraded" not in response.headers
    stats = keywords_only(plain).stats()
    assert (stats.embed_model, stats.chunks_with_vectors) == (None, 0)


@pytest.mark.parametrize(
    "query", ['"', "refund OR *", "NEAR(refund warranty)", "-refund", ")(", "\u0000\n\r", "ü" * 3000, "<script>"]
)
def test_hostile_queries_are_200_and_sent_as_plain_text(project, embed_settings, fake, query):
    store(embed_settings).ingest([docs(project)])
    fake.seen.clear()
    response = chat(create_app(embed_settings), {**PARAPHRASE_SEARCH, "query": query})
    assert response.status_code == 200 and "X-Contexis-Degraded" not in response.headers
    for source in response.get_json()["sources"]:
        assert source["source"].startswith("docs/CustomerDocs/")
    assert fake.seen[0].body == {"inputs": [query[:2000]]}


# -- the command line --------------------------------------------------------


def test_memory_commands_with_an_openai_compatible_server(project, memory_url):
    with FakeHF(Reply(body=openai_embeddings)) as fake:
        env = {
            "HF_TOKEN": TOKEN,
            "HF_EMBED_MODEL_ID": EMBED_MODEL,
            "HF_EMBED_ENDPOINT": f"{fake.url}/v1",
            "CMP_MEMORY_URL": memory_url,
        }
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


def test_an_ingest_whose_embedder_fails_says_so_and_exits_1(project, memory_url):
    with FakeHF(Reply(status=404, body={"error": "Model not found"})) as fake:
        env = {
            "HF_TOKEN": TOKEN,
            "HF_EMBED_MODEL_ID": "nobody/nothing",
            "HF_EMBED_ENDPOINT": fake.url,
            "CMP_MEMORY_URL": memory_url,
        }
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
    customer_docs = store(embed_settings)
    customer_docs.ingest([docs(project)])
    returns = docs(project) / "returns.md"
    returns.write_text(returns.read_text() + "\n## New\n\nA new section.\n")
    with FakeHF(Reply(body=lambda request: [[1.0, 0.0]] * len(request["inputs"]))) as other:
        report = store(embed_settings, hf_embed_endpoint=other.url).ingest([returns])
    assert "2-dimensional vectors where the store holds 64-dimensional ones" in report.embed_error
    assert customer_docs.stats().embed_dimension == 64
    assert customer_docs.search(PARAPHRASE, 1, mode="vector")[0].source == "docs/CustomerDocs/returns.md"


def test_a_store_made_before_vectors_is_upgraded_by_the_next_ingest(project, sqlite_embed_settings):
    db = project / "memory" / "CustomerDocs" / "memory.db"
    SqliteStore(project, "CustomerDocs").ingest([docs(project)])
    with sqlite3.connect(db) as conn:  # as schema 1 left it: no meta, no vectors
        conn.executescript(
            "DROP TRIGGER chunks_vector_ad; DROP TABLE vectors; DROP TABLE meta; PRAGMA user_version = 1;"
        )
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(sqlite_embed_settings))
    degraded_free = store.retrieve(PARAPHRASE, 3)
    assert degraded_free.mode == "hybrid" and degraded_free.results == []  # keywords find nothing, no vectors yet
    report = store.ingest([docs(project)])
    assert report.ingested == 0 and report.chunks_embedded == store.stats().chunks > 0
    assert store.search(PARAPHRASE, 1)[0].source == "docs/CustomerDocs/returns.md"


def test_an_asked_for_vector_search_also_falls_back_to_keywords(project, embed_settings):
    store(embed_settings).ingest([docs(project)])
    with RawHF(lambda conn: None, listening=False) as refused:
        down = store(embed_settings, hf_embed_endpoint=refused.url, hf_max_retries=0)
        retrieval = down.retrieve("refund", 2, "vector")
    assert (retrieval.mode, retrieval.degraded) == ("keyword", "memory-keywords-only")
    assert retrieval.results[0].source == "docs/CustomerDocs/returns.md"


def test_a_store_removed_and_made_anew_is_not_served_from_the_old_vectors(project, sqlite_embed_settings, tmp_path):
    money, parcels = "## Money\n\nRefunds and reimbursement.\n", "## Parcels\n\nParcel delivery by courier.\n"
    store = SqliteStore(project, "CustomerDocs", embedder=embedder(sqlite_embed_settings))
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

"""What only the PostgreSQL backend has: row-level security, migrations, vector indexes, copies from SQLite,
replicas sharing one database, and a database that goes away or stalls and comes back.

The behaviour both backends share is tested on both in test_memory.py, test_memory_chat.py and test_hybrid.py.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import requests
from fake_hf import FakeHF, Reply, fake_vector, feature_extraction
from helpers import EXAMPLE, GUIDE_BODY, SEARCH_BODY, TOKEN, Postgres, Server, chat, run

from app import create_app
from app.config import Settings
from app.errors import MemoryUnavailable, SettingsError
from app.memory import open_memory
from app.memory import postgres as pg_backend
from app.memory.postgres import SCHEMA_VERSION, PostgresMemory
from app.memory.postgres import pool as pg_pool
from app.memory.postgres import store as pg_store
from app.providers.huggingface import HuggingFaceEmbedder

DOCS = "docs/CustomerDocs"
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def pg(postgres: Postgres) -> Postgres:
    """The session's PostgreSQL, emptied."""
    postgres.reset()
    return postgres


def pg_settings(root: Path, url: str, **changes: object) -> Settings:
    return Settings.from_env({"CMP_PROJECT_ROOT": str(root), "CMP_MEMORY_URL": url}, dotenv_path=None).replace(
        **changes
    )


@pytest.fixture
def fake() -> Iterator[FakeHF]:
    with FakeHF(Reply(body=feature_extraction)) as server:
        yield server


def embed_settings(root: Path, url: str, fake: FakeHF) -> Settings:
    """Memory on `url` (SQLite when empty), embedding with the fake server's model."""
    return pg_settings(root, url, hf_token=TOKEN, hf_embed_model_id=EMBED_MODEL, hf_embed_endpoint=fake.url)


def embedding(root: Path, url: str, fake: FakeHF) -> PostgresMemory:
    """PostgreSQL memory on `url` that embeds with the fake server's model."""
    settings = embed_settings(root, url, fake)
    return PostgresMemory(settings, HuggingFaceEmbedder(settings))


# -- tenants, enforced by the table -------------------------------------------------


def test_row_level_security_holds_when_a_query_forgets_its_filter(pg: Postgres, tmp_path: Path) -> None:
    memory = PostgresMemory(pg_settings(tmp_path, pg.url))
    memory.store("Support").ingest([write(tmp_path / "shared.md", "helpdesk hours\n")])
    memory.store("Support", "acme").ingest([write(tmp_path / "acme.md", "acme codeword aardvark\n")])
    memory.store("Support", "globex").ingest([write(tmp_path / "globex.md", "globex codeword bumblebee\n")])

    def unfiltered(tenant: str | None, table: str) -> set[str]:
        with memory.transaction(tenant) as conn:
            return {row[0] for row in conn.execute(f"SELECT source FROM {table}")}  # noqa: S608 - no filter, on purpose

    for table in ("memory_chunks", "memory_documents"):
        assert unfiltered("acme", table) == {"shared.md", "acme.md"}
        assert unfiltered("globex", table) == {"shared.md", "globex.md"}
        assert unfiltered(None, table) == {"shared.md"}
    with psycopg.connect(pg.url) as conn:  # no tenant set at all: the shared rows only
        assert conn.execute("SELECT source FROM memory_chunks").fetchall() == [("shared.md",)]
        assert conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone() == (
            False,
            False,
        )

    with pytest.raises(psycopg.errors.InsufficientPrivilege), memory.transaction("acme") as conn:
        conn.execute(
            "INSERT INTO memory_chunks (tenant, component, source, position, id, content_hash, content)"
            " VALUES ('globex', 'Support', 'planted.md', 0, 'x-0', 'x', 'planted')"
        )
    with memory.transaction("acme") as conn:  # a delete without a filter removes acme's rows only
        conn.execute("DELETE FROM memory_chunks")
        conn.execute("DELETE FROM memory_documents")
    assert memory.store("Support", "globex").search("codeword bumblebee helpdesk", 5)[0].source == "globex.md"
    assert [s.tenant_id for s in memory.stores()] == [None, "globex"]


def test_row_level_security_holds_for_vectors_and_embedding_models(pg: Postgres, tmp_path: Path, fake: FakeHF) -> None:
    memory = embedding(tmp_path, pg.url, fake)
    memory.store("Support").ingest([write(tmp_path / "shared.md", "refunds in five days\n")])
    memory.store("Support", "acme").ingest([write(tmp_path / "acme.md", "acme refunds in gold\n")])
    memory.store("Support", "globex").ingest([write(tmp_path / "globex.md", "globex refunds in silver\n")])

    def owners(tenant: str | None, table: str) -> set[str | None]:
        with memory.transaction(tenant) as conn:
            return {row[0] for row in conn.execute(f"SELECT tenant FROM {table}")}  # noqa: S608 - no filter, on purpose

    for table in ("memory_vectors", "memory_embeddings"):
        assert owners("acme", table) == {None, "acme"}
        assert owners("globex", table) == {None, "globex"}
        assert owners(None, table) == {None}
    chunks = dict(pg.admin("SELECT tenant, pk FROM memory_chunks", database=Postgres.ROLE))
    attach = (
        "INSERT INTO memory_vectors (chunk, tenant, component, model, embedding)"
        " VALUES (%s, %s, 'Support', 'm', '[1,0]')"
    )
    # Acme can neither write as globex, nor attach its vectors to globex's or the shared chunks.
    for owner, chunk in (("globex", chunks["globex"]), ("acme", chunks["globex"]), ("acme", chunks[None])):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), memory.transaction("acme") as conn:
            conn.execute(attach, (chunk, owner))
    with memory.transaction("acme") as conn:  # unfiltered writes touch acme's rows only
        assert conn.execute("UPDATE memory_vectors SET embedding = embedding").rowcount == 1
        conn.execute("DELETE FROM memory_embeddings")
        conn.execute("DELETE FROM memory_vectors")
    assert pg.admin("SELECT tenant, count(*) FROM memory_vectors GROUP BY 1 ORDER BY 1", Postgres.ROLE) == [
        ("globex", 1),
        (None, 1),
    ]
    globex = memory.store("Support", "globex").search("money back", 5, mode="vector")
    assert sorted(r.source for r in globex) == ["globex.md", "shared.md"]


def test_vector_searches_use_the_dimensions_index_and_stay_exact_when_other_owners_fill_it(
    pg: Postgres, tmp_path: Path, fake: FakeHF, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every globex chunk is nearer the query than any of acme's: the index's candidates are globex's, which
    acme cannot read, so acme's search is answered by an exact scan of its own and the shared vectors."""
    sections = [f"## Globex\n\nrefund refund refund g{i}" for i in range(300)]
    write(tmp_path / "globex.md", "\n\n".join(sections) + "\n")
    write(tmp_path / "acme.md", "\n\n".join(f"## Acme\n\nrefund{' filler' * i}" for i in range(100)) + "\n")
    memory = embedding(tmp_path, pg.url, fake)
    assert memory.store("Support", "globex").ingest([tmp_path / "globex.md"]).chunks_embedded == 300
    assert memory.store("Support", "acme").ingest([tmp_path / "acme.md"]).chunks_embedded == 100

    query = "[" + ",".join(map(str, fake_vector("refund"))) + "]"
    with memory.transaction("acme", search=True) as conn:  # a quarter of the rows are acme's: the index serves
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT chunk FROM memory_vectors WHERE component = 'Support'"
            " AND (tenant IS NULL OR tenant = 'acme') AND model = %s AND dimension = 64"
            " ORDER BY embedding::vector(64) <=> %s::vector(64) LIMIT 10",
            (EMBED_MODEL, query),
        ))
    assert "Index Scan using memory_vectors_hnsw_64" in plan

    monkeypatch.setattr(pg_store, "EF_SEARCH", 10)
    found = memory.store("Support", "acme").search("refund", 10, mode="vector")
    assert [r.content for r in found] == [f"## Acme\n\nrefund{' filler' * i}" for i in range(10)]
    assert [r.source for r in memory.store("Support", "globex").search("refund", 3, mode="vector")] == ["globex.md"] * 3


def test_text_postgres_cannot_store_is_a_failed_file_not_an_error(pg: Postgres, tmp_path: Path) -> None:
    write(tmp_path / "docs" / "nul.txt", "before\x00after\n")
    write(tmp_path / "docs" / "fine.md", "fine words\n")
    report = PostgresMemory(pg_settings(tmp_path, pg.url)).store("Docs").ingest([tmp_path / "docs"])
    assert report.ingested == 1 and [source for source, _ in report.failed] == ["docs/nul.txt"]
    assert "NUL" in report.failed[0][1]


def test_searches_use_the_text_index_under_row_level_security(pg: Postgres, tmp_path: Path) -> None:
    memory = PostgresMemory(pg_settings(tmp_path, pg.url))
    assert memory.index_usable()
    with memory.transaction("acme") as conn:
        conn.execute("SET LOCAL enable_seqscan = off")  # a tiny table: make the planner show what it can use
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT id FROM memory_chunks WHERE tsv @@ websearch_to_tsquery('english', 'refund')"
        ))
    assert "memory_chunks_tsv" in plan


def test_over_the_budget_chunks_holding_every_word_are_ranked_first(
    pg: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(12):
        write(tmp_path / "docs" / f"common{i:02d}.md", f"llama note number {i}\n")
    write(tmp_path / "docs" / "zz-both.md", "llama alpaca care\n")
    store = PostgresMemory(pg_settings(tmp_path, pg.url)).store("Zoo")
    store.ingest([tmp_path / "docs"])
    monkeypatch.setattr(pg_store, "SCORE_BUDGET", 3)
    results = store.search("llama alpaca", 5)
    assert results[0].source == "docs/zz-both.md" and len(results) == 4


# -- schema -------------------------------------------------------------------------


def test_migrate_creates_the_schema_once_and_serving_never_migrates(postgres: Postgres, project: Path) -> None:
    url = postgres.database("fresh")
    client = create_app(pg_settings(project, url)).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "run `ctx memory migrate`" in ready.get_json()["reason"]
    missing = chat(client, SEARCH_BODY)
    assert missing.status_code == 503 and missing.get_json()["error"]["code"] == "memory_unavailable"
    assert postgres.admin("SELECT to_regclass('memory_chunks')::text", database="fresh") == [(None,)]

    first = run("memory", "migrate", env={"CMP_MEMORY_URL": url})
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"memory schema version {SCHEMA_VERSION} (migrated from version 0) in ")
    again = run("memory", "migrate", env={"CMP_MEMORY_URL": url})
    assert f"version {SCHEMA_VERSION} (up to date)" in again.stdout and not again.stderr
    # Run by an ordinary role where no DBA marked the text match leakproof: searches would scan, say so.
    postgres.admin("ALTER FUNCTION ts_match_vq(tsvector, tsquery) NOT LEAKPROOF", database="fresh")
    warned = run("memory", "migrate", env={"CMP_MEMORY_URL": url})
    assert warned.returncode == 0 and "LEAKPROOF" in warned.stderr
    assert client.get("/readyz").status_code == 200

    tables = postgres.admin(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
        " WHERE relname LIKE 'memory\\_%' AND relkind = 'r' AND relname <> 'memory_schema' ORDER BY relname",
        database="fresh",
    )
    assert tables == [
        (table, True, True) for table in ("memory_chunks", "memory_documents", "memory_embeddings", "memory_vectors")
    ]
    indexes = dict(postgres.admin("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'memory%'", "fresh"))
    assert "USING gin (tsv)" in indexes["memory_chunks_tsv"]
    assert "memory_chunks_embedding" not in indexes  # migration 1's fixed-size vector column is gone
    columns = "SELECT column_name FROM information_schema.columns WHERE table_name = 'memory_chunks'"
    assert ("embedding",) not in postgres.admin(columns, "fresh")
    unset = run("memory", "migrate")  # nothing to migrate is no success: a hook Job in the wrong place must fail
    assert unset.returncode == 2 and "set CMP_MEMORY_URL=postgresql://... to migrate its schema" in unset.stderr


def test_migrate_upgrades_a_version_1_database_keeping_its_memory(postgres: Postgres, project: Path) -> None:
    url = postgres.database("upgrade")
    with psycopg.connect(url) as conn:  # as the keyword-only release left it, with one document
        conn.execute("CREATE TABLE memory_schema (version integer NOT NULL); INSERT INTO memory_schema VALUES (1)")
        conn.execute(pg_backend.MIGRATIONS[0])
        conn.execute("SELECT set_config('contexis.tenant', '', false)")
        conn.execute(
            "INSERT INTO memory_documents (component, source, content_hash, chunking, bytes, chunks)"
            " VALUES ('CustomerDocs', 'old.md', 'h', '800/100', 40, 1);"
            " INSERT INTO memory_chunks (component, source, position, id, content_hash, content)"
            " VALUES ('CustomerDocs', 'old.md', 0, 'old-0', 'c', 'Refunds take five days.')"
        )
    ready = create_app(pg_settings(project, url)).test_client().get("/readyz")
    assert ready.status_code == 503 and "is version 1, expected 2" in ready.get_json()["reason"]

    upgraded = run("memory", "migrate", env={"CMP_MEMORY_URL": url})
    assert upgraded.stdout.startswith("memory schema version 2 (migrated from version 1) in "), upgraded.stderr
    with FakeHF(Reply(body=feature_extraction)) as fake:
        memory = embedding(project, url, fake)
        store = memory.store("CustomerDocs")
        assert store.search("refund", 1, mode="keyword")[0].source == "old.md"
        assert store.ingest([]).chunks_embedded == 1  # the old chunk, embedded by the next ingest
        assert store.search("money back", 1, mode="vector")[0].source == "old.md"
    # An index the ingest could not build (another role) or that was dropped: migrate builds it.
    index = "SELECT to_regclass('memory_vectors_hnsw_64') IS NOT NULL"
    assert postgres.admin(index, "upgrade") == [(True,)]
    postgres.admin("DROP INDEX memory_vectors_hnsw_64", "upgrade")
    assert run("memory", "migrate", env={"CMP_MEMORY_URL": url}).returncode == 0
    assert postgres.admin(index, "upgrade") == [(True,)]


def test_copy_moves_sqlite_memory_without_rechunking(pg: Postgres, project: Path, fake: FakeHF) -> None:
    sqlite = open_memory(pg_settings(project, ""))
    # The shared store with its vectors (copied along, not embedded again), the tenant's without.
    embedded = embed_settings(project, "", fake)
    open_memory(embedded, HuggingFaceEmbedder(embedded)).store("CustomerDocs").ingest([project / DOCS])
    sqlite.store("CustomerDocs", "acme").ingest([write(project / "acme" / "deal.md", "acme refund deal\n")])
    # Chunking settings changed after the ingest: the copy keeps the stored chunks all the same.
    write(project / "memory" / "CustomerDocs" / "memory_config.yaml", "chunk_size: 100\nchunk_overlap: 0\n")

    copied = run("memory", "copy", "--from", str(project), "--to", pg.url)
    assert copied.returncode == 0, copied.stderr
    chunks = sum(s.stats().chunks for s in sqlite.stores())
    assert copied.stdout.startswith(f"copied 5 documents ({chunks} chunks) of 2 stores, 0 unchanged -> ")
    assert "contexis@" not in copied.stdout  # the target is named without its user or password

    postgres = open_memory(pg_settings(project, pg.url))
    for tenant in (None, "acme"):
        on_sqlite = sqlite.store("CustomerDocs", tenant).search("refund receipt", 10)
        on_postgres = postgres.store("CustomerDocs", tenant).search("refund receipt", 10)
        assert {(r.id, r.content) for r in on_postgres} == {(r.id, r.content) for r in on_sqlite}
    shared = [store.stats() for store in (sqlite.store("CustomerDocs"), postgres.store("CustomerDocs"))]
    assert [(s.embed_model, s.embed_dimension, s.chunks_with_vectors) for s in shared] == [
        (EMBED_MODEL, 64, shared[0].chunks)
    ] * 2
    assert postgres.store("CustomerDocs", "acme").stats().chunks_with_vectors == 0
    assert pg.admin("SELECT to_regclass('memory_vectors_hnsw_64') IS NOT NULL", Postgres.ROLE) == [(True,)]
    assert "5 unchanged" in run("memory", "copy", "--from", str(project), "--to", pg.url).stdout
    refused = run("memory", "copy", "--from", str(project), "--to", "mysql://x")
    assert refused.returncode == 2 and "postgresql://" in refused.stderr


# -- replicas, and a database that goes away ---------------------------------------------


def test_two_servers_share_one_database_and_both_survive_its_outage(project: Path, tmp_path: Path) -> None:
    """The issue's acceptance run: migrate and ingest through the CLI, two `ctx serve` with different roots
    and the same CMP_MEMORY_URL, tenants, a delete, then PostgreSQL stopped and started again."""
    other_root = tmp_path / "replica-b"
    shutil.copytree(EXAMPLE, other_root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    database = Postgres()
    servers: list[Server] = []
    try:
        env = {"CMP_MEMORY_URL": database.url, "CMP_MEMORY_TIMEOUT": "1"}
        assert run("memory", "migrate", env=env).returncode == 0
        owner = ["--root", str(project), "--component", "CustomerDocs"]
        ingest = run("memory", "ingest", *owner, str(project / DOCS), env=env)
        assert ingest.returncode == 0, ingest.stderr
        assert not (project / "memory" / "CustomerDocs" / "memory.db").exists()
        secret = write(tmp_path / "acme.md", "# Acme\n\nThe acme refund code is ZEBRA-42.\n")
        assert run("memory", "ingest", *owner, "--tenant", "acme", str(secret), env=env).returncode == 0

        flags = ("--workers", "1", "--threads", "4")
        servers = [Server("--root", str(root), *flags, env=env) for root in (project, other_root)]

        def answer(server: Server, body: dict[str, object]) -> requests.Response:
            return requests.post(f"{server.url}/api/v1/chat", json=body, timeout=30)

        def sources(server: Server, **extra: object) -> list[str]:
            response = answer(server, {**SEARCH_BODY, **extra})
            assert response.status_code == 200, response.text
            return [s["source"] for s in response.json()["sources"]]

        first = [sources(server) for server in servers]
        assert first[0] == first[1] and first[0][0] == f"{DOCS}/returns.md"
        refund = {"query": "refund code zebra", "top_k": 10}
        assert all(str(secret) in sources(server, tenant_id="acme", **refund) for server in servers)
        assert all(str(secret) not in sources(server, tenant_id="globex", **refund) for server in servers)
        gone = run("memory", "delete", *owner, "--source", f"{DOCS}/returns.md", env=env)
        assert gone.stdout.strip() == "deleted 1 document"
        assert all(f"{DOCS}/returns.md" not in sources(server) for server in servers)

        database.stop()
        for server in servers:
            started = time.monotonic()
            down = answer(server, SEARCH_BODY)
            assert time.monotonic() - started < 5
            assert down.status_code == 503, down.text
            error = down.json()["error"]
            assert error["code"] == "memory_unavailable" and "unavailable" in error["message"]
            assert "contexis@" not in error["message"] and "host=" not in error["message"]
            assert answer(server, GUIDE_BODY).status_code == 200  # no query, no memory needed
            ready = requests.get(f"{server.url}/readyz", timeout=10)
            assert ready.status_code == 503 and "memory database postgresql://" in ready.json()["reason"]

        database.start()
        for server in servers:
            deadline = time.monotonic() + 20
            while requests.get(f"{server.url}/readyz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "memory did not recover"
                time.sleep(0.2)
            assert sources(server)  # the remaining documents answer again, without a restart
    finally:
        for server in servers:
            server.stop()
        database.close()


def test_a_stalled_database_is_503_within_the_timeout(pg: Postgres, project: Path) -> None:
    settings = pg_settings(project, pg.url, memory_timeout=0.5)
    open_memory(settings).store("CustomerDocs").ingest([project / DOCS])
    client = create_app(settings).test_client()
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(pg.admin_url.replace("/postgres?", f"/{Postgres.ROLE}?")) as conn:
            conn.execute("LOCK TABLE memory_chunks IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        stalled = chat(client, SEARCH_BODY)
        assert time.monotonic() - started < 3
        assert stalled.status_code == 503 and "statement timeout" in stalled.get_json()["error"]["message"]
    finally:
        release.set()
        holder.join()
    assert chat(client, SEARCH_BODY).status_code == 200


def test_a_frozen_database_is_503_within_the_timeout_and_its_connections_are_replaced(
    pg: Postgres, project: Path
) -> None:
    """SIGSTOP on every PostgreSQL process with the pool warm: the server's timeouts never fire and the
    socket stays silent, yet each memory operation ends within CMP_MEMORY_TIMEOUT, requests that need no
    memory answer at once, and once the server runs again the timed-out connections are gone from the pool."""
    settings = pg_settings(project, pg.url, memory_timeout=1.0, memory_pool_size=4)
    open_memory(settings).store("CustomerDocs").ingest([project / DOCS])
    app = create_app(settings)
    assert chat(app, SEARCH_BODY).status_code == 200  # the pool is warm
    answers: list[tuple[float, int, dict]] = []

    def ask(body: dict[str, object]) -> None:
        started = time.monotonic()
        response = chat(app, body)
        answers.append((time.monotonic() - started, response.status_code, response.get_json()))

    pids = pg.freeze()
    try:
        askers = [threading.Thread(target=ask, args=(SEARCH_BODY,), daemon=True) for _ in range(6)]
        for asker in askers:
            asker.start()
        started = time.monotonic()
        assert chat(app, GUIDE_BODY).status_code == 200  # no query: memory is never waited on
        assert time.monotonic() - started < 1
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503 and time.monotonic() - started < 3
        for asker in askers:
            asker.join(5)
        assert len(answers) == 6, "memory operations still waiting on a frozen database"
        for seconds, status, body in answers:
            assert status == 503 and body["error"]["code"] == "memory_unavailable", body
            assert seconds < 2.5  # CMP_MEMORY_TIMEOUT=1, with room for a loaded machine
            assert "contexis@" not in body["error"]["message"] and "host=" not in body["error"]["message"]
        started = time.monotonic()
        with pytest.raises(MemoryUnavailable):  # an ingest (a bulk write) is bounded wait by wait
            open_memory(settings).store("CustomerDocs", "acme").ingest([write(project / "new.md", "new words\n")])
        assert time.monotonic() - started < 2.5
    finally:
        pg.thaw(pids)
    started = time.monotonic()
    assert chat(app, SEARCH_BODY).status_code == 200
    assert time.monotonic() - started < 2
    stats = pg_pool.connection_pool(settings.memory_url, 4, 1.0).get_stats()
    assert stats.get("returns_bad", 0) + stats.get("connections_lost", 0) >= 1  # the timed-out ones were dropped


# -- settings -----------------------------------------------------------------------------


def test_memory_url_is_checked_and_never_shown() -> None:
    url = "postgresql://app:s3cret-pw@db.internal:5433/memory"
    settings = Settings.from_env({"CMP_MEMORY_URL": url}, dotenv_path=None)
    assert "s3cret" not in repr(settings)
    store = PostgresMemory(settings).store("Docs", "acme")
    assert store.location == "postgresql://db.internal:5433/memory (Docs, tenant acme)"
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({"CMP_MEMORY_URL": "mysql://app:s3cret-pw@db/memory"}, dotenv_path=None)
    assert "s3cret" not in str(bad.value)

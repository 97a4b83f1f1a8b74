"""The store of Responses API responses, on both backends: SQLite under the state directory and a real PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import StoreUnavailable
from app.responses_store import StoredResponse, new_response_id, open_response_store
from app.responses_store.postgres import PostgresResponseStore
from app.responses_store.sqlite import SQLiteResponseStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    """Settings whose store is each backend in turn; the PostgreSQL table emptied first."""
    if request.param == "sqlite":
        return Settings(project_root=tmp_path)
    server = request.getfixturevalue("postgres")
    server.admin("DROP TABLE IF EXISTS stored_responses", database=server.ROLE)
    return Settings(project_root=tmp_path, usage_url=server.url)


def stored(tenant: str, text: str = "hi", ttl: float = 60) -> StoredResponse:
    response_id = new_response_id()
    items = [{"type": "message", "role": "user", "content": text}]
    return StoredResponse.new(tenant, {"id": response_id, "output_text": text}, items, ttl)


def test_a_response_is_kept_read_and_deleted_by_its_own_tenant_only(store_settings):
    store = open_response_store(store_settings)
    acme, globex = stored("acme", "acme's"), stored("globex", "globex's")
    store.put(acme)
    store.put(globex)
    got = store.get("acme", acme.id)
    assert got is not None
    assert (got.response, got.items, got.tenant) == (acme.response, acme.items, "acme")
    # Another tenant (the shared "" one too) sees nothing and deletes nothing under that id.
    assert store.get("globex", acme.id) is None
    assert store.get("", acme.id) is None
    assert store.delete("globex", acme.id) is False
    assert store.get("acme", acme.id) is not None
    assert store.delete("acme", acme.id) is True
    assert store.get("acme", acme.id) is None
    assert store.delete("acme", acme.id) is False
    assert store.get("globex", globex.id) is not None


def test_an_expired_response_is_gone_and_purged_by_a_later_write(store_settings):
    store = open_response_store(store_settings)
    old = stored("acme", ttl=0.5)
    store.put(old)  # the store's first write purges too, while `old` is still alive
    time.sleep(0.6)
    assert store.get("acme", old.id) is None
    assert store.delete("acme", old.id) is False
    # Expired rows stay until a purge: at most one a minute per store, the first with its first write.
    assert old.id in stored_ids(store)
    open_response_store(store_settings).put(stored("acme"))
    assert old.id not in stored_ids(store)


def stored_ids(store) -> set[str]:
    """Every row's id, expired ones included, read past the store's own filters."""
    if isinstance(store, SQLiteResponseStore):
        return {row[0] for row in store._connection().execute("SELECT id FROM stored_responses")}
    with store._transaction("", all_tenants=True) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM stored_responses")}


def test_the_sqlite_store_lives_under_the_state_directory(tmp_path):
    default = open_response_store(Settings(project_root=tmp_path))
    assert isinstance(default, SQLiteResponseStore)
    assert default.path == tmp_path / ".contexis" / "responses.db"
    elsewhere = open_response_store(Settings(project_root=tmp_path, state_dir=tmp_path / "state"))
    elsewhere.put(stored("acme"))
    assert (tmp_path / "state" / "responses.db").is_file()
    assert not (tmp_path / ".contexis").exists()  # nothing is created before the first write


def test_postgresql_row_security_hides_other_tenants_even_from_an_unfiltered_query(postgres):
    postgres.admin("DROP TABLE IF EXISTS stored_responses", database=postgres.ROLE)
    store = PostgresResponseStore(Settings(memory_url=postgres.url))
    assert isinstance(open_response_store(Settings(memory_url=postgres.url)), PostgresResponseStore)
    store.put(stored("acme"))
    store.put(stored("globex"))
    with store._transaction("acme") as conn:
        assert conn.execute("SELECT tenant FROM stored_responses").fetchall() == [("acme",)]
    with store._transaction("acme") as conn, pytest.raises(Exception, match="row-level security"):
        conn.execute("INSERT INTO stored_responses VALUES ('globex', 'resp_x', 0, 9e99, '{}', '[]')")


def test_an_unusable_store_is_unavailable_not_a_traceback(tmp_path, postgres):
    state = tmp_path / "state"
    state.mkdir()
    (state / "responses.db").write_text("not a database, just text that is long enough to be read " * 20)
    with pytest.raises(StoreUnavailable, match=r"responses\.db"):
        open_response_store(Settings(project_root=tmp_path, state_dir=state)).put(stored("acme"))
    down = "postgresql://contexis:s3cret-pw@127.0.0.1:1/contexis?connect_timeout=1"
    with pytest.raises(StoreUnavailable) as raised:
        open_response_store(Settings(usage_url=down, memory_timeout=0.5)).get("acme", "resp_1")
    assert raised.value.status == 503
    assert "s3cret-pw" not in raised.value.message


def test_the_settings_name_the_store_its_directory_and_ttl(tmp_path):
    from app.errors import SettingsError

    env = {"CMP_PROJECT_ROOT": str(tmp_path), "CMP_STATE_DIR": "/var/lib/contexis", "CMP_RESPONSES_TTL": "3600"}
    settings = Settings.from_env(env, dotenv_path=None)
    assert (settings.state_path, settings.responses_ttl, settings.usage_url) == (Path("/var/lib/contexis"), 3600, "")
    assert Settings.from_env({"CMP_PROJECT_ROOT": str(tmp_path)}, dotenv_path=None).state_path == tmp_path / ".contexis"
    url = "postgresql://contexis:s3cret-pw@db:5432/contexis"
    with_url = Settings.from_env({**env, "CMP_USAGE_URL": url}, dotenv_path=None)
    assert with_url.usage_url == url
    assert "s3cret-pw" not in repr(with_url)
    with pytest.raises(SettingsError, match="CMP_USAGE_URL must be empty"):
        Settings.from_env({**env, "CMP_USAGE_URL": "mysql://db"}, dotenv_path=None)
    with pytest.raises(SettingsError, match="CMP_RESPONSES_TTL must be at least 1"):
        Settings.from_env({**env, "CMP_RESPONSES_TTL": "0"}, dotenv_path=None)


def test_removing_the_sqlite_file_forgets_every_response_and_the_next_write_starts_a_new_one(tmp_path):
    store = open_response_store(Settings(project_root=tmp_path))
    old = stored("acme")
    store.put(old)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / ".contexis" / f"responses.db{suffix}").unlink(missing_ok=True)
    assert store.get("acme", old.id) is None
    new = stored("acme")
    store.put(new)
    assert store.get("acme", new.id) is not None
    assert (tmp_path / ".contexis" / "responses.db").is_file()

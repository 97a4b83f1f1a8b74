"""Stored responses in PostgreSQL (`CMP_USAGE_URL`, else `CMP_MEMORY_URL`), shared by every replica.

One table for every tenant, under row-level security forced on its owner too: each transaction names its tenant
(`set_config('contexis.tenant', ..., true)`), so a statement that forgot its filter still cannot read, continue
or delete another tenant's response. The table is created on first use (under an advisory lock, so replicas
starting together create it once). Connections come from the memory backend's per-process pools, whose every
wait is bounded by `CMP_MEMORY_TIMEOUT`; a database that is down or slow is `StoreUnavailable` (503).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import PoolTimeout

from app.config import Settings, describe_url
from app.errors import StoreUnavailable
from app.memory.postgres.pool import connection_pool
from app.responses_store.store import Purger, StoredResponse

_OWNER = (
    "tenant = coalesce(current_setting('contexis.tenant', true), '')"
    " OR current_setting('contexis.all_tenants', true) = 'on'"
)
_SCHEMA = f"""
CREATE TABLE stored_responses (
    tenant     text NOT NULL,
    id         text NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    response   text NOT NULL,
    items      text NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX stored_responses_expiry ON stored_responses (expires_at);
ALTER TABLE stored_responses ENABLE ROW LEVEL SECURITY;
ALTER TABLE stored_responses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_owns ON stored_responses USING ({_OWNER}) WITH CHECK ({_OWNER});
"""


class PostgresResponseStore:
    """The tenants' stored responses in one PostgreSQL table."""

    system = "postgresql"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.records_url
        self.timeout = settings.memory_timeout
        self.pool_size = settings.memory_pool_size or settings.threads
        self.where = describe_url(self.url)
        self._ready = False
        self._purger = Purger()

    @contextmanager
    def _transaction(self, tenant: str, all_tenants: bool = False) -> Iterator[psycopg.Connection]:
        """One transaction acting for `tenant`; every database failure is `StoreUnavailable`, without the URL's
        password."""
        creating = not self._ready
        try:
            with connection_pool(self.url, self.pool_size, self.timeout).connection() as conn:
                conn.execute(
                    "SELECT set_config('contexis.tenant', %s, true), set_config('contexis.all_tenants', %s, true)",
                    (tenant, "on" if all_tenants else "off"),
                )
                if creating:
                    self._create(conn)
                yield conn
            self._ready = True  # once the transaction that created the table (or saw it) committed
        except PoolTimeout:
            raise StoreUnavailable(f"the response store {self.where} is unavailable: no connection in time") from None
        except psycopg.errors.QueryCanceled:
            raise StoreUnavailable(f"the response store {self.where} is too slow: statement timeout") from None
        except psycopg.Error as exc:
            kind = type(exc).__name__
            raise StoreUnavailable(f"the response store {self.where} is unavailable ({kind})") from None

    def _create(self, conn: psycopg.Connection) -> None:
        """Create the table unless it exists; replicas that start together wait for the first."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('contexis.stored_responses'))")
        exists = conn.execute("SELECT to_regclass('stored_responses') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            conn.execute(_SCHEMA)

    def put(self, stored: StoredResponse) -> None:
        row = (
            stored.tenant,
            stored.id,
            stored.created_at,
            stored.expires_at,
            json.dumps(stored.response),
            json.dumps(stored.items),
        )
        with self._transaction(stored.tenant) as conn:
            conn.execute(
                "INSERT INTO stored_responses VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, id) DO UPDATE"
                " SET created_at = excluded.created_at, expires_at = excluded.expires_at,"
                " response = excluded.response, items = excluded.items",
                row,
            )
        if self._purger.due():
            with self._transaction("", all_tenants=True) as conn:
                conn.execute("DELETE FROM stored_responses WHERE expires_at <= %s", (time.time(),))

    def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        with self._transaction(tenant) as conn:
            row = conn.execute(
                "SELECT created_at, expires_at, response, items FROM stored_responses"
                " WHERE tenant = %s AND id = %s AND expires_at > %s",
                (tenant, response_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, tenant, json.loads(row[2]), json.loads(row[3]), row[0], row[1])

    def delete(self, tenant: str, response_id: str) -> bool:
        with self._transaction(tenant) as conn:
            cursor = conn.execute(
                "DELETE FROM stored_responses WHERE tenant = %s AND id = %s AND expires_at > %s",
                (tenant, response_id, time.time()),
            )
        return cursor.rowcount > 0

"""The ledger of replicas: PostgreSQL (`CMP_USAGE_URL`, memory's database will do), with versioned migrations.

`ctx usage migrate` (the chart's pre-install/pre-upgrade Job) creates and upgrades the schema; serving never
does, and says so in `/readyz` until it is done. Each process holds two connections, opened on first use: the
writer thread's and one for reads (budget checks read once per `CMP_BUDGET_CACHE_SECONDS` per budget,
reports rarely), each statement bounded by `CMP_USAGE_TIMEOUT`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from app.config import describe_url
from app.errors import UsageUnavailable
from app.usage.ledger import COLUMNS, GROUPS, REPORT_SELECT, Ledger, Row, daily_totals, report_rows

SCHEMA_VERSION = 2
# MIGRATIONS[n] brings the schema from version n to n + 1; released entries never change.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE usage_calls (
        id                bigserial PRIMARY KEY,
        ts                double precision NOT NULL,
        request_id        text NOT NULL,
        tenant            text NOT NULL,
        key_id            text,
        context           text NOT NULL,
        route             text NOT NULL,
        model             text NOT NULL,
        served_model      text,
        endpoint          text NOT NULL,
        stream            boolean NOT NULL,
        prompt_tokens     integer,
        completion_tokens integer,
        cached_tokens     integer,
        reasoning_tokens  integer,
        estimated         boolean NOT NULL,
        cost_usd          double precision,
        latency_ms        double precision NOT NULL,
        outcome           text NOT NULL
    );
    CREATE INDEX usage_calls_ts ON usage_calls (ts);
    CREATE TABLE usage_daily (
        day    text NOT NULL,
        kind   text NOT NULL,
        name   text NOT NULL,
        tokens bigint NOT NULL,
        usd    double precision NOT NULL,
        PRIMARY KEY (kind, name, day)
    );
    """,
    # 2: what a cache hit saved (`Row.saved_tokens`, `Row.saved_usd`); null in every earlier row.
    """
    ALTER TABLE usage_calls ADD COLUMN saved_tokens integer, ADD COLUMN saved_usd double precision;
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_INSERT = f"INSERT INTO usage_calls ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"  # noqa: S608
_ADD_DAY = """
    INSERT INTO usage_daily (day, kind, name, tokens, usd) VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (kind, name, day)
    DO UPDATE SET tokens = usage_daily.tokens + excluded.tokens, usd = usage_daily.usd + excluded.usd
"""
PROBLEM_CHECK_SECONDS = 10.0


class PostgresLedger(Ledger):
    def __init__(self, url: str, timeout: float) -> None:
        super().__init__()
        self.url = url
        self.where = describe_url(url)
        self.timeout = timeout
        self._writer_conn: psycopg.Connection | None = None
        self._reader: psycopg.Connection | None = None
        self._read_lock = threading.Lock()
        self._problem: tuple[float, str | None] = (0.0, None)

    def _connect(self) -> psycopg.Connection:
        milliseconds = int(self.timeout * 1000)
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(self.timeout)),
            options=f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
        )

    def _reset_connections(self) -> None:
        self._writer_conn = self._reader = None
        self._read_lock = threading.Lock()

    def _write(self, rows: list[Row]) -> None:
        if self._writer_conn is None or self._writer_conn.closed:
            self._writer_conn = self._connect()
        conn = self._writer_conn
        try:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(_INSERT, rows)
                # One order for every writer's upserts: two replicas' batches never deadlock on the same days.
                days = sorted(daily_totals(rows).items())
                cursor.executemany(_ADD_DAY, [(*key, int(t), u) for key, (t, u) in days])
        except psycopg.OperationalError:
            conn.close()  # a broken connection is opened again on the next try
            raise

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._reader is None or self._reader.closed:
                try:
                    self._reader = self._connect()
                except psycopg.OperationalError:
                    raise UsageUnavailable(f"usage ledger {self.where} unavailable: connection failed") from None
            try:
                return self._reader.execute(sql, params).fetchall()
            except psycopg.errors.UndefinedTable:
                missing = f"usage ledger schema missing in {self.where}: run `ctx usage migrate`"
                raise UsageUnavailable(missing) from None
            except psycopg.errors.QueryCanceled:
                raise UsageUnavailable(f"usage ledger {self.where} too slow: statement timeout") from None
            except psycopg.OperationalError:
                self._reader.close()
                raise UsageUnavailable(f"usage ledger {self.where} unavailable: connection failed") from None

    def spent(self, kind: str, name: str, first_day: str) -> tuple[float, float]:
        (found,) = self._read(
            "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(usd), 0) FROM usage_daily"
            " WHERE kind = %s AND name = %s AND day >= %s",
            (kind, name, first_day),
        )
        return float(found[0]), float(found[1])

    def totals(self, kind: str, first_day: str) -> dict[str, tuple[float, float]]:
        found = self._read(
            "SELECT name, SUM(tokens), SUM(usd) FROM usage_daily WHERE kind = %s AND day >= %s GROUP BY name",
            (kind, first_day),
        )
        return {name: (float(tokens), float(usd)) for name, tokens, usd in found}

    def report(self, since: float, until: float, by: str, tenant: str | None) -> list[dict[str, Any]]:
        group = "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')" if by == "day" else GROUPS[by]
        sql = REPORT_SELECT.format(group=group, p="%s", tenant="AND tenant = %s" if tenant is not None else "")
        params = (since, until) if tenant is None else (since, until, tenant)
        return report_rows(self._read(sql, params))

    def schema_version(self) -> int:
        """The schema version the database holds; 0 before the first migration."""
        exists = self._read("SELECT to_regclass('usage_schema') IS NOT NULL", ())
        if not exists or not exists[0][0]:
            return 0
        (row,) = self._read("SELECT max(version) FROM usage_schema", ())
        return int(row[0] or 0)

    def problem(self) -> str | None:
        """Why rows cannot be written: a schema behind this release's (`ctx usage migrate`), checked at most every 10 s.

        A database away is not a problem for `/readyz`: rows wait in the queue and budgets fail open, so the
        pods keep serving (the writer's warnings say it)."""
        checked, problem = self._problem
        if time.monotonic() - checked < PROBLEM_CHECK_SECONDS:
            return problem
        try:
            version = self.schema_version()
            problem = None
            # A newer schema serves: a later release migrated it while this one's pods roll out, and migrations
            # only add (the rows name their columns).
            if version < SCHEMA_VERSION:
                problem = f"usage ledger schema in {self.where} is version {version}, expected {SCHEMA_VERSION}: "
                problem += "run `ctx usage migrate`"
        except UsageUnavailable:
            problem = None
        self._problem = (time.monotonic(), problem)
        return problem

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema in one transaction under an advisory lock; (version before, after)."""
        try:
            with self._connect() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('contexis.usage_schema'))")
                conn.execute("CREATE TABLE IF NOT EXISTS usage_schema (version integer NOT NULL)")
                row = conn.execute("SELECT max(version) FROM usage_schema").fetchone()
                before = int(row[0] or 0) if row else 0
                for version in range(before, SCHEMA_VERSION):
                    conn.execute(MIGRATIONS[version])  # constants, several statements at once (no parameters)
                    conn.execute("INSERT INTO usage_schema (version) VALUES (%s)", (version + 1,))
        except psycopg.OperationalError:
            raise UsageUnavailable(f"usage ledger {self.where} unavailable: connection failed") from None
        except psycopg.Error as exc:  # e.g. no right to create tables: the server's words, never the URL
            reason = exc.diag.message_primary or type(exc).__name__
            raise UsageUnavailable(f"usage schema not migrated in {self.where}: {reason}") from None
        return before, max(before, SCHEMA_VERSION)

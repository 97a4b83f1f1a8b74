"""The ledger: one row per model call, queued on the request's thread and written in batches by a thread of its own.

A backend (`sqlite`, `postgres`) writes a batch in one transaction: the rows, and the day's totals per tenant
and per key that budgets read (a point lookup, however many rows a month holds). The queue is written at
exit (gunicorn's workers exit through it on SIGTERM, after their last request), so no answered call's row
is lost; a batch the database refuses stays queued and is tried again. Past `max_queued` rows (a database
away for long) the oldest are dropped, and the log says how many.

For budgets, the ledger also keeps this process's own totals per tenant and per key (`Own`), for the
`max_owners` most recently recorded: one whose rows are all written is forgotten first, so a client sending
many distinct tenant ids costs a bounded amount of memory.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Row(NamedTuple):
    """One model call: for whom, which model, what it counted and cost, how it went.

    A tuple, its fields in the tables' column order: a backend binds it as it is, and the request's thread makes
    one per model call and per cache hit (a frozen dataclass took three times as long to build)."""

    ts: float
    request_id: str
    tenant: str  # "" for no tenant
    key_id: str | None
    context: str
    route: str  # the API route the call served (`/v1/chat/completions`), or `cli`
    model: str  # the model the call asked for
    served_model: str | None  # the model the endpoint says answered
    endpoint: str  # where the call went, without credentials
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    reasoning_tokens: int | None
    estimated: bool  # counts estimated (the endpoint reported none), not reported
    cost_usd: float | None  # None: the model has no price (never 0 for unknown)
    latency_ms: float
    outcome: str  # ok, cancelled (the client left mid-stream), cache_hit, or the failure's code (429, timeout, ...)
    # A cache hit's: what the answer took (prompt and completion tokens) and cost when it was generated.
    saved_tokens: int | None = None
    saved_usd: float | None = None  # None: not a hit, or its model has no price

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    @property
    def counts(self) -> bool:
        """Whether the row adds to its tenant's and key's spend: a cache hit's and a failed call's add nothing."""
        return bool(self.prompt_tokens or self.completion_tokens or self.cost_usd)


COLUMNS = Row._fields


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class Own:
    """This process's calls of one tenant or key: what it recorded, what of that is written, how many rows wait."""

    __slots__ = ("flushed_tokens", "flushed_usd", "queued", "recorded_tokens", "recorded_usd")

    def __init__(self) -> None:
        self.recorded_tokens = self.flushed_tokens = 0.0
        self.recorded_usd = self.flushed_usd = 0.0
        self.queued = 0  # rows recorded and neither written nor dropped: the entry is not forgotten meanwhile


def daily_totals(rows: Sequence[Row]) -> dict[tuple[str, str, str], list[float]]:
    """(day, kind, name) -> [tokens, usd] of a batch: what it adds to each tenant's and key's day."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        if not row.counts:
            continue
        day = day_of(row.ts)
        owners = [("tenant", row.tenant)] + ([("key", row.key_id)] if row.key_id else [])
        for kind, name in owners:
            entry = totals.setdefault((day, kind, name), [0, 0.0])
            entry[0] += row.tokens
            entry[1] += row.cost_usd or 0.0
    return totals


def _owners_of(row: Row) -> tuple[tuple[str, str], tuple[str, str]]:
    """The tenant and the key a row counts for in this process's totals (rows without a key: the key "")."""
    return ("tenant", row.tenant), ("key", row.key_id or "")


class Ledger:
    """The queue and its writer thread; a backend implements `_write`, `spent`, `totals`, `report`, `problem`."""

    where = ""
    max_owners = 10_000  # tenants and keys whose own totals are kept (more while their rows wait to be written)

    def __init__(self, interval: float = 0.2, max_queued: int = 100_000) -> None:
        self.interval = interval
        self.max_queued = max_queued
        self._rows: collections.deque[Row] = collections.deque()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._closed = False
        # This process's own totals per (kind, name), least recently recorded first (budgets add what is unwritten).
        self._owners: collections.OrderedDict[tuple[str, str], Own] = collections.OrderedDict()
        self._count_lock = threading.Lock()
        atexit.register(self.close)
        os.register_at_fork(after_in_child=self._forked)

    def record(self, row: Row) -> None:
        """Queue one call's row (the request's thread does nothing more)."""
        self._rows.append(row)
        self._recorded(row)
        if len(self._rows) > self.max_queued:
            dropped = []
            while len(self._rows) > self.max_queued:
                dropped.append(self._rows.popleft())
            self._settled(dropped, written=False)
            log.error("usage rows dropped: the ledger is not written", extra={"fields": {"rows": len(dropped)}})
        if not self._wake.is_set():
            if self._writer is None or not self._writer.is_alive():
                self._start()
            self._wake.set()

    def _recorded(self, row: Row) -> None:
        """This process's own totals, for budgets to read before the row is written; a row that adds nothing skips
        them (and `_settled` too)."""
        if not row.counts:
            return
        with self._count_lock:
            for owner in _owners_of(row):
                entry = self._owners.get(owner)
                if entry is None:
                    entry = self._owners[owner] = Own()
                else:
                    self._owners.move_to_end(owner)
                entry.recorded_tokens += row.tokens
                entry.recorded_usd += row.cost_usd or 0.0
                entry.queued += 1
            self._forget()

    def _settled(self, rows: list[Row], written: bool) -> None:
        """`rows` left the queue: written (budgets now read them from the database), or dropped."""
        with self._count_lock:
            for row in rows:
                if not row.counts:
                    continue
                for owner in _owners_of(row):
                    entry = self._owners.get(owner)
                    if entry is None:  # forgotten by a fork in between
                        continue
                    entry.queued -= 1
                    if written:
                        entry.flushed_tokens += row.tokens
                        entry.flushed_usd += row.cost_usd or 0.0
            self._forget()

    def _forget(self) -> None:
        """Past `max_owners`, forget the least recently recorded owners whose rows are all settled. Rows leave the
        queue in the order they were recorded, so once the oldest owner has a row waiting, every newer one has."""
        while len(self._owners) > self.max_owners:
            oldest = next(iter(self._owners.values()))
            if oldest.queued > 0:
                return
            self._owners.popitem(last=False)

    def own(self, kind: str, name: str) -> Own | None:
        """This process's totals for a tenant or key, while it keeps them (a plain look-up: budgets' hot path)."""
        return self._owners.get((kind, name))

    def owner(self, kind: str, name: str) -> Own:
        """`own`, kept from now on (budgets read the ledger's total against it): made when there is none."""
        with self._count_lock:
            entry = self._owners.get((kind, name))
            if entry is None:
                entry = self._owners[(kind, name)] = Own()
                self._forget()
            return entry

    def flush(self) -> bool:
        """Write every queued row now; False when the database refused them (they stay queued)."""
        with self._write_lock:
            batch = []
            while self._rows:
                batch.append(self._rows.popleft())
            if not batch:
                return True
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the rows must survive it
                self._rows.extendleft(reversed(batch))
                log.warning(
                    "usage ledger not written, will retry",
                    extra={"fields": {"ledger": self.where, "rows": len(batch), "error": type(exc).__name__}},
                )
                return False
            self._settled(batch, written=True)
            return True

    def _start(self) -> None:
        with self._write_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._run, name="contexis-usage-ledger", daemon=True)
                self._writer.start()

    def _run(self) -> None:
        backoff = self.interval
        while True:
            self._wake.wait()
            time.sleep(backoff)  # let a batch gather (longer while the database refuses them)
            self._wake.clear()
            backoff = self.interval if self.flush() else min(backoff * 2, 30.0)
            if self._rows:
                self._wake.set()

    def _forked(self) -> None:
        """A forked worker has no writer yet, and its parent's queued rows are its parent's to write."""
        self._rows.clear()
        self._wake = threading.Event()
        self._writer = None
        self._write_lock = threading.Lock()
        self._owners = collections.OrderedDict()
        self._count_lock = threading.Lock()
        self._reset_connections()

    def close(self) -> None:
        """Write what is queued (at exit: the last rows of a worker stopped by SIGTERM)."""
        if self._rows and not self.flush():
            log.error("usage rows lost at exit: the ledger refused them", extra={"fields": {"rows": len(self._rows)}})

    # -- what a backend implements -------------------------------------------------------------------

    def _write(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def _reset_connections(self) -> None:
        """Forget connections opened by the parent process (a child must open its own)."""

    def spent(self, kind: str, name: str, first_day: str) -> tuple[float, float]:
        """(tokens, USD) the ledger holds for a tenant or key since `first_day` (`YYYY-MM-DD`, UTC)."""
        raise NotImplementedError

    def totals(self, kind: str, first_day: str) -> dict[str, tuple[float, float]]:
        """(tokens, USD) since `first_day` of every tenant or key."""
        raise NotImplementedError

    def report(self, since: float, until: float, by: str, tenant: str | None) -> list[dict[str, Any]]:
        """Requests, calls, tokens, cost and errors per group of the rows from `since` to `until`."""
        raise NotImplementedError

    def problem(self) -> str | None:
        """Why the ledger cannot be written now, or None."""
        return None


# The report's groups, as SQL expressions both backends share (`day` is the backend's own).
GROUPS = {"tenant": "tenant", "context": "context", "model": "model", "key": "COALESCE(key_id, '')"}
REPORT_SELECT = """
    SELECT {group} AS grp,
           COUNT(DISTINCT request_id), COUNT(*),
           COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
           SUM(cost_usd),
           SUM(CASE WHEN cost_usd IS NULL AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)
                    THEN 1 ELSE 0 END),
           SUM(CASE WHEN estimated THEN 1 ELSE 0 END),
           SUM(CASE WHEN outcome NOT IN ('ok', 'cancelled', 'cache_hit') THEN 1 ELSE 0 END),
           SUM(CASE WHEN outcome = 'cache_hit' THEN 1 ELSE 0 END),
           COALESCE(SUM(saved_tokens), 0),
           SUM(saved_usd)
    FROM usage_calls
    WHERE ts >= {p} AND ts < {p} {tenant}
    GROUP BY grp ORDER BY grp
"""
REPORT_FIELDS = (
    "group",
    "requests",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "unpriced_calls",
    "estimated_calls",
    "errors",
    "cache_hits",
    "saved_tokens",
    "saved_usd",
)
# Sums that are null when no row of the group had a value (a cost or a saving of a model without a price).
NULLABLE_SUMS = ("cost_usd", "saved_usd")


def report_rows(found: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    rows = []
    for values in found:
        row = dict(zip(REPORT_FIELDS, values, strict=True))
        for name in REPORT_FIELDS[1:]:
            if name in NULLABLE_SUMS:
                row[name] = None if row[name] is None else float(row[name])
            else:
                row[name] = int(row[name] or 0)
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        rows.append(row)
    return rows

"""Budgets (`CMP_BUDGETS`): how much a tenant or a key may spend per day or month, checked before model calls.

```yaml
default: {usd_per_month: 50}          # every tenant without its own entry
tenants:
  acme: {tokens_per_day: 2000000, usd_per_month: 500}
keys:
  batch-job: {usd_per_day: 20}        # in addition to its tenant's budget
```

The file is re-read when it changes (checked at most once a second), as contexts are; a file that no longer
parses keeps the last good budgets and says why in the log. Spending is read from the ledger, so every
worker of a pod (SQLite) or every replica (PostgreSQL) counts against the same budget. Each process keeps
the ledger's total for `CMP_BUDGET_CACHE_SECONDS` and adds its own calls to it as they are recorded: a
budget is crossed by at most the calls in flight and those other processes made within that time. Those totals
are kept for the `BudgetGuard.max_entries` tenants and keys read last, so many distinct tenant ids cost a
bounded amount of memory (one forgotten is read from the ledger again).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import BudgetExceeded, SettingsError
from app.usage.files import read_yaml
from app.usage.ledger import Own

if TYPE_CHECKING:
    from app.observability import RuntimeMetrics

log = logging.getLogger(__name__)

# limit name -> (what it counts, the period it resets after)
LIMITS = {
    "tokens_per_day": ("tokens", "day"),
    "tokens_per_month": ("tokens", "month"),
    "usd_per_day": ("usd", "day"),
    "usd_per_month": ("usd", "month"),
}
SCOPES = ("tenant", "key", "default")
RELOAD_CHECK_SECONDS = 1.0


class Spending(Protocol):
    """What budgets read of the ledger: totals since a day (`YYYY-MM-DD`, UTC), by tenant or by key."""

    def spent(self, kind: str, name: str, first_day: str) -> tuple[float, float]: ...

    def totals(self, kind: str, first_day: str) -> dict[str, tuple[float, float]]: ...

    def own(self, kind: str, name: str) -> Own | None: ...

    def owner(self, kind: str, name: str) -> Own: ...


@dataclass(frozen=True)
class Budget:
    """One configured budget: for whom (`scope` tenant, key or default; `name`) and its limits."""

    scope: str
    name: str
    limits: dict[str, float]


@dataclass(frozen=True)
class BudgetConfig:
    default: Budget | None
    tenants: dict[str, Budget]
    keys: dict[str, Budget]

    def applying(self, tenant: str, key_id: str | None) -> list[Budget]:
        """What a call for `tenant` with `key_id` counts against: the key's budget, then the tenant's or the default."""
        found = [self.keys[key_id]] if key_id and key_id in self.keys else []
        own = self.tenants.get(tenant) or self.default
        return [*found, own] if own else found


def _limits(entry: Any, where: str) -> dict[str, float]:
    if not isinstance(entry, dict) or not entry:
        raise SettingsError(f"{where} must map limits ({', '.join(LIMITS)}) to numbers")
    limits = {}
    for name, value in entry.items():
        if name not in LIMITS:
            raise SettingsError(f"{where}: unknown limit {name!r}; known: {', '.join(LIMITS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise SettingsError(f"{where}.{name} must be a number, at least 0")
        limits[name] = float(value)
    return limits


def parse_budgets(data: Any, where: str) -> BudgetConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - {"default", "tenants", "keys"}:
        raise SettingsError(f"{where} must be a mapping of default, tenants and keys")
    groups = {}
    for group, scope in (("tenants", "tenant"), ("keys", "key")):
        entries = data.get(group) or {}
        if not isinstance(entries, dict):
            raise SettingsError(f"{where}: {group} must map names to limits")
        groups[group] = {str(n): Budget(scope, str(n), _limits(e, f"{where}: {group}.{n}")) for n, e in entries.items()}
    default = data.get("default")
    return BudgetConfig(
        default=Budget("default", "default", _limits(default, f"{where}: default")) if default is not None else None,
        tenants=groups["tenants"],
        keys=groups["keys"],
    )


class BudgetFile:
    """The budgets of a YAML file, re-read when it changes; the first read must succeed (a setting that is wrong)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._signature = self._stat()
        self.config = self._read()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> BudgetConfig:
        where = f"CMP_BUDGETS {str(self.path)!r}"
        return parse_budgets(read_yaml(self.path, where), where)

    def current(self) -> BudgetConfig:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self.config
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_SECONDS:
                self._checked = now
                signature = self._stat()
                if signature != self._signature:
                    self._signature = signature
                    try:
                        self.config = self._read()
                        log.info("budgets reloaded", extra={"fields": {"path": str(self.path)}})
                    except SettingsError as exc:
                        log.error(
                            "budgets not reloaded, the last good ones apply", extra={"fields": {"error": str(exc)}}
                        )
        return self.config


def period_bounds(period: str, now: float) -> tuple[str, datetime]:
    """The first day (`YYYY-MM-DD`) of the day or month containing `now`, and when that period ends (UTC)."""
    return _bounds(period, int(now // 86400))


@functools.lru_cache(maxsize=8)
def _bounds(period: str, day_number: int) -> tuple[str, datetime]:
    """`period_bounds` of a UTC day (days since the epoch): worked out once a day, not at every check."""
    day = datetime.fromtimestamp(day_number * 86400, UTC)
    if period == "day":
        return day.strftime("%Y-%m-%d"), datetime.fromtimestamp(day.timestamp() + 86400, UTC)
    first = day.replace(day=1)
    following = (
        first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    )
    return first.strftime("%Y-%m-%d"), following


def _amount(measure: str, value: float) -> str:
    return f"{value:.4f} USD" if measure == "usd" else f"{int(value)} tokens"


@dataclass(frozen=True)
class _Read:
    """The ledger's total for one tenant or key and period, read at some time, and this process's totals then."""

    expires: float
    tokens: float
    usd: float
    own: Own  # this process's totals, as the ledger keeps them: another object once it forgot them
    flushed_tokens: float  # what of them the ledger held when it was read
    flushed_usd: float


class BudgetGuard:
    """Checks calls against the budgets, from the ledger's totals kept `ttl` seconds per process."""

    max_entries = 10_000  # (tenant or key, period) totals kept; the least recently read are forgotten first

    def __init__(self, budgets: BudgetFile, ledger: Spending, ttl: float, metrics: RuntimeMetrics | None) -> None:
        self.budgets = budgets
        self.ledger = ledger
        self.ttl = ttl
        self.metrics = metrics
        # (kind, name, first day) -> the last read, oldest first; a hit is a plain look-up, not reordered.
        self._cache: collections.OrderedDict[tuple[str, str, str], _Read] = collections.OrderedDict()
        self._lock = threading.Lock()
        if metrics:
            for scope in SCOPES:
                metrics.budget_rejections.labels(scope=scope)

    def spent(self, kind: str, name: str, first_day: str) -> tuple[float, float]:
        """(tokens, USD) spent by the tenant or key since `first_day`: the ledger's, with this process's calls since."""
        key = (kind, name, first_day)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is None or cached.expires <= now or cached.own is not self.ledger.own(kind, name):
            cached = self._read(key, now, cached)
        own = cached.own
        return (
            cached.tokens + own.recorded_tokens - cached.flushed_tokens,
            cached.usd + own.recorded_usd - cached.flushed_usd,
        )

    def _read(self, key: tuple[str, str, str], now: float, cached: _Read | None) -> _Read:
        """Read the ledger's total again and keep it, forgetting the oldest read past `max_entries`."""
        kind, name, first_day = key
        own = self.ledger.owner(kind, name)
        flushed_tokens, flushed_usd = own.flushed_tokens, own.flushed_usd  # read first: counted twice, not missed
        try:
            tokens, usd = self.ledger.spent(kind, name, first_day)
            read = _Read(now + self.ttl, tokens, usd, own, flushed_tokens, flushed_usd)
        except Exception as exc:  # noqa: BLE001 - fail open: a database hiccup must not stop every tenant
            log.warning(
                "budget not read from the ledger, the call goes ahead",
                extra={"fields": {"kind": kind, "error": type(exc).__name__}},
            )
            if cached is not None and cached.own is own:
                read = replace(cached, expires=now + self.ttl)  # the last total, with the calls since
            else:
                read = _Read(now + self.ttl, 0.0, 0.0, own, 0.0, 0.0)  # this process's own calls only
        with self._lock:
            self._cache.pop(key, None)
            self._cache[key] = read
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return read

    def check(self, tenant: str, key_id: str | None) -> None:
        """Raise `BudgetExceeded` for the first budget of the call that is spent."""
        now = time.time()
        for budget in self.budgets.current().applying(tenant, key_id):
            kind, name = ("key", budget.name) if budget.scope == "key" else ("tenant", tenant)
            for limit, ceiling in budget.limits.items():
                measure, period = LIMITS[limit]
                first_day, resets = period_bounds(period, now)
                tokens, usd = self.spent(kind, name, first_day)
                used = tokens if measure == "tokens" else usd
                if used >= ceiling:
                    if self.metrics:
                        self.metrics.child(self.metrics.budget_rejections, budget.scope).inc()
                    who = f"key {budget.name!r}" if kind == "key" else f"tenant {tenant!r}"
                    if budget.scope == "default":
                        who += " (default budget)"
                    raise BudgetExceeded(
                        f"budget exceeded: {who} has used {_amount(measure, used)} of its {limit} budget of "
                        f"{_amount(measure, ceiling)}; it resets at {resets.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                        scope=budget.scope,
                        name=budget.name,
                        limit=limit,
                        retry_after=max(1, math.ceil(resets.timestamp() - now)),
                    )

    def ratios(self) -> list[tuple[str, str, str, float]]:
        """(scope, name, limit, used/limit) of every configured budget; the default's is its most spent tenant's."""
        now = time.time()
        config = self.budgets.current()
        found = []
        for budget in [*config.tenants.values(), *config.keys.values()]:
            kind = "key" if budget.scope == "key" else "tenant"
            for limit, ceiling in budget.limits.items():
                measure, period = LIMITS[limit]
                tokens, usd = self.ledger.spent(kind, budget.name, period_bounds(period, now)[0])
                found.append(
                    (budget.scope, budget.name, limit, _ratio(tokens if measure == "tokens" else usd, ceiling))
                )
        if config.default:
            for limit, ceiling in config.default.limits.items():
                measure, period = LIMITS[limit]
                totals = self.ledger.totals("tenant", period_bounds(period, now)[0])
                used = [t if measure == "tokens" else u for n, (t, u) in totals.items() if n not in config.tenants]
                found.append(("default", "default", limit, _ratio(max(used, default=0.0), ceiling)))
        return found


def _ratio(used: float, ceiling: float) -> float:
    if ceiling <= 0:
        return 1.0 if used > 0 else 0.0
    return used / ceiling

"""What every model call costs, for whom: the usage ledger, prices, budgets and per-tenant billing.

`open_meter` builds the process's `Meter` from the settings. The runtime calls `Meter.open` before a
request's first model call (the budget stage: over budget, nothing else runs); every HTTP model call then
starts a `Call` where it is observed (`app.providers.huggingface.telemetry`), so each fallback attempt and
each tool step is checked and gets its own ledger row. Without a model, a ledger, budgets or billing, the
meter does nothing at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from app.config import ROUTER_CHAT_ENDPOINT, Settings
from app.errors import SettingsError
from app.usage import scope
from app.usage.billing import load_bill_to
from app.usage.budgets import BudgetFile, BudgetGuard
from app.usage.estimate import count_tokens
from app.usage.ledger import Ledger, Row
from app.usage.prices import PriceCatalog, Prices, load_prices
from app.usage.scope import Caller, CallScope, bind_caller

if TYPE_CHECKING:  # not imported at run time: `ctx` builds its parser before gunicorn's multiprocess set-up
    from app.observability import RuntimeMetrics
    from app.validation import ChatRequest

__all__ = ["Call", "Meter", "bind_caller", "open_ledger", "open_meter", "record_cache_hit", "start_call"]

log = logging.getLogger(__name__)
RATIO_INTERVAL = 15.0  # seconds between the budget gauges' reads of the ledger


class Usage(Protocol):
    """The counts a call reported (`app.providers.base.Usage`; declared here, as providers sit above usage)."""

    @property
    def prompt_tokens(self) -> int | None: ...
    @property
    def completion_tokens(self) -> int | None: ...
    @property
    def cached_tokens(self) -> int | None: ...
    @property
    def reasoning_tokens(self) -> int | None: ...


def open_ledger(settings: Settings) -> Ledger | None:
    """The ledger the settings name: PostgreSQL for `CMP_USAGE_URL`, none for `off`, SQLite in the state directory."""
    if settings.usage_url == "off":
        return None
    if settings.usage_url:
        from app.usage.postgres import PostgresLedger

        return PostgresLedger(settings.usage_url, settings.usage_timeout)
    from app.usage.sqlite import SQLiteLedger

    return SQLiteLedger(settings.state_path, settings.usage_timeout)


def open_meter(
    settings: Settings, metrics: RuntimeMetrics | None = None, catalog: PriceCatalog | None = None, metered: bool = True
) -> Meter:
    """The process's meter: a ledger when it has model calls to count (`metered`), budgets and billing when their
    files are set. A render-only runtime makes no model call: it opens nothing."""
    ledger = open_ledger(settings) if metered else None
    guard = None
    if settings.budgets_file:
        if ledger is None and metered:
            raise SettingsError("CMP_BUDGETS needs the usage ledger, which CMP_USAGE_URL=off turns off")
        if ledger is not None:
            guard = BudgetGuard(BudgetFile(settings.budgets_file), ledger, settings.budget_cache_seconds, metrics)
    router = urlsplit(settings.hf_endpoint).hostname == urlsplit(ROUTER_CHAT_ENDPOINT).hostname
    prices = Prices(load_prices(settings.model_prices_file) if settings.model_prices_file else {}, catalog, router)
    bill_to = load_bill_to(settings.bill_to_by_tenant_file) if settings.bill_to_by_tenant_file else {}
    return Meter(metrics, ledger, prices, guard, bill_to)


class Meter:
    """The ledger, prices, budgets and billing of one process, as the pipeline uses them."""

    def __init__(
        self,
        metrics: RuntimeMetrics | None,
        ledger: Ledger | None,
        prices: Prices,
        guard: BudgetGuard | None,
        bill_to: dict[str, str],
    ) -> None:
        self.metrics = metrics
        self.ledger = ledger
        self.prices = prices
        self.guard = guard
        self.bill_to = bill_to
        self.enabled = bool(ledger or guard or bill_to)
        self._gauges: threading.Thread | None = None
        os.register_at_fork(after_in_child=self._forked)

    def open(self, request: ChatRequest) -> None:
        """Bind the request's scope for its model calls and check its budgets (`BudgetExceeded` when spent)."""
        if not self.enabled:
            return
        called = scope.caller() or Caller(uuid.uuid4().hex, None, "cli")
        bound = CallScope(
            self,
            called.request_id,
            request.tenant_id,
            called.key_id,
            request.context,
            called.route,
            self.bill_to.get(request.tenant_id, ""),
        )
        scope.bind(bound)
        if self.guard is not None:
            if self._gauges is None and self.metrics is not None:
                self._start_gauges()
            self.guard.check(bound.tenant, bound.key_id)

    def problem(self) -> str | None:
        return self.ledger.problem() if self.ledger is not None else None

    def finish(self, call: Call, usage: Usage | None, served: str | None, text: str, outcome: str) -> None:
        """The call's ledger row: reported counts, or estimated ones; its cost when the model has a price."""
        if self.ledger is None:
            return
        prompt = completion = cached = reasoning = None
        estimated = False
        if outcome in ("ok", "cancelled"):
            if usage is not None:
                prompt, completion = usage.prompt_tokens, usage.completion_tokens
                cached, reasoning = usage.cached_tokens, usage.reasoning_tokens
            if prompt is None:
                prompt, estimated = count_tokens(call.model, call.prompt), True
            if completion is None:
                completion, estimated = count_tokens(call.model, [text or "".join(call.pieces)]), True
        cost = self.prices.cost(call.model, prompt, completion, cached)
        bound = call.scope
        if cost and self.metrics is not None:
            self.metrics.child(self.metrics.model_cost, call.model, bound.context).inc(cost)
        self.ledger.record(
            Row(
                ts=call.started,
                request_id=bound.request_id,
                tenant=bound.tenant,
                key_id=bound.key_id,
                context=bound.context,
                route=bound.route,
                model=call.model,
                served_model=served,
                endpoint=call.endpoint,
                stream=call.stream,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                reasoning_tokens=reasoning,
                estimated=estimated,
                cost_usd=cost,
                latency_ms=round((time.time() - call.started) * 1000, 2),
                outcome=outcome,
            )
        )

    def _start_gauges(self) -> None:
        self._gauges = threading.Thread(target=self._export_ratios, name="contexis-budget-gauges", daemon=True)
        self._gauges.start()

    def _export_ratios(self) -> None:
        """`cmp_budget_used_ratio` of every configured budget, read from the ledger every `RATIO_INTERVAL`."""
        assert self.guard is not None and self.metrics is not None
        while True:
            try:
                for budget_scope, name, limit, ratio in self.guard.ratios():
                    self.metrics.budget_used_ratio.labels(scope=budget_scope, name=name, limit=limit).set(ratio)
            except Exception as exc:  # noqa: BLE001 - a database away for a while must not end the gauges
                log.warning("budget gauges not updated", extra={"fields": {"error": type(exc).__name__}})
            time.sleep(RATIO_INTERVAL)

    def _forked(self) -> None:
        self._gauges = None


class Call:
    """One model call being observed: for whom, what was sent, and the text received so far (for estimates)."""

    __slots__ = ("endpoint", "model", "pieces", "prompt", "scope", "started", "stream")

    def __init__(self, bound: CallScope, model: str, endpoint: str, stream: bool, prompt: Sequence[str]) -> None:
        self.scope = bound
        self.model = model
        self.endpoint = endpoint
        self.stream = stream
        self.prompt = prompt
        self.pieces: list[str] = []
        self.started = time.time()

    def finish(self, usage: Usage | None, served: str | None, text: str, outcome: str) -> None:
        self.scope.meter.finish(self, usage, served, text, outcome)


def record_cache_hit(model: str, served: str | None, prompt: int, completion: int, stream: bool) -> float | None:
    """A request answered from the response cache: its ledger row has no tokens, cost 0 and outcome `cache_hit`
    (budgets count nothing), and what the answer took and cost when it was generated (`saved_tokens`, `saved_usd`).
    Returns that cost (the saving), when the model has a price."""
    bound = scope.current()
    if bound is None or bound.meter.ledger is None:
        return None
    saved = bound.meter.prices.cost(model, prompt, completion)
    bound.meter.ledger.record(
        Row(
            ts=time.time(),
            request_id=bound.request_id,
            tenant=bound.tenant,
            key_id=bound.key_id,
            context=bound.context,
            route=bound.route,
            model=model,
            served_model=served,
            endpoint="cache",
            stream=stream,
            prompt_tokens=0,
            completion_tokens=0,
            cached_tokens=None,
            reasoning_tokens=None,
            estimated=False,
            cost_usd=0.0,
            latency_ms=0.0,
            outcome="cache_hit",
            saved_tokens=prompt + completion,
            saved_usd=saved,
        )
    )
    return saved


def start_call(model: str, endpoint: str, stream: bool, prompt: Sequence[str]) -> Call | None:
    """The ledger's view of a model call starting now, once its budgets are checked; None when nothing meters it."""
    bound = scope.current()
    if bound is None or bound.meter.ledger is None:
        return None
    if bound.meter.guard is not None:
        bound.meter.guard.check(bound.tenant, bound.key_id)
    return Call(bound, model, endpoint, stream, prompt)

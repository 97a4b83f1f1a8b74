"""Runs a context's chain: each entry in turn until one answers, within one HF_DEADLINE.

An entry is passed over without a call when its circuit is open, when the router's catalog reports its
provider down or lacking what the request needs (tools, structured output), or when its endpoint already
refused the token. A call that fails moves on at once (the transport has retried what is worth retrying);
a request no model would accept (a bad parameter) stops the chain. A stream moves on only before its first
token: `TokenStream` waits for it, so a failure before it is an ordinary error here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from app.config import Settings
from app.errors import ModelsUnavailable, ProviderError
from app.observability import RuntimeMetrics
from app.providers.base import Generation, GenerationParams, Provider, TokenStream, Turn
from app.providers.huggingface import HuggingFaceClient
from app.providers.huggingface.catalog import Catalog, CatalogError
from app.providers.huggingface.transport import deadline, remaining
from app.routing.breaker import Breakers
from app.routing.chain import ChainEntry, ModelChain
from app.routing.failures import verdict
from app.routing.state import circuit_key, open_state

T = TypeVar("T")
_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Attempt:
    """What became of one entry: `served`, or why it was passed over, with the error's message if it failed."""

    model: str
    endpoint: str  # where its calls go, without credentials
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Routed(Generic[T]):
    """A chain's answer, the entry that gave it, and what became of each entry tried before."""

    result: T
    served: str
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True)
class Needs:
    """What the request asks of a model beyond text, which the catalog says each provider supports or not."""

    tools: bool = False
    structured_output: bool = False


class ModelRouter:
    """The clients of every chain entry (built on first use), their circuits, and the router's catalog."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        state = open_state(settings.state_url, settings.breaker_failures, settings.breaker_cooldown, metrics)
        self.breakers = Breakers(state, metrics, settings.breaker_cooldown)
        # The catalog describes Inference Providers on the chat route; others answer it without providers.
        chat = settings.hf_wire_api == "chat-completion"
        self.catalog = Catalog(settings, settings.catalog_refresh) if chat else None
        self._catalog_started = False
        self._clients: dict[ChainEntry, Provider] = {}
        self._lock = threading.Lock()

    def provider(self, entry: ChainEntry) -> Provider:
        """The client of `entry`, made once per process."""
        client = self._clients.get(entry)
        if client is None:
            with self._lock:
                client = self._clients.get(entry)
                if client is None:
                    client = self._clients[entry] = HuggingFaceClient(entry.settings(self.settings), self.metrics)
        return client

    def history_in_turns(self, chain: ModelChain) -> bool:
        """Whether the chain's first model takes the history as turns (the prompt is rendered before a model
        is picked)."""
        return self.provider(chain.primary).history_in_turns

    def generate(
        self,
        chain: ModelChain,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
        attempts: list[Attempt] | None = None,
    ) -> Routed[Generation]:
        """The first answer of the chain; `attempts` (when given) says what became of each entry, even when
        the chain fails."""
        return self._run(
            chain, _needs(params), lambda provider: provider.generate(prompt, params, system, history, after), attempts
        )

    def stream(
        self,
        chain: ModelChain,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
        attempts: list[Attempt] | None = None,
    ) -> Routed[TokenStream]:
        """The first stream of the chain to give its first token; its `model` is the entry that gave it."""
        routed = self._run(
            chain, _needs(params), lambda provider: provider.stream(prompt, params, system, history, after), attempts
        )
        routed.result.model = routed.served
        return routed

    def read_catalog(self) -> str:
        """Read the router's catalog now rather than in the background (`ctx hf test-model --context`); why it
        could not be read, or ""."""
        if self.catalog is None:
            return ""
        self._catalog_started = True
        try:
            self.catalog.refresh()
        except CatalogError as exc:
            return str(exc)
        return ""

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog.close()
        for client in list(self._clients.values()):
            client.close()

    def _run(
        self, chain: ModelChain, needs: Needs, call: Callable[[Provider], T], attempts: list[Attempt] | None
    ) -> Routed[T]:
        if self.catalog is not None and not self._catalog_started:
            self._catalog_started = True  # started by the first chain, read in its own thread
            self.catalog.start()
        attempts = [] if attempts is None else attempts
        refused: set[tuple[str, str]] = set()
        last_error: ProviderError | None = None
        passed: tuple[str, str] | None = None  # (model, reason) of the entry passed over last
        attributes: dict[str, AttributeValue] = {
            "gen_ai.request.model": chain.primary.id,
            "contexis.fallback.entries": len(chain.entries),
        }
        with (
            _tracer.start_as_current_span("model.chain", attributes=attributes, record_exception=False) as span,
            deadline(self.settings.hf_deadline),
        ):
            for entry in chain.entries:
                if passed:
                    self._fell_back(passed, entry.id)
                    passed = None
                if remaining() <= 0:
                    break  # HF_DEADLINE is spent: no entry is left any time
                reason = self._skip(entry, needs, refused)
                key = circuit_key(entry.endpoint_of(self.settings), entry.id)
                permit = "clean" if reason else self.breakers.allow(key, entry.id)
                if permit == "open":
                    reason = "circuit_open"
                if reason:
                    attempts.append(Attempt(entry.id, entry.endpoint_of(self.settings), reason))
                    passed = (entry.id, reason)
                    continue
                try:
                    result = call(self.provider(entry))
                except ProviderError as exc:
                    found = verdict(exc)
                    if not found.counts:
                        self.breakers.succeeded(key, entry.id, permit)  # it answered: the request was at fault
                    if not found.fall_back:
                        raise
                    if found.counts:
                        self.breakers.failed(key, entry.id, entry.endpoint_of(self.settings))
                    if found.token_refused:
                        refused.add(entry.token_of())
                    attempts.append(Attempt(entry.id, entry.endpoint_of(self.settings), found.reason, exc.message))
                    last_error, passed = exc, (entry.id, found.reason)
                    continue
                self.breakers.succeeded(key, entry.id, permit)
                attempts.append(Attempt(entry.id, entry.endpoint_of(self.settings), "served"))
                span.set_attribute("gen_ai.response.model", entry.id)
                span.set_attribute("contexis.fallback.attempts", len(attempts))
                return Routed(result, entry.id, tuple(attempts))
            if passed:
                self._fell_back(passed, "none")
            span.set_attribute("contexis.fallback.attempts", len(attempts))
            error = last_error or ModelsUnavailable(
                "No model of the context's chain could be called: "
                + "; ".join(f"{attempt.model}: {attempt.outcome}" for attempt in attempts)
                + ". Retry shortly: a model whose circuit is open gets a trial call after CMP_BREAKER_COOLDOWN.",
                metric_code="chain_unavailable",
            )
            span.set_status(Status(StatusCode.ERROR, error.code))
            raise error

    def _skip(self, entry: ChainEntry, needs: Needs, refused: set[tuple[str, str]]) -> str:
        """Why `entry` is passed over without a call ("" when it is called)."""
        if entry.token_of() in refused:
            return "token_refused"
        if self.catalog is None or entry.endpoint:
            return ""
        offer = self.catalog.offer(entry.id)
        if offer is None:
            return ""
        if offer.down:
            return "provider_down"
        if needs.tools and offer.supports_tools is False:
            return "no_tools"
        if needs.structured_output and offer.supports_structured_output is False:
            return "no_structured_output"
        return ""

    def _fell_back(self, passed: tuple[str, str], to_model: str) -> None:
        if self.metrics:
            self.metrics.child(self.metrics.model_fallbacks, passed[0], to_model, passed[1]).inc()


def _needs(params: GenerationParams) -> Needs:
    """Tools, and a response format other than plain text, when the request asks for them."""
    response_format = params.response_format
    structured = response_format is not None and response_format.get("type") != "text"
    return Needs(tools=bool(params.tools), structured_output=structured)

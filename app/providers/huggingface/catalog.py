"""The router's catalog (`GET {HF_ENDPOINT}/models`): which providers serve a model, their status, prices,
context length, capabilities and speed, kept fresh by a background thread.

The router answers `{"object": "list", "data": [{"id": "meta-llama/...", "providers": [{"provider": "groq",
"status": "live", "context_length": 131072, "pricing": {"input": 0.59, "output": 0.79}, "supports_tools": true,
"supports_structured_output": false, ...}]}]}` (prices in USD per million tokens). An endpoint without that
shape (TGI, vLLM: `data` without `providers`) yields no offers, so nothing is ever skipped for it.

Reads never wait on the network: `refresh` swaps in a whole new table, readers see the old one or the new one.
A failed refresh keeps the last good table (a catalog a minute old beats none) and is tried again sooner.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from app.config import Settings, public_url

log = logging.getLogger(__name__)

FETCH_TIMEOUT = (3.05, 10.0)  # connect, read: the catalog is a few hundred kB
MAX_CATALOG_BYTES = 16 * 1024 * 1024
DEFAULT_REFRESH_SECONDS = 300.0
RETRY_SECONDS = 30.0  # after a failed refresh, before the next try (capped by the interval)
# Provider-selection suffixes the router understands, which name no provider.
POLICIES = ("fastest", "cheapest", "preferred")


class CatalogError(Exception):
    """The catalog could not be read (unreachable, an error status, a body of another shape)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the endpoint's answer, when it answered with an error status


@dataclass(frozen=True)
class Offer:
    """One provider's offer of one model, as the router's catalog describes it; a field it omits is None."""

    model: str
    provider: str
    status: str  # "live" or "error" (the router's own words; anything else is kept as sent)
    context_length: int | None = None
    input_price: float | None = None  # USD per million input tokens
    output_price: float | None = None  # USD per million output tokens
    supports_tools: bool | None = None
    supports_structured_output: bool | None = None
    latency: float | None = None  # seconds to the first token
    throughput: float | None = None  # tokens per second

    @property
    def id(self) -> str:
        """The chain entry that names this offer: `model:provider`."""
        return f"{self.model}:{self.provider}"

    @property
    def down(self) -> bool:
        """The router reports this provider failing for this model."""
        return self.status == "error"

    @property
    def price(self) -> tuple[float, float] | None:
        if self.input_price is None or self.output_price is None:
            return None
        return self.input_price, self.output_price


def split_model(model_id: str) -> tuple[str, str]:
    """(`model`, `provider`) of `model:provider`; the provider is "" without a suffix."""
    model, _, provider = model_id.partition(":")
    return model, provider


class Catalog:
    """The router's offers per model, refreshed every `interval` seconds by `start()`'s thread."""

    def __init__(self, settings: Settings, interval: float = DEFAULT_REFRESH_SECONDS) -> None:
        self.settings = settings
        self.url = f"{settings.hf_endpoint.rstrip('/')}/models"
        self.interval = interval
        self.updated_at: float | None = None  # time.time() of the last good refresh
        self._offers: Mapping[str, tuple[Offer, ...]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.updated_at is not None

    def offers(self, model: str) -> list[Offer]:
        """Every provider's offer of `model` (a `:provider` suffix is ignored), in the router's order."""
        return list(self._offers.get(split_model(model)[0], ()))

    def offer(self, model_id: str) -> Offer | None:
        """The offer `model:provider` names, or None (no suffix, a policy suffix, or not in the catalog)."""
        model, provider = split_model(model_id)
        if not provider:
            return None
        return next((offer for offer in self._offers.get(model, ()) if offer.provider == provider), None)

    def price(self, model_id: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens for `model_id`, or None when the catalog has no price.

        `model:provider` is that provider's price. Without a provider the router picks one, so the price is
        the highest of the priced offers that are not down (input and output each): an upper bound, so a
        ledger never undercounts. `:cheapest` is the lowest; `:fastest` the offer with the highest throughput
        (the upper bound when none reports one).
        """
        model, provider = split_model(model_id)
        if provider and provider not in POLICIES:
            offer = self.offer(model_id)
            return offer.price if offer else None
        priced = [offer for offer in self._offers.get(model, ()) if offer.price and not offer.down]
        if not priced:
            return None
        if provider == "cheapest":
            cheapest = min(priced, key=lambda offer: (offer.input_price or 0) + (offer.output_price or 0))
            return cheapest.price
        if provider == "fastest":
            fastest = max(priced, key=lambda offer: offer.throughput or -math.inf)
            if fastest.throughput is not None:
                return fastest.price
        return max(offer.input_price or 0 for offer in priced), max(offer.output_price or 0 for offer in priced)

    def refresh(self) -> None:
        """Read the catalog now and swap it in; `CatalogError` (the old table kept) when it cannot be read."""
        self._offers = parse(self._fetch())
        self.updated_at = time.time()

    def load(self, body: Any) -> None:
        """Swap in a catalog already read (`ctx hf models` reads it once, tests give real bodies)."""
        self._offers = parse(body)
        self.updated_at = time.time()

    def start(self) -> None:
        """Refresh in a daemon thread: at once, then every `interval` (sooner after a failure). Idempotent."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hf-catalog", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the refresher (the table stays readable); a read under way is given a second to end."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval
            try:
                self.refresh()
            except CatalogError as exc:
                if exc.status == 404:  # an endpoint without a catalog (not the router): nothing to skip, ever
                    log.info("No catalog at %s: no provider of a chain is skipped", public_url(self.url))
                    return
                log.warning("Router catalog not refreshed from %s: %s", public_url(self.url), exc)
                wait = min(self.interval, RETRY_SECONDS)
            self._stop.wait(wait)

    def _fetch(self) -> Any:
        headers = {"Accept": "application/json"}
        if self.settings.hf_token:
            headers["Authorization"] = f"Bearer {self.settings.hf_token}"
        with requests.Session() as session:
            # As the transport does: the environment's proxies, never a ~/.netrc replacing the token.
            environment = session.merge_environment_settings(self.url, {}, None, None, None)
            session.trust_env = False
            try:
                proxies, verify = environment["proxies"], environment["verify"]
                with session.get(
                    self.url, headers=headers, timeout=FETCH_TIMEOUT, stream=True, proxies=proxies, verify=verify
                ) as response:
                    if response.status_code != 200:
                        raise CatalogError(f"the endpoint answered {response.status_code}", response.status_code)
                    body = response.raw.read(MAX_CATALOG_BYTES + 1, decode_content=True)
            except (requests.RequestException, Urllib3Error, OSError) as exc:
                raise CatalogError(f"the endpoint is unreachable ({type(exc).__name__})") from None
        if len(body) > MAX_CATALOG_BYTES:
            raise CatalogError(f"the catalog is larger than {MAX_CATALOG_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise CatalogError("the endpoint answered something that is not JSON") from None


def parse(body: Any) -> dict[str, tuple[Offer, ...]]:
    """The offers per model id of a catalog body; entries of another shape are left out, a body of another
    shape is a `CatalogError`."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise CatalogError("the answer has no `data` list of models")
    table: dict[str, tuple[Offer, ...]] = {}
    for model in data:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        providers = model.get("providers")
        if not isinstance(providers, list):
            continue
        offers = tuple(
            _offer(model["id"], entry)
            for entry in providers
            if isinstance(entry, dict) and isinstance(entry.get("provider"), str)
        )
        if offers:
            table[model["id"]] = offers
    return table


def _offer(model: str, entry: dict[str, Any]) -> Offer:
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        pricing = {}
    return Offer(
        model=model,
        provider=entry["provider"],
        status=str(entry.get("status", "")),
        context_length=_integer(entry.get("context_length")),
        input_price=_number(pricing.get("input")),
        output_price=_number(pricing.get("output")),
        supports_tools=_boolean(entry.get("supports_tools")),
        supports_structured_output=_boolean(entry.get("supports_structured_output")),
        latency=_number(entry.get("latency")),
        throughput=_number(entry.get("throughput")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _boolean(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None

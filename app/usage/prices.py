"""What a model's tokens cost: `CMP_MODEL_PRICES` first, then the router's catalog; unknown is `None`, never 0.

Prices are USD per million tokens, as the router publishes them (`pricing.input`, `pricing.output` of
`GET /v1/models`). A file may also give `cached_input`, the price of prompt tokens the endpoint reports as
served from its cache; without it they cost the input price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import SettingsError
from app.usage.files import read_yaml


class PriceCatalog(Protocol):
    """The router's catalog (`app.providers.huggingface.catalog.Catalog`), read by a thread of its own."""

    def price(self, model_id: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens, or None when it lists no price."""
        ...

    def start(self) -> None: ...


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt: int, completion: int, cached: int | None = None) -> float:
        cached = min(cached or 0, prompt) if self.cached_input is not None else 0
        cached_price = self.cached_input or 0.0
        return ((prompt - cached) * self.input + cached * cached_price + completion * self.output) / 1_000_000


def _usd(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SettingsError(f"{where} must be a number of USD per million tokens, at least 0")
    return float(value)


def load_prices(path: str) -> dict[str, Price]:
    """`model: {input: USD, output: USD[, cached_input: USD]}` per million tokens, from a YAML file."""
    where = f"CMP_MODEL_PRICES {path!r}"
    data = read_yaml(path, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{where} must map model ids to {{input, output}}")
    prices = {}
    for model, entry in data.items():
        if (
            not isinstance(entry, dict)
            or not {"input", "output"} <= set(entry)
            or set(entry) - set(Price.__annotations__)
        ):
            raise SettingsError(f"{where}: {model}: must be {{input: USD, output: USD}} (cached_input optional)")
        cached = entry.get("cached_input")
        prices[str(model)] = Price(
            _usd(entry["input"], f"{where}: {model}.input"),
            _usd(entry["output"], f"{where}: {model}.output"),
            None if cached is None else _usd(cached, f"{where}: {model}.cached_input"),
        )
    return prices


class Prices:
    """A model id's price: the file's entry for it (or for it without its `:provider` suffix), else the catalog's."""

    def __init__(self, overrides: dict[str, Price], catalog: PriceCatalog | None = None, read: bool = False) -> None:
        self.overrides = overrides
        self.catalog = catalog
        self.read = read  # whether the catalog is worth reading: the router's lists prices, other endpoints' do not

    def start(self) -> None:
        """Have the catalog read in the background, never on a request's path: each serving worker starts it
        (`app/gunicorn_conf.py`), so neither a test's app nor a one-off command reads the router."""
        if self.catalog is not None and self.read:
            self.catalog.start()

    def price(self, model: str) -> Price | None:
        found = self.overrides.get(model) or self.overrides.get(model.partition(":")[0])
        if found is not None:
            return found
        if self.catalog is None:
            return None
        listed = self.catalog.price(model)
        return Price(*listed) if listed is not None else None

    def cost(self, model: str, prompt: int | None, completion: int | None, cached: int | None = None) -> float | None:
        """USD for the counts; None when the model has no price or no count is known."""
        price = self.price(model)
        if price is None or (prompt is None and completion is None):
            return None
        return price.cost(prompt or 0, completion or 0, cached)

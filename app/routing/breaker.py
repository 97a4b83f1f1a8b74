"""The circuit breakers of a chain's models over one `CircuitState`, shown on `cmp_model_circuit_open{model}`.

The gauge is written only when what this process saw changes (and is read across workers as the most recent
write), so a request whose models are healthy writes nothing.
"""

from __future__ import annotations

import logging
import threading

from app.observability import RuntimeMetrics
from app.routing.state import CircuitState, Permit

log = logging.getLogger(__name__)


class Breakers:
    """Asks the state whether a model may be called, and records how the call went."""

    def __init__(self, state: CircuitState, metrics: RuntimeMetrics | None, cooldown: float) -> None:
        self.state = state
        self.metrics = metrics
        self.cooldown = cooldown
        self._shown: dict[str, bool] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, model: str) -> Permit:
        permit = self.state.allow(key)
        self._show(model, permit in ("open", "trial"))
        return permit

    def failed(self, key: str, model: str, endpoint: str) -> None:
        if self.state.failed(key):
            log.warning(
                "Model circuit opened: %s at %s failed too often in a row; calls skip it for %gs, then one trial",
                model,
                endpoint,
                self.cooldown,
            )
            self._show(model, True)

    def succeeded(self, key: str, model: str, permit: Permit) -> None:
        if permit == "clean":
            return  # nothing recorded, nothing to reset
        self.state.succeeded(key)
        if permit == "trial":
            log.info("Model circuit closed: %s answered its trial call", model)
        self._show(model, False)

    def _show(self, model: str, is_open: bool) -> None:
        if self._shown.get(model) is is_open or self.metrics is None:
            return
        with self._lock:
            self._shown[model] = is_open
            self.metrics.model_circuit_open.labels(model=model).set(1 if is_open else 0)

"""Model routing: a context's chain of models (`model:` in its file), tried in order with a circuit breaker
per (endpoint, model), shared through Redis when `CMP_STATE_URL` names one.

The runtime asks `chain_of(context)` (None without a `model:` section, which then costs nothing else) and
hands the chain to `ModelRouter.generate`/`stream`.
"""

from app.routing.chain import ChainEntry, ModelChain, chain_of
from app.routing.router import Attempt, ModelRouter, Routed

__all__ = ["Attempt", "ChainEntry", "ModelChain", "ModelRouter", "Routed", "chain_of"]

"""Where the circuits of the models live: in the process, or in Redis for every worker and replica.

A circuit counts consecutive failures of one (endpoint, model). At `failures` it opens for `cooldown`
seconds; then one caller gets a trial call (the others still skip it) whose success closes it and whose
failure opens it again. `allow` says which of these a caller gets:

- `clean`: nothing recorded (a success needs no write);
- `closed`: failures recorded, but fewer than the threshold;
- `trial`: the cooldown is over and this caller makes the one trial call;
- `open`: skip the model.

Redis calls are bounded by 0.5 s timeouts (the URL's own `socket_timeout`/`socket_connect_timeout` win), as
the rate limiter's are, and fail open: a Redis that is down or hung is logged, counted in
`cmp_model_state_errors_total`, and the circuits are kept in the process for `RETRY_SECONDS` before Redis is
tried again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import redis

from app.config import REDIS_TIMEOUTS
from app.observability import RuntimeMetrics

log = logging.getLogger(__name__)

Permit = Literal["clean", "closed", "trial", "open"]
RETRY_SECONDS = 5.0
KEY_PREFIX = "cmp:circuit:"


class CircuitState(Protocol):
    """The circuits of every (endpoint, model), by key."""

    def allow(self, key: str) -> Permit: ...

    def failed(self, key: str) -> bool:
        """Count a failure; True when it opened the circuit (closed, or a trial that failed)."""
        ...

    def succeeded(self, key: str) -> None:
        """The model answered: its circuit closes and its count starts again."""
        ...


def circuit_key(endpoint: str, model: str) -> str:
    """A key naming one (endpoint, model) without showing either (the endpoint may carry credentials)."""
    return hashlib.sha256(f"{endpoint}\n{model}".encode()).hexdigest()[:32]


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float | None = None
    trial_until: float = 0.0


class LocalState:
    """The circuits of this process."""

    def __init__(self, failures: int, cooldown: float) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> Permit:
        circuit = self._circuits.get(key)
        if circuit is None:
            return "clean"
        with self._lock:
            if circuit.open_until is None:
                return "closed"
            now = time.monotonic()
            if now < circuit.open_until or now < circuit.trial_until:
                return "open"
            circuit.trial_until = now + self.cooldown  # one trial; if its caller vanishes, another after this
            return "trial"

    def failed(self, key: str) -> bool:
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            circuit.failures += 1
            now = time.monotonic()
            if circuit.failures < self.threshold or (circuit.open_until is not None and now < circuit.open_until):
                return False  # below the threshold, or a call begun before it opened
            circuit.open_until = now + self.cooldown
            circuit.trial_until = 0.0
            return True

    def succeeded(self, key: str) -> None:
        if key in self._circuits:
            with self._lock:
                self._circuits.pop(key, None)


# Redis's own clock decides, so replicas whose clocks differ agree on when a cooldown ends.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
_ALLOW = (
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') "
    "if open_until == 0 then return 1 end " + _NOW + "if now < open_until then return 3 end "
    "if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 2 end "
    "return 3"
)
_FAILED = (
    "local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) "
    "if failures < tonumber(ARGV[1]) then return 0 end " + _NOW + ""
    "local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0') "
    "if open_until > now then return 0 end "
    "redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[2])) "
    "redis.call('DEL', KEYS[2]) "
    "return 1"
)
_PERMITS: tuple[Permit, ...] = ("clean", "closed", "trial", "open")


class RedisState:
    """The circuits of every worker and replica sharing one Redis; those of the process while it is down."""

    def __init__(self, url: str, failures: int, cooldown: float, metrics: RuntimeMetrics | None = None) -> None:
        self.threshold = failures
        self.cooldown_ms = max(1, int(cooldown * 1000))
        self.ttl_ms = max(self.cooldown_ms * 4, 600_000)  # a count nobody touched for this long is dropped
        self.metrics = metrics
        self.client = redis.Redis.from_url(url, **REDIS_TIMEOUTS)
        self._allow = self.client.register_script(_ALLOW)
        self._failed = self.client.register_script(_FAILED)
        self.fallback = LocalState(failures, cooldown)
        self._down_until = 0.0

    def allow(self, key: str) -> Permit:
        if self._down():
            return self.fallback.allow(key)
        try:
            found = self._allow(keys=[KEY_PREFIX + key, f"{KEY_PREFIX}{key}:trial"], args=[self.cooldown_ms])
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return self.fallback.allow(key)
        return _PERMITS[int(found)]

    def failed(self, key: str) -> bool:
        if self._down():
            return self.fallback.failed(key)
        keys = [KEY_PREFIX + key, f"{KEY_PREFIX}{key}:trial"]
        try:
            return bool(self._failed(keys=keys, args=[self.threshold, self.cooldown_ms, self.ttl_ms]))
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)
            return self.fallback.failed(key)

    def succeeded(self, key: str) -> None:
        self.fallback.succeeded(key)
        if self._down():
            return
        try:
            self.client.delete(KEY_PREFIX + key, f"{KEY_PREFIX}{key}:trial")
        except (redis.RedisError, OSError) as exc:
            self._unreachable(exc)

    def close(self) -> None:
        self.client.close()

    def _down(self) -> bool:
        return self._down_until > time.monotonic()

    def _unreachable(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_SECONDS
        if self.metrics:
            self.metrics.model_state_errors.inc()
        log.warning(
            "Model circuit storage unreachable (%s): circuits are kept in this process for %gs",
            type(exc).__name__,
            RETRY_SECONDS,
        )


def open_state(
    url: str, failures: int, cooldown: float, metrics: RuntimeMetrics | None = None
) -> LocalState | RedisState:
    """Redis when `url` names one (CMP_STATE_URL), the process otherwise."""
    if url:
        return RedisState(url, failures, cooldown, metrics)
    return LocalState(failures, cooldown)

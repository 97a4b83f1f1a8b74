"""Connections to the memory database: one ``psycopg_pool`` pool per process and URL, every wait bounded.

A pool is opened on first use, so a forked gunicorn worker opens its own. Every wait is bounded by
``CMP_MEMORY_TIMEOUT`` (pool checkout, connect, statement timeout), and because a frozen server or a silent
socket answers no timeout, the client bounds each transaction too (``BoundedConnection``): a connection that
missed its deadline is closed, so the pool replaces it.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

# The monotonic time by which the calling thread's memory transaction must end (unset: no bound).
_deadline = threading.local()


class DeadlineMissed(psycopg.OperationalError):
    """The database did not answer by the transaction's deadline; the connection was closed."""


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose every wait on the server (statements, commit, the pool's check at checkout)
    ends by the calling thread's deadline, whatever the server or the network do.

    Past it the connection is in the middle of an exchange, so it is closed: the pool drops a closed
    connection when it comes back, and the next checkout gets a fresh one.
    """

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        deadline: float | None = getattr(_deadline, "at", None)
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.001)
            timeout = left if timeout is None else min(timeout, left)
        try:
            return super().wait(gen, interval, timeout)
        except psycopg.errors._WaitTimeout as exc:  # psycopg's own: its wait timed out
            self.pgconn.finish()
            raise DeadlineMissed("no answer by the deadline") from exc


@contextmanager
def bounded_waits(seconds: float | None) -> Iterator[float | None]:
    """Bound this thread's memory waits to ``seconds`` from now (None: unbounded) until the block ends."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = None if seconds is None else time.monotonic() + seconds
    try:
        yield _deadline.at
    finally:
        _deadline.at = previous


_pools: dict[tuple[int, str, int, float], ConnectionPool[BoundedConnection]] = {}
_pools_lock = threading.Lock()


def _close_pools() -> None:
    """At exit, close this process's pools only: a forked child must not close its parent's sockets."""
    for key, pool in list(_pools.items()):
        if key[0] == os.getpid():
            pool.close(timeout=1)


atexit.register(_close_pools)


def connection_pool(url: str, size: int, timeout: float) -> ConnectionPool[BoundedConnection]:
    """This process's pool for ``url``, opened on first use (after gunicorn's fork), filled in the background."""
    key = (os.getpid(), url, size, timeout)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            limit_ms = max(1, int(timeout * 1000))
            # The server cancels a slow statement a little before the client's deadline: a running server
            # answers "statement timeout" and keeps the connection; the deadline is for one that cannot.
            statement_ms = max(1, int(timeout * 800))
            pool = ConnectionPool(
                url,
                connection_class=BoundedConnection,
                min_size=1,
                max_size=size,
                timeout=timeout,
                # A connection that died with the server is found at checkout, not by the request.
                check=ConnectionPool.check_connection,
                kwargs={
                    "connect_timeout": max(1, math.ceil(timeout)),
                    # A host that stops answering (no reset, no ACK) drops the connection instead of
                    # holding a thread until the kernel gives up, minutes later. TCP only.
                    "tcp_user_timeout": limit_ms,
                    "options": f"-c statement_timeout={statement_ms}"
                    f" -c idle_in_transaction_session_timeout={limit_ms * 5}",
                    "application_name": "contexis-runtime",
                },
                # A failed connection attempt is dropped at once instead of retried in the background: the
                # next checkout tries again, so a request waits at most `timeout` and the first one after
                # the database is back reconnects.
                reconnect_timeout=0,
                name="contexis-memory",
                open=False,
            )
            pool.open(wait=False)
            _pools[key] = pool
    return pool

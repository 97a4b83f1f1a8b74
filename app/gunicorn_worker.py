"""The gunicorn worker of the runtime: gthread, guarded against slow clients, with JSON error pages.

gthread hands a new connection to a pool thread as soon as its first byte arrives, and that thread then
blocks reading the request head: a few hundred clients dripping their headers a byte a second hold every
thread, and normal requests wait. This worker reads the head in its poller instead (non-blocking, no thread
held), gives a connection `GUNICORN_HEADER_TIMEOUT` seconds to complete it, and only then hands it to a
thread with the head already read. The body is read by the thread as before (an ingress that buffers
requests covers slow bodies; see the README).

gunicorn answers what it cannot parse (a request line or headers too long or malformed) itself, with an
HTML page; here those answers, and the worker's own 408 and 503, are JSON in the error shape of the API the
request's path names (OpenAI's under `/v1/`), as the app's answers are.

Busy is not dead: a request whose head is read waits here, not in the thread pool's queue, when every
thread is taken. One that waits longer than `GUNICORN_QUEUE_TIMEOUT` gets a JSON 503 with `Retry-After`
instead of a long wait, and the probes are answered by the poller itself meanwhile: `/healthz` is ok, and
`/readyz` repeats the verdict a thread last gave (`app.web.health.last_verdict`), so a liveness probe
never restarts a pod only because every thread waits on a slow model.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections import deque
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from gunicorn import util
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

from app.config import Settings

# The path a pool thread is handling (no query, no header: a key may be in either): gunicorn's write_error, called
# there, is given only the socket.
_handling = threading.local()


def write_json_error(
    sock: socket.socket, status_int: int, reason: str, mesg: str, extra: str = "", path: str | None = None
) -> None:
    """gunicorn's own error answer in the shape of `path`'s API (the thread's request by default), not HTML."""
    from app.web.errors import error_body_at  # loaded with the app, in this worker, by now

    shaped = error_body_at(
        getattr(_handling, "path", "") if path is None else path,
        status_int,
        reason.lower().replace(" ", "_"),
        mesg or reason,
    )
    write_json(sock, status_int, reason, json.dumps(shaped).encode(), extra)


def write_json(sock: socket.socket, status_int: int, reason: str, body: bytes, extra: str = "") -> None:
    """A whole JSON answer written by the poller, then the connection is closed (`extra`: more header lines)."""
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def _target_path(head: bytes) -> str:
    """The path of a request head's target (absolute-form too) as far as it arrived; "" when it has none."""
    end = head.find(b"\r\n")
    parts = (head if end < 0 else head[:end]).split(b" ", 2)
    target = parts[1].decode("latin-1") if len(parts) > 1 else ""
    if not target.startswith("/"):
        try:
            target = urlsplit(target).path
        except ValueError:  # not a URL at all: no API's path
            return ""
    return target.partition("?")[0]


def _probe(head: bytes) -> str:
    """`/healthz` or `/readyz` when `head` is a GET of one of them (what probes send), else ""."""
    path = _target_path(head)
    return path if head.startswith(b"GET ") and path in ("/healthz", "/readyz") else ""


class HeaderTimeoutWorker(ThreadWorker):
    """gthread whose poller reads each request head, so a slow client holds a socket, never a thread."""

    def init_process(self) -> None:
        settings = Settings.from_env()
        self.header_timeout = settings.header_timeout
        self.queue_timeout = settings.queue_timeout
        self.reading_heads: deque[Any] = deque()
        # Connections whose head is read, waiting for a thread (each with `queued_at`), and the threads at work.
        self.waiting_for_thread: deque[Any] = deque()
        self.busy = 0
        cfg = self.cfg
        # Past gunicorn's own limits the head goes to the parser anyway, which answers 414 or 431.
        self.max_head = (
            (cfg.limit_request_line or 8190)
            + (cfg.limit_request_fields or 100) * ((cfg.limit_request_field_size or 8190) + 2)
            + 4
        )
        # gunicorn has no hook for its error page: every error it writes goes through util.write_error,
        # which this worker process points at the JSON writer.
        util.write_error = write_json_error
        super().init_process()

    def _guarded(self, conn: Any) -> bool:
        """Plain HTTP/1 whose next head is not yet read (TLS and HTTP/2 keep gthread's own path)."""
        plain = getattr(conn, "plain_http1", None)
        if plain is None:  # the same for every request of a connection: asked once (gunicorn's settings are slow)
            plain = conn.plain_http1 = not (
                self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client)
            )
        if not plain:
            return False
        buffered = conn.parser is not None and conn.parser.unreader.buf.getvalue()
        return not buffered and getattr(conn, "head", None) is None

    def enqueue_req(self, conn: Any) -> None:
        """New and kept-alive connections first wait in the poller for a complete head."""
        if not self._guarded(conn):
            self._submit(conn)
            return
        conn.head = b""
        conn.head_deadline = time.monotonic() + self.header_timeout
        if conn.sock.getblocking():  # gthread hands most connections over non-blocking already (a syscall saved)
            conn.sock.setblocking(False)
        # A kept-alive connection comes here once it is readable, and its next head has nearly always arrived
        # whole: it goes to a thread at once, without a round through the poller.
        state = self._receive(conn)
        if state == "waiting":
            self.reading_heads.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))
        else:
            self._dispatch(conn, state)

    def _read_head(self, conn: Any, _sock: Any) -> None:
        state = self._receive(conn)
        if state != "waiting":
            self.poller.unregister(conn.sock)
            self.reading_heads.remove(conn)
            self._dispatch(conn, state)

    def _receive(self, conn: Any) -> str:
        """Add what has arrived to the head: `complete` (or past gunicorn's limits), `gone` or `waiting`."""
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return "waiting"
        except OSError:
            data = b""
        if not data:  # the client went away
            return "gone"
        conn.head += data
        return "complete" if b"\r\n\r\n" in conn.head or len(conn.head) > self.max_head else "waiting"

    def _dispatch(self, conn: Any, state: str) -> None:
        """A complete head goes to a thread; a connection whose client went away is closed."""
        if state == "gone":
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        if self.busy >= self.cfg.threads and self._answer_probe(conn):
            return
        self._submit(conn)

    def _submit(self, conn: Any) -> None:
        """To a thread when one is free, else to the queue that `GUNICORN_QUEUE_TIMEOUT` bounds."""
        if self.busy < self.cfg.threads:
            self.busy += 1
            super().enqueue_req(conn)
        else:
            conn.queued_at = time.monotonic()
            self.waiting_for_thread.append(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """A thread is free again: the connection goes on as gthread decides, the next waiting one gets it."""
        self.busy -= 1
        super().finish_request(conn, fs)
        while self.waiting_for_thread and self.busy < self.cfg.threads:
            self._submit(self.waiting_for_thread.popleft())

    def _answer_probe(self, conn: Any) -> bool:
        """Answer `/healthz` or `/readyz` from the poller (every thread is busy); whether it was one."""
        probe = _probe(conn.head or b"")
        if not probe:
            return False
        if probe == "/healthz":
            status, reason, body = 200, "OK", b'{"status":"ok"}'
        else:
            from app.web.health import last_verdict  # loaded with the app, in this worker, by now

            status, body = last_verdict()
            reason = "OK" if status == 200 else "Service Unavailable"
        self.nr_conns -= 1
        with contextlib.suppress(OSError):  # the prober gave up: nothing left to say
            write_json(conn.sock, status, reason, body)
        conn.close()
        return True

    def handle(self, conn: Any) -> Any:
        """Serve a connection whose head the poller read: the parser starts from those bytes."""
        head, conn.head = getattr(conn, "head", None), None
        # The path gunicorn's error answer (if any) is shaped by: this head's, or that of what a pipelined request
        # left in the parser's buffer.
        buffered = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        _handling.path = _target_path(head or buffered)
        if head:
            conn.init()  # gthread's handle sets the socket blocking again
            conn.parser.unreader.unread(head)
        return super().handle(conn)

    def murder_pending(self) -> None:
        """gthread's sweep, plus connections whose head is late (a JSON 408) or that waited for a thread past
        `GUNICORN_QUEUE_TIMEOUT` (a JSON 503 with Retry-After), then closed."""
        super().murder_pending()
        now = time.monotonic()
        message = f"every request thread stayed busy for GUNICORN_QUEUE_TIMEOUT={self.queue_timeout:g}s"
        shed = 0
        while self.waiting_for_thread and self.waiting_for_thread[0].queued_at + self.queue_timeout <= now:
            conn = self.waiting_for_thread.popleft()
            self.nr_conns -= 1
            shed += 1
            with contextlib.suppress(OSError):
                if getattr(conn, "plain_http1", False):  # TLS and HTTP/2 are closed without a plain-text answer
                    path = _target_path(getattr(conn, "head", None) or b"")
                    write_json_error(conn.sock, 503, "Service Unavailable", message, "Retry-After: 1\r\n", path)
            conn.close()
        if shed:  # at most one line a second (the loop's pace), whatever the load
            self.log.warning("503 to %d request(s): %s (%d still waiting)", shed, message, len(self.waiting_for_thread))
        while self.reading_heads and self.reading_heads[0].head_deadline <= now:
            conn = self.reading_heads.popleft()
            self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            message = f"the request head did not arrive within GUNICORN_HEADER_TIMEOUT={self.header_timeout:g}s"
            with contextlib.suppress(OSError):  # the client is gone or not reading: closing is all that is left
                write_json_error(conn.sock, 408, "Request Timeout", message, path=_target_path(conn.head or b""))
            conn.close()

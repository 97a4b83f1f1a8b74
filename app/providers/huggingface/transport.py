"""The HTTP transport of every Hugging Face call: one session, retries inside a deadline, capped reads.

One `requests.Session` per process and endpoint keeps connections alive; urllib3's
`Retry` retries the statuses `errors.STATUS_ERRORS` marks, with exponential backoff
and `Retry-After` honoured, inside one overall deadline. This module is the one
place where an HTTP failure (refused, reset, stalled, an error status, a body too
large or undecodable) becomes a typed `HFError` with its hint, as huggingface_hub's
`hf_raise_for_status` does.

HF_DEADLINE holds however the upstream sends: HF_TIMEOUT bounds each read, so a server that drips a
byte now and then never trips it. The response head is read under a `HeadAlarm` that shuts the socket
down at the deadline; bodies, whole or streamed, are read in pieces of at most `PIECE` bytes (within one
HTTP chunk too, and decompressed incrementally) with the deadline and HF_MAX_RESPONSE_BYTES checked
between them.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import email.utils
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import DecodeError, MaxRetryError, NewConnectionError, ReadTimeoutError, ResponseError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from app.config import Settings
from app.providers.huggingface.errors import (
    RETRY_STATUSES,
    HFConnectionError,
    HFError,
    HFStreamInterrupted,
    HFTimeout,
    HFUnavailable,
    HFUnsupportedField,
    bad_response,
    error_class,
    error_code,
    error_param,
    error_text,
)
from app.usage import scope as usage_scope

# When the current call must give up; read by the retry policy of whichever thread runs it.
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("hf_deadline")
# The most a body read takes at once: one piece of a stream, of an HTTP chunk, or of decompressed output.
PIECE = 64 * 1024


def deadline_at(seconds: float) -> float:
    """When a call given `seconds` must end: then, or sooner when the block it runs in ends sooner (a chain of
    models shares one HF_DEADLINE)."""
    return min(_deadline.get(math.inf), time.monotonic() + seconds)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Within the block, no retry is planned and no read goes on past `seconds` from now (nor past an
    enclosing block's deadline)."""
    token = _deadline.set(deadline_at(seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float:
    """Seconds left before the current block's deadline (infinite outside one)."""
    return _deadline.get(math.inf) - time.monotonic()


class DeadlineRetry(Retry):
    """urllib3's `Retry`, but no retry is planned that would wait past the call's deadline.

    Giving up raises `MaxRetryError`, which with `raise_on_status=False` hands the
    last upstream answer back, so its status and body still reach the user.
    """

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline_at = _deadline.get(None)
        if deadline_at is not None:
            wait = (response is not None and retry.get_retry_after(response)) or retry.get_backoff_time()
            if time.monotonic() + wait >= deadline_at:
                raise MaxRetryError(_pool, url, error or ResponseError("deadline reached")) from error
        return retry


class HeadAlarm:
    """Shuts a socket down when its call's deadline passes while the response head is still arriving.

    http.client reads the head line by line, each read bounded by HF_TIMEOUT only, so a server sending two
    bytes a second within the 64 KiB head limit would hold the thread for hours. One daemon thread per
    process watches the sockets waiting for a head; a socket shut down wakes its reader at once. Arming,
    disarming and firing share one lock: once `disarm` returns the socket is never touched, so a connection
    that goes back to the pool is safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: dict[int, tuple[float, socket.socket]] = {}
        self._pid = 0
        self._next_at = math.inf

    def arm(self, deadline_at: float, sock: socket.socket) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a fork (gunicorn's workers) left the thread behind
                self._pid = os.getpid()
                self._next_at = math.inf
                threading.Thread(target=self._watch, name="hf-head-alarm", daemon=True).start()
            self._waiting[id(sock)] = (deadline_at, sock)
            wake = deadline_at < self._next_at
            if wake:
                self._next_at = deadline_at
        if wake:
            self._wake.set()

    def disarm(self, sock: socket.socket) -> bool:
        """Stop watching `sock`; whether the alarm shut it down first."""
        with self._lock:
            return self._waiting.pop(id(sock), None) is None

    def _watch(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                for key, (deadline_at, sock) in list(self._waiting.items()):
                    if deadline_at <= now:
                        del self._waiting[key]
                        with contextlib.suppress(OSError):
                            # The plain socket's shutdown, also for TLS: it leaves the SSL object to its thread.
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                next_at = min((at for at, _ in self._waiting.values()), default=now + 60)
                self._next_at = next_at
            self._wake.wait(max(next_at - now, 0.001))


_head_alarm = HeadAlarm()


class _HeadBounded:
    """A urllib3 connection whose response head is read under the call's deadline (`HeadAlarm`)."""

    sock: socket.socket | None

    def getresponse(self) -> Any:
        deadline_at = _deadline.get(None)
        sock = self.sock
        if deadline_at is None or sock is None:
            return super().getresponse()  # type: ignore[misc]
        _head_alarm.arm(deadline_at, sock)
        try:
            response = super().getresponse()  # type: ignore[misc]
        finally:
            fired = _head_alarm.disarm(sock)
        if fired:  # http.client takes a head cut short by the shutdown for a whole one
            response.close()
            raise TimeoutError("the response head did not arrive by the deadline")
        return response


class _HTTPConnection(_HeadBounded, HTTPConnection):
    pass


class _HTTPSConnection(_HeadBounded, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    """requests' adapter whose connections read the response head under the call's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class Transport:
    """POSTs JSON to one endpoint for one model; answers are bodies or typed errors, never raw failures."""

    def __init__(self, settings: Settings, url: str, model_id: str, pool_size: int | None = None) -> None:
        self.settings = settings
        self.url = url
        self.model_id = model_id
        self.pool_size = pool_size or settings.threads
        # The process's session and the call it sends, prepared once (the URL and headers never change).
        self._session: tuple[requests.Session, requests.PreparedRequest] | None = None
        self._session_lock = threading.Lock()

    def _ready(self) -> tuple[requests.Session, requests.PreparedRequest]:
        """The session and prepared call, made on first use so they are born in the worker, not the master."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._new_session()
        return self._session

    def _new_session(self) -> tuple[requests.Session, requests.PreparedRequest]:
        retry = DeadlineRetry(
            total=self.settings.hf_max_retries,
            connect=self.settings.hf_max_retries,
            read=0,  # a read timeout already spent HF_TIMEOUT: do not pay it again
            status=self.settings.hf_max_retries,
            other=0,
            allowed_methods=None,  # inference is a POST without side effects: retrying it is safe
            status_forcelist=RETRY_STATUSES,
            backoff_factor=self.settings.hf_backoff_factor,
            backoff_max=30,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = _Adapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=retry)
        session = requests.Session()
        # The URL never changes, so the environment's proxy and CA-bundle settings for it are read once
        # here rather than on every call (a scan of os.environ per request); trust_env off also keeps a
        # ~/.netrc from replacing the HF_TOKEN header.
        environment = session.merge_environment_settings(self.url, {}, None, None, None)
        session.trust_env = False
        session.proxies.update(environment["proxies"])
        session.verify = environment["verify"]
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update({"Authorization": f"Bearer {self.settings.hf_token}", "Accept": "application/json"})
        if self.settings.hf_bill_to:
            # Inference Providers bill this organisation instead of the token's owner.
            session.headers["X-HF-Bill-To"] = self.settings.hf_bill_to
        # Every call is the token's alone: a cookie an upstream sets (a load balancer's) is never kept.
        session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        return session, session.prepare_request(
            requests.Request("POST", self.url, headers={"Content-Type": "application/json"})
        )

    def close(self) -> None:
        if self._session is not None:
            self._session[0].close()

    def read_json(self, response: requests.Response) -> Any:
        """The decoded JSON of a successful, whole answer, read within HF_MAX_RESPONSE_BYTES and the deadline."""
        return decode(self.read_body(response))

    def post(self, payload: dict[str, Any]) -> requests.Response:
        """POST `payload` (retried per the session's policy); a failure or error status becomes an `HFError`.

        The body is left unread: `read_json` reads it capped, a stream's reader piece by piece.
        """
        session, template = self._ready()
        prepared = template.copy()  # each call sets its own body on a copy of the prepared call
        prepared.prepare_body(data=orjson.dumps(payload), files=None)
        bound = usage_scope.current()
        if bound is not None and bound.bill_to and self.settings.bill_to_by_tenant_file:
            # CMP_BILL_TO_BY_TENANT: this tenant's organisation pays, not HF_BILL_TO's (never sent to an endpoint
            # of a chain entry's own, whose settings name no such file).
            prepared.headers["X-HF-Bill-To"] = bound.bill_to
        try:
            with self.errors():
                # `send`, not `post`: `post` would parse the URL, merge headers and scan the environment again.
                response = session.send(
                    prepared,
                    stream=True,
                    timeout=(self.settings.hf_connect_timeout, self.settings.hf_timeout),
                    proxies=session.proxies,
                )
                self.raise_for_status(response)
        except HFError as exc:
            exc.retried = self.settings.hf_max_retries > 0  # HF_MAX_RETRIES=0 leaves retrying to the client
            raise
        return response

    def raise_for_status(self, response: requests.Response) -> None:
        """An error status becomes its typed error, with the upstream's own explanation and the hint."""
        status = response.status_code
        if status < 400:
            return
        # The upstream's explanation is in the first bytes; a huge error page must not lose the status.
        detail = f"Hugging Face returned {status} for model {self.model_id!r}"
        body = self.read_body(response, truncate=True)
        upstream = error_text(body)
        if upstream:
            detail += f": {upstream}"
        param = error_param(body) if status in (400, 422) else None
        error = (HFUnsupportedField if param else error_class(status))(
            self.scrub(detail).rstrip(".") + ".",
            metric_code=str(status),
            upstream_status=status,
            upstream_error=self.scrub(upstream),
            upstream_code=self.scrub(error_code(body)),
            param=param,
        )
        if status in (429, 503):
            error.retry_after = _retry_after(response.headers.get("Retry-After", ""))
        raise error

    def stream_error(self, data: str) -> HFError:
        """An error event (TGI's `{"error": ...}`, OpenAI's `{"error": {"message"}}`) after the stream began."""
        detail = "Hugging Face failed during generation"
        upstream = error_text(data.encode())
        if upstream:
            detail += f": {upstream}"
        return HFUnavailable(self.scrub(detail) + ".", metric_code="stream_error")

    def read_body(self, response: requests.Response, *, truncate: bool = False) -> bytes:
        """The body, or the `HFError` for a connection that broke, stalled or sent what cannot be decoded."""
        complete = False
        try:
            with self.read_errors():
                body = self._read_capped(response, truncate)
            complete = True
            return body
        finally:
            if not complete or truncate:
                response.close()  # a half-read connection must not go back to the pool

    def stream_body(self, response: requests.Response, deadline_at: float) -> Iterator[bytes]:
        """A stream's bytes as they arrive, in pieces of at most `PIECE` (a drip inside one HTTP chunk, a huge
        chunk, gzip are all read a piece at a time), checked as `guarded` does and as UTF-8: a stream of
        events is text, and bytes that are not are `hf_bad_response`, not a failure of the reader after."""
        text = codecs.getincrementaldecoder("utf-8")()
        with self.read_errors(streaming=True):
            for piece in self.guarded(self._pieces(response), deadline_at):
                try:
                    text.decode(piece)
                except UnicodeDecodeError:
                    raise bad_response("with a stream that is not UTF-8") from None
                yield piece

    @staticmethod
    def _pieces(response: requests.Response) -> Iterator[bytes]:
        """The body in pieces of at most `PIECE` decoded bytes, each as soon as some arrived."""
        return iter(lambda: response.raw.read1(PIECE, decode_content=True), b"")

    @contextlib.contextmanager
    def read_errors(self, *, streaming: bool = False) -> Iterator[None]:
        """Turn urllib3's failures while reading a body into typed errors (a stall, a break, bad encoding); a
        stream that breaks off once the endpoint has begun answering is `HFStreamInterrupted`, as in `errors`."""
        try:
            yield
        except ReadTimeoutError:
            detail = f"Hugging Face stopped sending its answer for HF_TIMEOUT={self.settings.hf_timeout:g}s."
            raise HFTimeout(detail, metric_code="timeout") from None
        except DecodeError:
            raise bad_response("with a body that cannot be decoded") from None
        except Urllib3Error as exc:
            if streaming:
                raise self.interrupted(type(exc).__name__) from None
            detail = f"The connection to Hugging Face broke while reading its answer ({type(exc).__name__})."
            raise HFConnectionError(detail, metric_code="connection_error") from None

    def _read_capped(self, response: requests.Response, truncate: bool) -> bytes:
        """Read piece by piece: a huge answer stops at HF_MAX_RESPONSE_BYTES, a drip at HF_DEADLINE.

        HF_TIMEOUT bounds each read, so a server sending a byte now and then never trips it; the call's
        deadline, checked after every piece, does (at worst one HF_TIMEOUT late). With `truncate`, an
        answer over the cap is cut there instead of failing.
        """
        cap = self.settings.hf_max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if not truncate and declared.isdigit() and int(declared) > cap:
            raise self._too_large()
        pieces = self._pieces(response)
        deadline_at = _deadline.get(math.inf)
        if not truncate:
            return b"".join(self.guarded(pieces, deadline_at))
        body = b""
        for piece in self.guarded(pieces, deadline_at, cap=math.inf):
            body += piece
            if len(body) >= cap:
                break
        return body[:cap]

    def guarded(self, pieces: Iterable[bytes], deadline_at: float, cap: float | None = None) -> Iterator[bytes]:
        """`pieces` as they arrive, stopped past `cap` bytes (HF_MAX_RESPONSE_BYTES) or past `deadline_at`.

        Checked on every piece that arrives, whatever it holds: a stream that sends only SSE comments
        (`: keepalive`) never yields an event, yet must end at the deadline and release its connection.
        """
        limit = self.settings.hf_max_response_bytes if cap is None else cap
        size = 0
        for piece in pieces:
            size += len(piece)
            if size > limit:
                raise self._too_large()
            if time.monotonic() > deadline_at:
                detail = f"Hugging Face did not finish its answer within HF_DEADLINE={self.settings.hf_deadline:g}s."
                raise HFTimeout(detail, metric_code="timeout")
            yield piece

    def _too_large(self) -> HFError:
        return bad_response(f"more than HF_MAX_RESPONSE_BYTES={self.settings.hf_max_response_bytes} bytes")

    @contextlib.contextmanager
    def errors(self, *, streaming: bool = False) -> Iterator[None]:
        """Turn requests' failures (connecting, or reading the answer or a stream) into typed errors; a stream
        that breaks off once the endpoint has begun answering is `HFStreamInterrupted`."""
        try:
            yield
        except requests.RequestException as exc:
            if time.monotonic() >= _deadline.get(math.inf):  # the head alarm cut a head that was dripping
                detail = f"Hugging Face did not answer within HF_DEADLINE={self.settings.hf_deadline:g}s."
                raise HFTimeout(detail, metric_code="timeout") from None
            if _timed_out(exc):
                detail = f"Hugging Face did not answer within HF_TIMEOUT={self.settings.hf_timeout:g}s."
                raise HFTimeout(detail, metric_code="timeout") from None
            if streaming:
                raise self.interrupted(_reason(exc)) from None
            detail = f"Could not reach the Hugging Face endpoint ({_reason(exc)})."
            raise HFConnectionError(detail, metric_code="connection_error") from None

    def interrupted(self, how: str) -> HFError:
        """A streamed answer that ended before its end (the connection cut, or closed without the last event)."""
        detail = f"Hugging Face's stream for model {self.model_id!r} broke off mid-answer ({how})."
        return HFStreamInterrupted(detail, metric_code="stream_interrupted")

    def scrub(self, text: str) -> str:
        """Belt and braces: an upstream message must never echo the token back to a client."""
        return text.replace(self.settings.hf_token, "***") if self.settings.hf_token else text


def decode(body: bytes | str) -> Any:
    """JSON from the endpoint; anything else is `hf_bad_response`.

    orjson reads it (a streamed answer is one decode per token); what orjson refuses and the standard library
    takes (NaN, a lone surrogate) is still read as before. orjson reads an integer past 64 bits as a float,
    which no field read here can hold.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError:
        raise bad_response("with invalid JSON") from None


def _retry_after(value: str) -> str | None:
    """An upstream `Retry-After` worth passing on: seconds, or an HTTP date; anything else is dropped."""
    value = value.strip()
    if value.isdigit() and len(value) <= 6:
        return value
    with contextlib.suppress(TypeError, ValueError, IndexError):
        if email.utils.parsedate_to_datetime(value) is not None:
            return value
    return None


def _cause(exc: requests.RequestException) -> BaseException:
    """What urllib3 saw beneath requests' wrapper (retries exhausted wrap it in `MaxRetryError`)."""
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    return getattr(cause, "reason", None) or cause


def _timed_out(exc: requests.RequestException) -> bool:
    # A read timeout whose retries are spent reaches us as a ConnectionError, not a Timeout;
    # urllib3 makes a refused connection a kind of timeout, which it is not for the user.
    cause = _cause(exc)
    if isinstance(cause, NewConnectionError):
        return False
    return isinstance(exc, requests.Timeout) or isinstance(cause, TimeoutError | Urllib3Timeout)


def _reason(exc: requests.RequestException) -> str:
    """The underlying cause's name (the exception's text holds the URL and is long)."""
    return type(_cause(exc)).__name__

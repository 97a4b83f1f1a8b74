"""The Hugging Face provider: a requests client for the Inference API.

One `requests.Session` per process keeps connections to the endpoint alive;
urllib3's `Retry` retries 429 and 5xx answers with exponential backoff and
honours `Retry-After`, inside one overall deadline. Every failure becomes a typed
`HFError` carrying a hint the user can act on, as huggingface_hub does.
"""

from __future__ import annotations

import contextvars
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from requests.adapters import HTTPAdapter
from urllib3.exceptions import DecodeError, MaxRetryError, NewConnectionError, ReadTimeoutError, ResponseError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from app.config import Settings
from app.errors import ContexisError
from app.observability import RuntimeMetrics

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
KNOWN_ERROR_CODES = (
    "401",
    "403",
    "404",
    "429",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "connection_error",
    "invalid_response",
)
_tracer = trace.get_tracer(__name__)
# When the current inference call must give up; read by the retry policy of whichever thread runs it.
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("hf_deadline")

HINT_AUTH = "Verify HF_TOKEN scope and validity."
HINT_MODEL = "Check HF_MODEL_ID spelling and access."
HINT_TIMEOUT = "Raise HF_TIMEOUT, confirm the model is available, or try a smaller model."
HINT_RATE = "The endpoint is rate limiting this token: slow down, retry later, or raise your plan's limits."
HINT_UNAVAILABLE = (
    "The model is loading or unavailable: retry shortly, confirm model availability, or try a smaller model."
)
HINT_CONNECTION = "Check HF_ENDPOINT and that the endpoint is reachable from the runtime."
HINT_RESPONSE = (
    "The endpoint answered something that is not a text-generation result: check HF_ENDPOINT and HF_MODEL_ID."
)
HINT_REQUEST = "The endpoint rejected the generation parameters: check the context's guardrails."


class HFError(ContexisError):
    """An inference call failed; `metric_code` is the upstream status or failure kind."""

    status = 502
    code = "hf_error"
    hint = ""

    def __init__(self, detail: str, *, metric_code: str, upstream_status: int | None = None) -> None:
        super().__init__(f"{detail} {self.hint}".strip())
        self.metric_code = metric_code
        self.upstream_status = upstream_status


class HFUnauthorized(HFError):
    code, hint = "hf_unauthorized", HINT_AUTH


class HFForbidden(HFError):
    code, hint = "hf_forbidden", HINT_AUTH


class HFModelNotFound(HFError):
    code, hint = "hf_model_not_found", HINT_MODEL


class HFRateLimited(HFError):
    code, hint = "hf_rate_limited", HINT_RATE


class HFUnavailable(HFError):
    code, hint = "hf_unavailable", HINT_UNAVAILABLE


class HFBadRequest(HFError):
    code, hint = "hf_bad_request", HINT_REQUEST


class HFBadResponse(HFError):
    code, hint = "hf_bad_response", HINT_RESPONSE


class HFConnectionError(HFError):
    code, hint = "hf_connection_error", HINT_CONNECTION


class HFTimeout(HFError):
    status, code, hint = 504, "hf_timeout", HINT_TIMEOUT


_BY_STATUS: dict[int, type[HFError]] = {
    400: HFBadRequest,
    401: HFUnauthorized,
    403: HFForbidden,
    404: HFModelNotFound,
    422: HFBadRequest,
    429: HFRateLimited,
}


class DeadlineRetry(Retry):
    """urllib3's `Retry`, but no retry is planned that would wait past the call's deadline.

    Giving up raises `MaxRetryError`, which with `raise_on_status=False` hands the
    last upstream answer back, so its status and body still reach the user.
    """

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline = _deadline.get(None)
        if deadline is not None:
            wait = (response is not None and retry.get_retry_after(response)) or retry.get_backoff_time()
            if time.monotonic() + wait >= deadline:
                raise MaxRetryError(_pool, url, error or ResponseError("deadline reached")) from error
        return retry


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters sent with each call, taken from the context's guardrails."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95

    @classmethod
    def from_guardrails(cls, guardrails: dict[str, Any] | None) -> GenerationParams:
        guardrails = guardrails or {}
        return cls(
            max_new_tokens=guardrails.get("max_tokens", cls.max_new_tokens),
            temperature=guardrails.get("temperature", cls.temperature),
            top_p=guardrails.get("top_p", cls.top_p),
        )


class HuggingFaceClient:
    """Calls `POST {HF_ENDPOINT}/{HF_MODEL_ID}`; the endpoint, model and token come only from settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None, pool_size: int | None = None) -> None:
        self.settings = settings
        self.model_id = settings.hf_model_id
        self.url = f"{settings.hf_endpoint}/{settings.hf_model_id}"
        self.metrics = metrics
        self.pool_size = pool_size or settings.threads
        self._session: requests.Session | None = None
        if metrics:
            # Series exist from the start (at zero), so dashboards and alerts see them before the first failure.
            metrics.hf_latency.labels(model=self.model_id)
            for code in KNOWN_ERROR_CODES:
                metrics.hf_errors.labels(code=code)
        self._session_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """The process's session, made on first use so it is born in the worker, not the master."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._new_session()
        return self._session

    def _new_session(self) -> requests.Session:
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
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=retry)
        session = requests.Session()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update({"Authorization": f"Bearer {self.settings.hf_token}", "Accept": "application/json"})
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def generate(self, prompt: str, params: GenerationParams) -> str:
        """The model's text for `prompt`, or an `HFError` subclass saying what to fix."""
        payload = {
            "inputs": prompt,
            "parameters": {
                "max_new_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "return_full_text": False,
            },
        }
        attributes = {
            "provider": "huggingface",
            "model_id": self.model_id,
            "gen_ai.system": "huggingface",
            "gen_ai.operation.name": "text_completion",
            "gen_ai.request.model": self.model_id,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.top_p": params.top_p,
        }
        started = time.perf_counter()
        token = _deadline.set(time.monotonic() + self.settings.hf_deadline)
        span_cm = _tracer.start_as_current_span("huggingface.generate", attributes=attributes, record_exception=False)
        with span_cm as span:
            try:
                text = self._call(payload)
            except HFError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, exc.code))
                span.set_attribute("error.type", exc.metric_code)
                if self.metrics:
                    self.metrics.hf_errors.labels(code=exc.metric_code).inc()
                raise
            finally:
                _deadline.reset(token)
                if self.metrics:
                    self.metrics.hf_latency.labels(model=self.model_id).observe(time.perf_counter() - started)
            span.set_attribute("gen_ai.response.model", self.model_id)
            return text

    def _call(self, payload: dict[str, Any]) -> str:
        try:
            response = self.session.post(
                self.url,
                json=payload,
                timeout=(self.settings.hf_connect_timeout, self.settings.hf_timeout),
                stream=True,
            )
            body = self._read_body(response)
        except requests.RequestException as exc:
            if _timed_out(exc):
                detail = f"Hugging Face did not answer within HF_TIMEOUT={self.settings.hf_timeout:g}s."
                raise HFTimeout(detail, metric_code="timeout") from None
            detail = f"Could not reach the Hugging Face endpoint ({_reason(exc)})."
            raise HFConnectionError(detail, metric_code="connection_error") from None
        if response.status_code >= 400:
            raise self._status_error(response.status_code, body)
        return _parse_generation(body)

    def _read_body(self, response: requests.Response) -> bytes:
        """The body, or the `HFError` for a connection that broke, stalled or sent what cannot be decoded."""
        complete = False
        try:
            body = self._read_capped(response)
            complete = True
            return body
        except ReadTimeoutError:
            detail = f"Hugging Face stopped sending its answer for HF_TIMEOUT={self.settings.hf_timeout:g}s."
            raise HFTimeout(detail, metric_code="timeout") from None
        except DecodeError:
            detail = "Hugging Face sent a body that cannot be decoded."
            raise HFBadResponse(detail, metric_code="invalid_response") from None
        except Urllib3Error as exc:
            detail = f"The connection to Hugging Face broke while reading its answer ({type(exc).__name__})."
            raise HFConnectionError(detail, metric_code="connection_error") from None
        finally:
            if not complete:
                response.close()  # a half-read connection must not go back to the pool

    def _read_capped(self, response: requests.Response) -> bytes:
        """Read piece by piece: a huge answer stops at HF_MAX_RESPONSE_BYTES, a drip at HF_DEADLINE.

        HF_TIMEOUT bounds each read, so a server sending a byte now and then never trips it; the call's
        deadline, checked after every piece, does (at worst one HF_TIMEOUT late).
        """
        cap = self.settings.hf_max_response_bytes
        too_large = f"Hugging Face answered more than HF_MAX_RESPONSE_BYTES={cap} bytes."
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise HFBadResponse(too_large, metric_code="invalid_response")
        deadline = _deadline.get(math.inf)
        pieces: list[bytes] = []
        size = 0
        while piece := response.raw.read1(64 * 1024, decode_content=True):
            size += len(piece)
            if size > cap:
                raise HFBadResponse(too_large, metric_code="invalid_response")
            if time.monotonic() > deadline:
                detail = f"Hugging Face did not finish its answer within HF_DEADLINE={self.settings.hf_deadline:g}s."
                raise HFTimeout(detail, metric_code="timeout")
            pieces.append(piece)
        return b"".join(pieces)

    def _status_error(self, status: int, body: bytes) -> HFError:
        error_class = _BY_STATUS.get(status) or (HFUnavailable if status >= 500 else HFBadResponse)
        detail = f"Hugging Face returned {status} for model {self.model_id!r}"
        upstream = _error_text(body)
        if upstream:
            detail += f": {upstream}"
        return error_class(self._scrub(detail) + ".", metric_code=str(status), upstream_status=status)

    def _scrub(self, text: str) -> str:
        """Belt and braces: an upstream message must never echo the token back to a client."""
        return text.replace(self.settings.hf_token, "***") if self.settings.hf_token else text


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


def _error_text(body: bytes) -> str:
    """The upstream's own explanation, from `{"error": ..., "estimated_time": ...}` or plain text."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] if text and not text.lstrip().startswith("<") else ""
    if isinstance(data, dict) and data.get("error"):
        message = data["error"] if isinstance(data["error"], str) else str(data["error"])
        if isinstance(data.get("estimated_time"), (int, float)):
            message += f" (estimated time {data['estimated_time']:.0f}s)"
        return message[:300]
    return ""


def _parse_generation(body: bytes) -> str:
    """The generated text from the shapes the API returns: `[{"generated_text"}]` or `{"generated_text"}`."""
    try:
        data = json.loads(body)
    except ValueError:
        raise HFBadResponse("Hugging Face answered with invalid JSON.", metric_code="invalid_response") from None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("generated_text"), str):
        return data["generated_text"]
    raise HFBadResponse("Hugging Face answered without a generated_text field.", metric_code="invalid_response")

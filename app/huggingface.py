"""The Hugging Face provider: a requests client for the Inference API and OpenAI-style chat completions.

One `requests.Session` per process keeps connections to the endpoint alive;
urllib3's `Retry` retries 429 and 5xx answers with exponential backoff and
honours `Retry-After`, inside one overall deadline. Every failure becomes a typed
`HFError` carrying a hint the user can act on, as huggingface_hub does.

Two wire formats share that one code path: a `WireFormat` only shapes the request
and reads the answers (`text-generation`: TGI and the classic Inference API;
`chat-completion`: the router's `/v1`, Inference Endpoints, TGI, vLLM, llama.cpp).
Either can stream: the upstream's server-sent events become a `TokenStream`.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from requests.adapters import HTTPAdapter
from sseclient import SSEClient
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
    "stream_error",
)
TOKEN_KINDS = ("prompt", "completion")
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
    "The endpoint answered something that is not a generation result: check HF_ENDPOINT, HF_API and HF_MODEL_ID."
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


@dataclass(frozen=True)
class Usage:
    """Tokens the endpoint reported; either count may be missing (TGI reports only generated tokens)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def as_dict(self) -> dict[str, int]:
        counts = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        return {name: value for name, value in counts.items() if value is not None}


@dataclass(frozen=True)
class Generation:
    """A whole answer: the model's text and, when reported, its token usage."""

    text: str
    usage: Usage | None = None


@dataclass(frozen=True)
class StreamEvent:
    """What one upstream server-sent event carries: a piece of text, usage, or the end of the generation."""

    text: str = ""
    usage: Usage | None = None
    done: bool = False


class TokenStream:
    """A generation arriving piece by piece: iterate for text deltas; `usage` is set once they are all read.

    The constructor waits for the first piece, so a failure before any text reaches the caller as an ordinary
    `HFError` (a JSON error with its status, not a broken stream). `close()` closes the upstream connection:
    a client that goes away stops the generation instead of leaving it running.
    """

    def __init__(self, pieces: Iterator[str | Usage], model: str | None) -> None:
        self.model = model
        self.usage: Usage | None = None
        self._pieces = pieces
        self._first = list(itertools.islice(pieces, 1))

    def __iter__(self) -> Iterator[str]:
        for piece in itertools.chain(self._first, self._pieces):
            if isinstance(piece, Usage):
                self.usage = piece
            else:
                yield piece

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()


def _usage(prompt: Any, completion: Any) -> Usage | None:
    """A `Usage` from whatever counts are integers; None when the endpoint reported none."""
    usage = Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )
    return usage if usage.as_dict() else None


def _bad_response(what: str) -> HFBadResponse:
    return HFBadResponse(f"Hugging Face answered {what}.", metric_code="invalid_response")


class WireFormat:
    """How one API shapes a request and reads its answers; retries, errors and telemetry stay in the client."""

    name = ""
    operation = ""  # gen_ai.operation.name
    done_marker: str | None = None  # a stream event's data that ends the stream without being JSON

    def __init__(self, settings: Settings) -> None:
        self.model_id = settings.hf_model_id
        self.url = self._url(settings)

    def _url(self, settings: Settings) -> str:
        raise NotImplementedError

    def payload(self, prompt: str, system: str, params: GenerationParams, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, data: Any) -> Generation:
        raise NotImplementedError

    def parse_event(self, data: Any) -> StreamEvent:
        raise NotImplementedError


class TextGeneration(WireFormat):
    """`POST {HF_ENDPOINT}/{HF_MODEL_ID}` with `inputs` and `parameters`: the guide's classic route (and TGI's)."""

    name, operation = "text-generation", "text_completion"

    def _url(self, settings: Settings) -> str:
        return f"{settings.hf_endpoint}/{settings.hf_model_id}"

    def payload(self, prompt: str, system: str, params: GenerationParams, stream: bool) -> dict[str, Any]:
        # The rendered prompt already carries the persona: the system message has no field here.
        payload: dict[str, Any] = {
            "inputs": prompt,
            "parameters": {
                "max_new_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "return_full_text": False,
            },
        }
        if stream:
            payload["stream"] = True
        return payload

    def parse(self, data: Any) -> Generation:
        """`[{"generated_text"}]` or `{"generated_text"}`, with `details.generated_tokens` when TGI adds it."""
        if isinstance(data, list) and data:
            data = data[0]
        if isinstance(data, dict) and isinstance(data.get("generated_text"), str):
            return Generation(data["generated_text"], _tgi_usage(data))
        raise _bad_response("without a generated_text field")

    def parse_event(self, data: Any) -> StreamEvent:
        """TGI's `{"token": {"text", "special"}, "generated_text": null | "...", "details": ...}`."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, dict) or not isinstance(token.get("text"), str):
            raise _bad_response("a stream event without token.text")
        text = "" if token.get("special") else token["text"]
        return StreamEvent(text=text, usage=_tgi_usage(data), done=data.get("generated_text") is not None)


class ChatCompletion(WireFormat):
    """`POST {HF_ENDPOINT}/chat/completions`, the OpenAI-compatible route; `HF_MODEL_ID` goes in the body as is."""

    name, operation = "chat-completion", "chat"
    done_marker = "[DONE]"

    def _url(self, settings: Settings) -> str:
        return f"{settings.hf_endpoint}/chat/completions"

    def payload(self, prompt: str, system: str, params: GenerationParams, stream: bool) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if stream:
            # Without stream_options a streamed answer reports no usage at all.
            payload.update(stream=True, stream_options={"include_usage": True})
        return payload

    def parse(self, data: Any) -> Generation:
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise _bad_response("without choices[0].message.content")
        return Generation(content, _openai_usage(data))

    def parse_event(self, data: Any) -> StreamEvent:
        """A chunk's `choices[0].delta.content`; the last chunk may carry only `usage`, with no choices."""
        if not isinstance(data, dict) or not isinstance(data.get("choices", []), list):
            raise _bad_response("a stream event that is not a chat completion chunk")
        choice = data["choices"][0] if data.get("choices") else {}
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = delta.get("content") if isinstance(delta, dict) else None
        return StreamEvent(text=text if isinstance(text, str) else "", usage=_openai_usage(data))


def _tgi_usage(data: dict[str, Any]) -> Usage | None:
    details = data.get("details")
    return _usage(None, details.get("generated_tokens")) if isinstance(details, dict) else None


def _openai_usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    return _usage(usage.get("prompt_tokens"), usage.get("completion_tokens")) if isinstance(usage, dict) else None


WIRE_FORMATS: dict[str, type[WireFormat]] = {f.name: f for f in (TextGeneration, ChatCompletion)}


class _Observed:
    """The span and metrics of one inference call; a streamed call is observed until its last token."""

    def __init__(self, client: HuggingFaceClient, params: GenerationParams) -> None:
        self.metrics = client.metrics
        self.model_id = client.model_id
        self.started = time.perf_counter()
        self.first_token_seen = False
        self.ended = False
        attributes = {
            "provider": "huggingface",
            "model_id": client.model_id,
            "gen_ai.system": "huggingface",
            "gen_ai.operation.name": client.wire.operation,
            "gen_ai.request.model": client.model_id,
            "gen_ai.request.max_tokens": params.max_new_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.request.top_p": params.top_p,
        }
        self.span: Span = _tracer.start_span("huggingface.generate", attributes=attributes, record_exception=False)

    @contextlib.contextmanager
    def active(self, deadline: float) -> Iterator[None]:
        """The span is current (the HTTP call's span nests in it) and retries stop at `deadline` seconds."""
        token = _deadline.set(time.monotonic() + deadline)
        try:
            with trace.use_span(self.span, record_exception=False, set_status_on_exception=False):
                yield
        finally:
            _deadline.reset(token)

    def first_token(self) -> None:
        if not self.first_token_seen:
            self.first_token_seen = True
            if self.metrics:
                elapsed = time.perf_counter() - self.started
                self.metrics.hf_time_to_first_token.labels(model=self.model_id).observe(elapsed)

    def succeeded(self, usage: Usage | None) -> None:
        self.span.set_attribute("gen_ai.response.model", self.model_id)
        if usage is None:
            return
        for kind, attribute, count in (
            ("prompt", "gen_ai.usage.input_tokens", usage.prompt_tokens),
            ("completion", "gen_ai.usage.output_tokens", usage.completion_tokens),
        ):
            if count is not None:
                self.span.set_attribute(attribute, count)
                if self.metrics:
                    self.metrics.hf_tokens.labels(model=self.model_id, kind=kind).inc(count)

    def failed(self, exc: HFError) -> None:
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, exc.code))
        self.span.set_attribute("error.type", exc.metric_code)
        if self.metrics:
            self.metrics.hf_errors.labels(code=exc.metric_code).inc()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.metrics:
            self.metrics.hf_latency.labels(model=self.model_id).observe(time.perf_counter() - self.started)
        self.span.end()


class HuggingFaceClient:
    """Calls the endpoint in the wire format `HF_API` picks; the endpoint, model and token come only from settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None, pool_size: int | None = None) -> None:
        self.settings = settings
        self.model_id = settings.hf_model_id
        self.wire = WIRE_FORMATS[settings.hf_wire_api](settings)
        self.url = self.wire.url
        self.metrics = metrics
        self.pool_size = pool_size or settings.threads
        self._session: requests.Session | None = None
        if metrics:
            # Series exist from the start (at zero), so dashboards and alerts see them before the first failure.
            metrics.hf_latency.labels(model=self.model_id)
            metrics.hf_time_to_first_token.labels(model=self.model_id)
            for kind in TOKEN_KINDS:
                metrics.hf_tokens.labels(model=self.model_id, kind=kind)
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
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def generate(self, prompt: str, params: GenerationParams, system: str = "") -> Generation:
        """The model's whole answer to `prompt`, or an `HFError` subclass saying what to fix.

        `system` (who the agent is) becomes the system message of a chat completion; the classic
        route has no place for it, its rendered prompt already says it.
        """
        observed = _Observed(self, params)
        try:
            with observed.active(self.settings.hf_deadline):
                generation = self.wire.parse(
                    _decode(self._call(self.wire.payload(prompt, system, params, stream=False)))
                )
            observed.succeeded(generation.usage)
            return generation
        except HFError as exc:
            observed.failed(exc)
            raise
        finally:
            observed.end()

    def stream(self, prompt: str, params: GenerationParams, system: str = "") -> TokenStream:
        """The model's answer as it is generated, once its first piece has arrived; `HFError` before that."""
        observed = _Observed(self, params)
        try:
            with observed.active(self.settings.hf_deadline):
                response = self._send(self.wire.payload(prompt, system, params, stream=True), stream=True)
        except HFError as exc:
            observed.failed(exc)
            observed.end()
            raise
        return TokenStream(self._pieces(response, observed), self.model_id)

    def _pieces(self, response: requests.Response, observed: _Observed) -> Iterator[str | Usage]:
        """Text deltas from the upstream's events as they arrive, then the usage if it was reported.

        sseclient-py parses the events (multi-line data, comments, CRLF, events split across chunks) from
        requests' chunks as they arrive (`chunk_size=None`: no waiting for a buffer to fill).
        """
        usage: Usage | None = None
        try:
            with self._transport_errors():
                for event in SSEClient(response.iter_content(chunk_size=None)).events():
                    if event.data == self.wire.done_marker:
                        break
                    data = None if event.event == "error" else _decode(event.data)
                    if data is None or (isinstance(data, dict) and "error" in data):
                        raise self._stream_error(event.data)
                    piece = self.wire.parse_event(data)
                    usage = piece.usage or usage
                    if piece.text:
                        observed.first_token()
                        yield piece.text
                    if piece.done:
                        break
            observed.succeeded(usage)
            if usage:
                yield usage
        except HFError as exc:
            observed.failed(exc)
            raise
        finally:
            response.close()
            observed.end()

    def _call(self, payload: dict[str, Any]) -> bytes:
        """The body of a successful, whole answer to `payload`, read within HF_MAX_RESPONSE_BYTES and HF_DEADLINE."""
        return self._read_body(self._send(payload, stream=True))

    def _send(self, payload: dict[str, Any], *, stream: bool) -> requests.Response:
        """POST `payload` (retried per the session's policy); a failure or error status becomes an `HFError`."""
        with self._transport_errors():
            response = self.session.post(
                self.url,
                json=payload,
                timeout=(self.settings.hf_connect_timeout, self.settings.hf_timeout),
                stream=stream,
            )
            if response.status_code >= 400:
                # The upstream's explanation is in the first bytes; a huge error page must not lose the status.
                raise self._status_error(response.status_code, self._read_body(response, truncate=True))
        return response

    def _read_body(self, response: requests.Response, *, truncate: bool = False) -> bytes:
        """The body, or the `HFError` for a connection that broke, stalled or sent what cannot be decoded."""
        complete = False
        try:
            body = self._read_capped(response, truncate)
            complete = True
            return body
        except ReadTimeoutError:
            detail = f"Hugging Face stopped sending its answer for HF_TIMEOUT={self.settings.hf_timeout:g}s."
            raise HFTimeout(detail, metric_code="timeout") from None
        except DecodeError:
            raise _bad_response("with a body that cannot be decoded") from None
        except Urllib3Error as exc:
            detail = f"The connection to Hugging Face broke while reading its answer ({type(exc).__name__})."
            raise HFConnectionError(detail, metric_code="connection_error") from None
        finally:
            if not complete or truncate:
                response.close()  # a half-read connection must not go back to the pool

    def _read_capped(self, response: requests.Response, truncate: bool) -> bytes:
        """Read piece by piece: a huge answer stops at HF_MAX_RESPONSE_BYTES, a drip at HF_DEADLINE.

        HF_TIMEOUT bounds each read, so a server sending a byte now and then never trips it; the call's
        deadline, checked after every piece, does (at worst one HF_TIMEOUT late). With `truncate`, an
        answer over the cap is cut there instead of failing.
        """
        cap = self.settings.hf_max_response_bytes
        too_large = f"more than HF_MAX_RESPONSE_BYTES={cap} bytes"
        declared = response.headers.get("Content-Length", "")
        if not truncate and declared.isdigit() and int(declared) > cap:
            raise _bad_response(too_large)
        deadline = _deadline.get(math.inf)
        pieces: list[bytes] = []
        size = 0
        while piece := response.raw.read1(64 * 1024, decode_content=True):
            pieces.append(piece)
            size += len(piece)
            if size > cap:
                if truncate:
                    return b"".join(pieces)[:cap]
                raise _bad_response(too_large)
            if time.monotonic() > deadline:
                detail = f"Hugging Face did not finish its answer within HF_DEADLINE={self.settings.hf_deadline:g}s."
                raise HFTimeout(detail, metric_code="timeout")
        return b"".join(pieces)

    @contextlib.contextmanager
    def _transport_errors(self) -> Iterator[None]:
        """Turn requests' failures (connecting, or reading the answer or a stream) into typed errors."""
        try:
            yield
        except requests.RequestException as exc:
            if _timed_out(exc):
                detail = f"Hugging Face did not answer within HF_TIMEOUT={self.settings.hf_timeout:g}s."
                raise HFTimeout(detail, metric_code="timeout") from None
            detail = f"Could not reach the Hugging Face endpoint ({_reason(exc)})."
            raise HFConnectionError(detail, metric_code="connection_error") from None

    def _status_error(self, status: int, body: bytes) -> HFError:
        error_class = _BY_STATUS.get(status) or (HFUnavailable if status >= 500 else HFBadResponse)
        detail = f"Hugging Face returned {status} for model {self.model_id!r}"
        upstream = _error_text(body)
        if upstream:
            detail += f": {upstream}"
        return error_class(self._scrub(detail) + ".", metric_code=str(status), upstream_status=status)

    def _stream_error(self, data: str) -> HFError:
        """An error event (TGI's `{"error": ...}`, OpenAI's `{"error": {"message"}}`) after the stream began."""
        detail = "Hugging Face failed during generation"
        upstream = _error_text(data.encode())
        if upstream:
            detail += f": {upstream}"
        return HFUnavailable(self._scrub(detail) + ".", metric_code="stream_error")

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
    """The upstream's own explanation: `{"error": "...", "estimated_time"}`, OpenAI's `{"error": {"message"}}`, text."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200] if text and not text.lstrip().startswith("<") else ""
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            error = error["message"]
        message = error if isinstance(error, str) else str(error)
        if isinstance(data.get("estimated_time"), (int, float)):
            message += f" (estimated time {data['estimated_time']:.0f}s)"
        return message[:300]
    return ""


def _decode(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise _bad_response("with invalid JSON") from None

"""The Hugging Face provider: generation in the wire format `HF_API` picks, over the shared transport."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence

import requests
from sseclient import SSEClient

from app.config import Settings, public_url
from app.observability import RuntimeMetrics
from app.providers.base import (
    ChoiceDelta,
    Finish,
    Generation,
    GenerationParams,
    ServedBy,
    StreamPiece,
    TokenStream,
    ToolCallDelta,
    Turn,
    Usage,
)
from app.providers.huggingface.errors import HFError
from app.providers.huggingface.telemetry import CallTelemetry, precreate_series
from app.providers.huggingface.transport import Transport, deadline_at, decode
from app.providers.huggingface.wire import WIRE_FORMATS, new_call_id
from app.validation import content_text


class HuggingFaceClient:
    """Calls the endpoint in the wire format `HF_API` picks; the endpoint, model and token come only from settings."""

    def __init__(self, settings: Settings, metrics: RuntimeMetrics | None = None, pool_size: int | None = None) -> None:
        self.settings = settings
        self.model_id = settings.hf_model_id
        self.wire = WIRE_FORMATS[settings.hf_wire_api](settings)
        self.history_in_turns = self.wire.history_in_turns
        self.url = self.wire.url
        self.public_url = public_url(self.url)
        self.metrics = metrics
        self.transport = Transport(settings, self.url, self.model_id, pool_size)
        if metrics:
            precreate_series(metrics, self.model_id)

    def close(self) -> None:
        self.transport.close()

    def _seconds(self, params: GenerationParams) -> float:
        """HF_DEADLINE, or what is left of the request's when it ends sooner (`params.deadline_at`)."""
        if params.deadline_at is None:
            return self.settings.hf_deadline
        return max(0.0, min(self.settings.hf_deadline, params.deadline_at - time.monotonic()))

    def _telemetry(
        self, params: GenerationParams, prompt: str, system: str, history: Sequence[Turn], stream: bool
    ) -> CallTelemetry:
        sent = (system, *(content_text(turn.get("content")) for turn in history), prompt)
        return CallTelemetry(self.metrics, self.model_id, self.wire.operation, params, sent, self.public_url, stream)

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> Generation:
        """The model's whole answer to `prompt`, or an `HFError` subclass saying what to fix.

        `system` (who the agent is) becomes the system message of a chat completion; the classic
        route has no place for it, its rendered prompt already says it. So it is with `history`; `after` (turns
        after the prompt: tool calls and results, a prefill) goes to a chat completion in order.
        """
        self.wire.check(params, history, after)
        observed = self._telemetry(params, prompt, system, history, stream=False)
        try:
            with observed.active(self._seconds(params)):
                response = self._send(prompt, system, params, history, after, stream=False)
                generation = self.wire.parse(self.transport.read_json(response))
            observed.succeeded(generation.usage, generation.model, generation.text)
            return generation
        except HFError as exc:
            observed.failed(exc)
            raise
        finally:
            observed.end()

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> TokenStream:
        """The model's answer as it is generated, once its first piece has arrived; `HFError` before that."""
        self.wire.check(params, history, after)
        observed = self._telemetry(params, prompt, system, history, stream=True)
        seconds = self._seconds(params)
        ends_at = deadline_at(seconds)
        try:
            with observed.active(seconds):
                response = self._send(prompt, system, params, history, after, stream=True)
        except HFError as exc:
            observed.failed(exc)
            observed.end()
            raise
        if response.headers.get("Content-Type", "").startswith("application/json"):
            # An endpoint that ignores `stream` answers whole: relay that answer as the stream's one piece.
            return TokenStream(self._whole(response, observed), self.model_id)
        return TokenStream(self._pieces(response, observed, ends_at), self.model_id)

    def _whole(
        self, response: requests.Response, observed: CallTelemetry
    ) -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
        """A whole answer to a streamed call, as the pieces a stream of it would have given."""
        with _reading(response, observed):
            generation = self.wire.parse(self.transport.read_json(response))
            observed.first_token()
            observed.succeeded(generation.usage, generation.model, generation.text)
        for index, choice in enumerate(generation.choices):
            if choice.text or not choice.tool_calls:
                yield (
                    choice.text
                    if index == 0 and not choice.logprobs
                    else ChoiceDelta(index, choice.text, choice.logprobs)
                )
            for position, call in enumerate(choice.tool_calls):
                function = call["function"]
                yield ToolCallDelta(position, call["id"], function["name"], function["arguments"], index)
            if index and choice.finish_reason:
                yield Finish(choice.finish_reason, index)
        yield from _late_pieces(generation.model, generation.usage, generation.finish_reason)

    def _send(
        self,
        prompt: str,
        system: str,
        params: GenerationParams,
        history: Sequence[Turn],
        after: Sequence[Turn],
        stream: bool,
    ) -> requests.Response:
        """POST the call, read as it arrives; an answer the wire format learns from (parameters the model
        does not take) is sent once more without them, and later calls never send them.
        """
        try:
            return self.transport.post(self.wire.payload(prompt, system, params, stream, history, after))
        except HFError as exc:
            if not self.wire.learn(exc):
                raise
        return self.transport.post(self.wire.payload(prompt, system, params, stream, history, after))

    def _pieces(
        self, response: requests.Response, observed: CallTelemetry, deadline_at: float
    ) -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
        """Text deltas from the upstream's events as they arrive, then the model, usage and finish reason if
        they were reported.

        sseclient-py parses the events (multi-line data, comments, CRLF, events split across chunks) from
        the transport's bounded pieces as they arrive (`Transport.stream_body`). Every piece, comments
        included, counts against HF_DEADLINE and HF_MAX_RESPONSE_BYTES.
        """
        usage: Usage | None = None
        model: str | None = None
        finish: str | None = None
        calls: set[tuple[int, int]] = set()  # the (choice, index) of each tool call begun
        with _reading(response, observed):
            with self.transport.errors(streaming=True):
                chunks = self.transport.stream_body(response, deadline_at)
                for event in SSEClient(chunks).events():
                    if event.data == self.wire.done_marker:
                        break
                    data = None if event.event == "error" else decode(event.data)
                    if data is None or (isinstance(data, dict) and "error" in data):
                        raise self.transport.stream_error(event.data)
                    piece = self.wire.parse_event(data)
                    usage, model = piece.usage or usage, piece.model or model
                    finish = piece.finish_reason or finish
                    if piece.text:
                        observed.first_token(piece.text)
                        yield piece.text
                    if piece.pieces:
                        observed.first_token()
                        yield from _with_call_ids(piece.pieces, calls)
                    if piece.done:
                        break
                else:
                    if finish is None:  # neither the end marker nor a finish reason: the answer was cut short
                        raise self.transport.interrupted("the connection closed before the end of the answer")
            observed.succeeded(usage, model)
            yield from _late_pieces(model, usage, finish)


def _with_call_ids(
    pieces: tuple[ToolCallDelta | ChoiceDelta | Finish, ...], calls: set[tuple[int, int]]
) -> Iterator[ToolCallDelta | ChoiceDelta | Finish]:
    """`pieces`, the first piece of each tool call given an id when the endpoint sent none (as OpenAI's always
    has one: clients pair each `tool` result with it)."""
    for piece in pieces:
        if isinstance(piece, ToolCallDelta) and (piece.choice, piece.index) not in calls:
            calls.add((piece.choice, piece.index))
            if piece.id is None:
                piece = dataclasses.replace(piece, id=new_call_id())
        yield piece


@contextlib.contextmanager
def _reading(response: requests.Response, observed: CallTelemetry) -> Iterator[None]:
    """An answer being read: a failure is counted on the call, and the connection and the call end either way."""
    try:
        yield
    except HFError as exc:
        observed.failed(exc)
        raise
    finally:
        response.close()
        observed.end()


def _late_pieces(model: str | None, usage: Usage | None, finish: str | None) -> Iterator[ServedBy | Usage | Finish]:
    """What a stream reports after its text, when the endpoint said it: the serving model, usage, why it ended."""
    if model:
        yield ServedBy(model)
    if usage:
        yield usage
    if finish:
        yield Finish(finish)

"""What every model provider offers the pipeline: the `Provider` protocol and the neutral types it speaks.

The runtime, the web layer and the CLI know only these; a provider package
(`app.providers.huggingface`) turns them into its own wire format and back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# A turn of the conversation, shaped as OpenAI's messages: `role` (system, user, assistant, tool), `content` (a
# string, a list of content parts such as `{"type": "text"}`/`{"type": "image_url"}`, or None for an assistant
# turn that only calls tools), `tool_calls` (an assistant's, OpenAI-shaped) and `tool_call_id` (a tool result's).
Turn = Mapping[str, Any]
# An OpenAI-shaped tool call: {"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}.
ToolCall = Mapping[str, Any]


@dataclass(frozen=True)
class GenerationParams:
    """What is sent with each call besides the conversation: the context's guardrails, or what the client chose
    within them, and the OpenAI fields a client may pass through (tools, structured output, `n`, ...).

    Every field past `stop` defaults to "not asked for", so a request without them builds the same call as
    before they existed; a wire format that cannot carry one it is asked for refuses it (never drops it).
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    # OpenAI's function tools, as the client sent them, and how the model may use them.
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # {"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}.
    response_format: Mapping[str, Any] | None = None
    n: int = 1
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # Content parts of the input besides its text (images), sent after the rendered prompt in the user's turn.
    input_parts: tuple[Mapping[str, Any], ...] = ()
    # When the call must be over (time.monotonic()), if sooner than the provider's own deadline: a second call
    # for the same request (a re-ask, a loop's next step) gets what is left of the first one's.
    deadline_at: float | None = None

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
    # Of those, what the endpoint says it served from its prompt cache, and spent reasoning (OpenAI's details).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    def as_dict(self) -> dict[str, int]:
        counts = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        return {name: value for name, value in counts.items() if value is not None}


@dataclass(frozen=True)
class Choice:
    """One of the `n` answers of a call: its text, its tool calls, why it ended and its logprobs as reported."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    logprobs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Generation:
    """A whole answer: the model's text and, when reported, its token usage, the model that served it and why
    it ended; the tool calls it asked for, its logprobs and, when `n` > 1, the other answers (`more`).

    `model` is the endpoint's own name for what answered (the router reports the serving provider's id,
    e.g. `llama-3.3-70b`), which can differ from the model id the call asked for. `text` is "" when the
    model only called tools (OpenAI's `content: null`).
    """

    text: str
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: Mapping[str, Any] | None = None
    more: tuple[Choice, ...] = ()  # choices 1.. of a call with n > 1, in index order

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every answer of the call, the first one included, in index order."""
        return (Choice(self.text, self.tool_calls, self.finish_reason, self.logprobs), *self.more)


@dataclass(frozen=True)
class ServedBy:
    """A late piece of a stream: the model the endpoint says answered (as `Generation.model`)."""

    model: str


@dataclass(frozen=True)
class Finish:
    """A piece of a stream when the endpoint said why a choice's generation ended (`stop`, `length`,
    `tool_calls`); the last piece for the first choice."""

    reason: str
    choice: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI frames it: the first piece of each call carries its `id` and
    `name`, later ones append to its `arguments`; `index` is the call's place among the choice's calls (several
    calls may arrive interleaved)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    choice: int = 0

    def as_openai(self) -> dict[str, Any]:
        """The piece as an entry of a chunk's `delta.tool_calls`."""
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        if self.id is None:
            return {"index": self.index, "function": function}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ChoiceDelta:
    """A piece of text that is not the first choice's plain text: another choice's (n > 1), or any choice's with
    the logprobs the endpoint reported for it (OpenAI's `choices[].logprobs` of that chunk)."""

    choice: int
    text: str = ""
    logprobs: Mapping[str, Any] | None = None


# What iterating a `TokenStream` yields: the first choice's text (nearly every piece), a tool call's piece, or a
# piece of another choice or with logprobs.
StreamPiece = str | ToolCallDelta | ChoiceDelta


class TokenStream:
    """A generation arriving piece by piece: iterate for its `StreamPiece`s; `usage`, `response_model`,
    `finish_reason` (the first choice's; every choice's in `finish_reasons`) and `tool_calls` (the first choice's,
    assembled) are set once they are all read.

    The constructor waits for the first piece, so a failure before any text reaches the caller as an ordinary
    `ProviderError` (a JSON error with its status, not a broken stream). `close()` closes the upstream connection:
    a client that goes away stops the generation instead of leaving it running.
    """

    def __init__(self, pieces: Iterator[StreamPiece | Usage | ServedBy | Finish], model: str | None) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self.finish_reasons: dict[int, str] = {}
        self._calls: dict[int, dict[str, Any]] = {}
        self._pieces = pieces
        self._first = list(itertools.islice(pieces, 1))

    def __iter__(self) -> Iterator[StreamPiece]:
        for piece in itertools.chain(self._first, self._pieces):
            if isinstance(piece, str):  # nearly every piece: asked first
                yield piece
            elif isinstance(piece, ToolCallDelta):
                if piece.choice == 0:
                    self._assemble(piece)
                yield piece
            elif isinstance(piece, ChoiceDelta):
                yield piece
            elif isinstance(piece, Usage):
                self.usage = piece
            elif isinstance(piece, ServedBy):
                self.response_model = piece.model
            elif isinstance(piece, Finish):
                self.finish_reasons[piece.choice] = piece.reason
                if piece.choice == 0:
                    self.finish_reason = piece.reason

    def _assemble(self, piece: ToolCallDelta) -> None:
        call = self._calls.get(piece.index)
        if call is None:
            call = self._calls[piece.index] = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        if piece.id:
            call["id"] = piece.id
        if piece.name:
            call["function"]["name"] += piece.name
        call["function"]["arguments"] += piece.arguments

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The first choice's tool calls read so far, whole, in index order (OpenAI-shaped)."""
        return tuple(self._calls[index] for index in sorted(self._calls))

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()


class Provider(Protocol):
    """A text-generation backend: a whole answer, or one streamed piece by piece.

    `history` is the conversation before the prompt, `after` the turns that follow it (an assistant's
    `tool_calls` and the `tool` results answering them, or an assistant message to continue), each in order; a
    provider with `history_in_turns` sends them as turns, one without leaves `history` to the template (the
    rendered prompt is all it sends) and refuses `after`.
    """

    model_id: str
    url: str  # where the calls go, shown by /version and `ctx hf test-model`
    history_in_turns: bool

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> Generation:
        """The model's whole answer to `prompt`; a `ProviderError` subclass saying what to fix otherwise."""
        ...

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        system: str = "",
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> TokenStream:
        """The answer as it is generated, once its first piece has arrived; `ProviderError` before that."""
        ...

    def close(self) -> None:
        """Release the provider's connections."""
        ...

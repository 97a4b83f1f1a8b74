"""What every model provider offers the pipeline: the `Provider` protocol and the neutral types it speaks.

The runtime, the web layer and the CLI know only these; a provider package
(`app.providers.huggingface`) turns them into its own wire format and back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# A prior turn of the conversation: {"role": "user" | "assistant" | "system", "content": "..."}.
Turn = Mapping[str, str]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters sent with each call: the context's guardrails, or what the client chose within them."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()

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
class Generation:
    """A whole answer: the model's text and, when reported, its token usage, the model that served it and why
    it ended.

    `model` is the endpoint's own name for what answered (the router reports the serving provider's id,
    e.g. `llama-3.3-70b`), which can differ from the model id the call asked for.
    """

    text: str
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class ServedBy:
    """A late piece of a stream: the model the endpoint says answered (as `Generation.model`)."""

    model: str


@dataclass(frozen=True)
class Finish:
    """The last piece of a stream when the endpoint said why the generation ended (`stop`, `length`)."""

    reason: str


class TokenStream:
    """A generation arriving piece by piece: iterate for text deltas; `usage`, `response_model` and
    `finish_reason` are set once they are all read.

    The constructor waits for the first piece, so a failure before any text reaches the caller as an ordinary
    `ProviderError` (a JSON error with its status, not a broken stream). `close()` closes the upstream connection:
    a client that goes away stops the generation instead of leaving it running.
    """

    def __init__(self, pieces: Iterator[str | Usage | ServedBy | Finish], model: str | None) -> None:
        self.model = model
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.finish_reason: str | None = None
        self._pieces = pieces
        self._first = list(itertools.islice(pieces, 1))

    def __iter__(self) -> Iterator[str]:
        for piece in itertools.chain(self._first, self._pieces):
            if isinstance(piece, str):  # nearly every piece: asked first
                yield piece
            elif isinstance(piece, Usage):
                self.usage = piece
            elif isinstance(piece, ServedBy):
                self.response_model = piece.model
            elif isinstance(piece, Finish):
                self.finish_reason = piece.reason

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close:
            close()


class Provider(Protocol):
    """A text-generation backend: a whole answer, or one streamed piece by piece.

    `history` is the conversation before the prompt; a provider with `history_in_turns` sends it as turns,
    one without leaves it to the template (the rendered prompt is all it sends).
    """

    model_id: str
    url: str  # where the calls go, shown by /version and `ctx hf test-model`
    history_in_turns: bool

    def generate(
        self, prompt: str, params: GenerationParams, system: str = "", history: Sequence[Turn] = ()
    ) -> Generation:
        """The model's whole answer to `prompt`; a `ProviderError` subclass saying what to fix otherwise."""
        ...

    def stream(
        self, prompt: str, params: GenerationParams, system: str = "", history: Sequence[Turn] = ()
    ) -> TokenStream:
        """The answer as it is generated, once its first piece has arrived; `ProviderError` before that."""
        ...

    def close(self) -> None:
        """Release the provider's connections."""
        ...

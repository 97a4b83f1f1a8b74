"""The tool loop: call the model with the context's tools; while it answers with calls of them, run them, append
the assistant's `tool_calls` turn and the `tool` results after the input, and call it again.

It ends when the model answers with text, when it calls a tool the *client* sent (that answer goes back to the
client, which runs it: OpenAI's protocol), or after `guardrails.max_tool_steps` model calls (`ToolStepsExceeded`,
a 502 naming the tools called: never an endless loop). Every model call and tool call of the loop shares the
request's deadline (`HF_DEADLINE` from its start, `GenerationParams.deadline_at`). Token usage is summed over the
steps: each model call is paid for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import ToolStepsExceeded
from app.providers.base import (
    Finish,
    Generate,
    Generation,
    GenerationParams,
    ServedBy,
    Stream,
    StreamPiece,
    TokenStream,
    ToolCall,
    ToolCallDelta,
    Turn,
    Usage,
)
from app.providers.huggingface.transport import deadline_at
from app.tools.base import CallContext, Search
from app.tools.toolset import Offer, Ran, Toolset

Screen = Callable[[Sequence[str]], list[str]]  # a step's tool results -> what the model may read of each


@dataclass(frozen=True)
class Inputs:
    """One model call's inputs besides the turns after the input (which the loop grows)."""

    prompt: str
    params: GenerationParams
    system: str
    history: Sequence[Turn]
    after: Sequence[Turn]


@dataclass
class ToolRun:
    """One request's tool loop: its toolset, who it is for, until when, and the calls made so far."""

    toolset: Toolset
    context: CallContext
    screen: Screen | None = None  # the request's guardrails over each step's results before the model reads them
    ran: list[Ran] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # each call's record, appended as it ends
    degraded: str = ""

    @classmethod
    def start(
        cls,
        toolset: Toolset,
        request_id: str,
        tenant_id: str,
        seconds: float,
        search: Search | None,
        screen: Screen | None = None,
    ) -> ToolRun:
        # `seconds` from now, or sooner when the block the request runs in ends sooner (a `ctx test` run's).
        return cls(toolset, CallContext(request_id, tenant_id, deadline_at(seconds), search), screen)

    def _offer(self, inputs: Inputs) -> tuple[Offer, Inputs, set[str]]:
        """The context's tools now, the inputs offering them after the client's, and the client's tools' names
        (a name both define is the client's: it asked for it)."""
        offer = self.toolset.offer(self.context)
        self.degraded = offer.degraded
        client = {_name(tool) for tool in inputs.params.tools}
        own = tuple(d for d in offer.definitions if _name(d) not in client)
        # Every model call of the loop shares the request's deadline, as its tool calls do.
        params = replace(inputs.params, tools=(*inputs.params.tools, *own), deadline_at=self.context.deadline_at)
        return offer, replace(inputs, params=params), client

    def _step(self, offer: Offer, turns: list[Turn], text: str, calls: Sequence[ToolCall]) -> Iterator[Ran]:
        """Run one step's calls, yielding each as it finishes; then append the assistant turn and the results."""
        finished: dict[int, Ran] = {}
        for ran in self.toolset.run(offer, calls, self.context):
            finished[id(ran.call)] = ran
            self.ran.append(ran)
            self.calls.append(ran.record())
            yield ran
        turns.append({"role": "assistant", "content": text or None, "tool_calls": [dict(call) for call in calls]})
        contents = [finished[id(call)].result.content for call in calls]
        if self.screen is not None:
            contents = self.screen(contents)
        for call, content in zip(calls, contents, strict=True):
            turns.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": content})

    def _exceeded(self) -> ToolStepsExceeded:
        called = ", ".join(dict.fromkeys(ran.name for ran in self.ran))
        return ToolStepsExceeded(
            f"the model kept calling tools for {self.toolset.max_steps} steps (guardrails.max_tool_steps) "
            f"without answering; tools called: {called}"
        )

    def generate(self, generate: Generate, inputs: Inputs) -> Generation:
        """The model's final whole answer (or one calling the client's tools), after the context's tools ran;
        `generate` is the provider's call (as the runtime makes it: structured output checked)."""
        offer, inputs, client = self._offer(inputs)
        turns: list[Turn] = list(inputs.after)
        usage: Usage | None = None
        for _ in range(self.toolset.max_steps):
            generation = generate(inputs.prompt, inputs.params, inputs.system, inputs.history, tuple(turns))
            usage = _add(usage, generation.usage)
            calls = generation.tool_calls
            # Calls of the client's tools make the answer the client's to act on, with only those calls: the
            # client can neither run the context's nor send their results back.
            client_calls = tuple(call for call in calls if _name(call) in client)
            if not calls or client_calls:
                return replace(generation, usage=usage, tool_calls=client_calls)
            for _ran in self._step(offer, turns, generation.text, calls):
                pass
        raise self._exceeded()

    def stream(self, stream: Stream, inputs: Inputs, progress: bool) -> TokenStream:
        """The final answer as a stream: tool steps first (with `progress`, an empty piece after each call,
        for the native stream to show it), then the last model call's pieces as they arrive. Its `model` is
        the model of the first call (the first piece has arrived by then); a chain's may differ later."""
        streams: list[TokenStream] = []
        outer = TokenStream(self._pieces(stream, inputs, progress, streams), None)
        outer.model = streams[0].model if streams else None
        return outer

    def _pieces(
        self, call: Stream, inputs: Inputs, progress: bool, streams: list[TokenStream]
    ) -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
        offer, inputs, client = self._offer(inputs)
        turns: list[Turn] = list(inputs.after)
        usage: Usage | None = None
        for _ in range(self.toolset.max_steps):
            stream = call(inputs.prompt, inputs.params, inputs.system, inputs.history, tuple(turns))
            streams.append(stream)
            text = ""
            relayed: dict[int, bool] = {}  # each call of the first choice: relayed (the client's) or kept (ours)
            try:
                for piece in stream:
                    if isinstance(piece, str):  # nearly every piece
                        text += piece
                        if piece:
                            yield piece
                    elif isinstance(piece, ToolCallDelta) and piece.choice == 0:
                        if piece.name is not None:
                            relayed[piece.index] = piece.name in client
                        if relayed.get(piece.index, False):
                            yield piece
                    else:
                        yield piece
            finally:
                stream.close()
            usage = _add(usage, stream.usage)
            calls = stream.tool_calls
            if not calls or any(relayed.values()):
                yield from _late_pieces(stream, usage)
                return
            for _ran in self._step(offer, turns, text, calls):
                if progress:
                    yield ""
        raise self._exceeded()


def _late_pieces(stream: TokenStream, usage: Usage | None) -> Iterator[Usage | ServedBy | Finish]:
    if stream.response_model:
        yield ServedBy(stream.response_model)
    if usage:
        yield usage
    if stream.finish_reason:
        yield Finish(stream.finish_reason)


def _add(total: Usage | None, more: Usage | None) -> Usage | None:
    """Token counts of two calls together (a count either did not report stays unknown only if both lack it)."""
    if total is None or more is None:
        return more or total
    prompt = (total.prompt_tokens or 0) + (more.prompt_tokens or 0)
    completion = (total.completion_tokens or 0) + (more.completion_tokens or 0)
    return Usage(
        prompt if total.prompt_tokens is not None or more.prompt_tokens is not None else None,
        completion if total.completion_tokens is not None or more.completion_tokens is not None else None,
    )


def _name(definition: Any) -> str:
    """The function name of an OpenAI tool definition or tool call."""
    function = definition.get("function") if isinstance(definition, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else ""

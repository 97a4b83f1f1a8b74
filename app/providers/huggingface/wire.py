"""The two wire formats of a generation call: how a request is shaped and how answers are read.

`text-generation` is TGI's and the classic Inference API's; `chat-completion` is the
OpenAI-compatible route of the router's `/v1`, Inference Endpoints, TGI, vLLM and
llama.cpp. Retries, errors and telemetry are the same for both (`transport`, `telemetry`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from app.config import Settings
from app.errors import UnsupportedByEndpoint
from app.providers.base import (
    Choice,
    ChoiceDelta,
    Finish,
    Generation,
    GenerationParams,
    ToolCall,
    ToolCallDelta,
    Turn,
    Usage,
)
from app.providers.huggingface.errors import HFError, bad_response, unused_model_kwargs


class StreamEvent(NamedTuple):
    """What one upstream server-sent event carries: a piece of text, usage, or the end of the generation.

    A tuple: one is built per streamed token, and a frozen dataclass costs several times as much to build.
    """

    text: str = ""
    usage: Usage | None = None
    done: bool = False
    model: str | None = None  # the model the endpoint says is answering
    finish_reason: str | None = None
    # What else the event carries (tool call pieces, other choices, logprobs, other choices' ends), in order.
    pieces: tuple[ToolCallDelta | ChoiceDelta | Finish, ...] = ()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(prompt: Any, completion: Any, cached: Any = None, reasoning: Any = None) -> Usage | None:
    """A `Usage` from whatever counts are integers; None when the endpoint reported none."""
    usage = Usage(_count(prompt), _count(completion), _count(cached), _count(reasoning))
    return usage if usage.as_dict() else None


class WireFormat:
    """How one API shapes a request and reads its answers; retries, errors and telemetry stay in the client."""

    name = ""
    operation = ""  # gen_ai.operation.name
    done_marker: str | None = None  # a stream event's data that ends the stream without being JSON
    history_in_turns = False  # whether prior turns go to the model as turns (else the template renders them)

    def __init__(self, settings: Settings) -> None:
        self.model_id = settings.hf_model_id
        self.url = self._url(settings)

    def _url(self, settings: Settings) -> str:
        raise NotImplementedError

    def payload(
        self,
        prompt: str,
        system: str,
        params: GenerationParams,
        stream: bool,
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, params: GenerationParams, history: Sequence[Turn], after: Sequence[Turn]) -> None:
        """Refuse, before any call, what the request asks for that this wire format cannot carry."""

    def parse(self, data: Any) -> Generation:
        raise NotImplementedError

    def parse_event(self, data: Any) -> StreamEvent:
        raise NotImplementedError

    def learn(self, error: HFError) -> bool:
        """Adapt the payload to what a failed call's answer explains; True when sending it again can now succeed."""
        return False


# What the classic route's `parameters` may hold; a model may reject some of them (`TextGeneration.learn`).
_CLASSIC_PARAMETERS = frozenset({"max_new_tokens", "temperature", "top_p", "return_full_text", "stop", "do_sample"})


# What `GenerationParams` may hold that the classic route has no field for (`seed` and `stop` it takes).
_NOT_CLASSIC = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "user",
)


def _unsupported(field: str, what: str = "") -> UnsupportedByEndpoint:
    return UnsupportedByEndpoint(
        f"{field}: {what or field} cannot be sent with HF_API=text-generation, which carries only a prompt and "
        "sampling parameters; HF_API=chat-completion (the router, TGI's and vLLM's /v1) serves it.",
        param=field,
    )


class TextGeneration(WireFormat):
    """`POST {HF_ENDPOINT}/{HF_MODEL_ID}` with `inputs` and `parameters`: the guide's classic route (and TGI's)."""

    name, operation = "text-generation", "text_completion"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # Parameters this model's transformers pipeline said it does not take: never sent again by this process.
        self.unused: frozenset[str] = frozenset()

    def _url(self, settings: Settings) -> str:
        return f"{settings.hf_endpoint}/{settings.hf_model_id}"

    def payload(
        self,
        prompt: str,
        system: str,
        params: GenerationParams,
        stream: bool,
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> dict[str, Any]:
        # The rendered prompt already carries the persona and, as its template decides, the history.
        parameters: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "return_full_text": False,
        }
        if params.stop:
            parameters["stop"] = list(params.stop)
        if params.seed is not None:
            parameters["seed"] = params.seed
        if params.temperature == 0:
            # OpenAI clients ask for greedy decoding with temperature 0, which TGI refuses: it has its own switch.
            del parameters["temperature"]
            parameters["do_sample"] = False
        payload: dict[str, Any] = {
            "inputs": prompt,
            "parameters": {name: value for name, value in parameters.items() if name not in self.unused},
        }
        if stream:
            payload["stream"] = True
        return payload

    def check(self, params: GenerationParams, history: Sequence[Turn], after: Sequence[Turn]) -> None:
        """The classic route takes a prompt and sampling parameters (and `seed`, `stop`): tools, structured
        output, several choices, logprobs, penalties, images and turns after the input are a 400 naming the field.
        """
        for name in _NOT_CLASSIC:
            value = getattr(params, name)
            if value is not None and value != ():
                raise _unsupported(name)
        if params.n != 1:
            raise _unsupported("n")
        if params.input_parts:
            raise _unsupported("messages", "image content parts")
        if after:
            raise _unsupported("messages", "turns after the last user message (tool results, an assistant prefill)")
        for turn in history:
            if turn["role"] == "tool" or "tool_calls" in turn:
                raise _unsupported("messages", "tool calls and tool results")
            if isinstance(turn["content"], list):
                raise _unsupported("messages", "image content parts")

    def learn(self, error: HFError) -> bool:
        """A model served by the transformers pipeline (not TGI) rejects, with a 400, the parameters it does not
        take, naming them; they are dropped for good, and the call is worth sending again if it had any of them.
        """
        named = unused_model_kwargs(error.upstream_error) if error.upstream_status == 400 else frozenset()
        was_sent = named & (_CLASSIC_PARAMETERS - self.unused)
        self.unused |= named
        return bool(was_sent)

    def parse(self, data: Any) -> Generation:
        """`[{"generated_text"}]` or `{"generated_text"}`, with `details.generated_tokens` when TGI adds it."""
        if isinstance(data, list) and data:
            data = data[0]
        if isinstance(data, dict) and isinstance(data.get("generated_text"), str):
            return Generation(data["generated_text"], _tgi_usage(data), finish_reason=_tgi_finish(data))
        raise bad_response("without a generated_text field")

    def parse_event(self, data: Any) -> StreamEvent:
        """TGI's `{"token": {"text", "special"}, "generated_text": null | "...", "details": ...}`."""
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, dict) or not isinstance(token.get("text"), str):
            raise bad_response("a stream event without token.text")
        text = "" if token.get("special") else token["text"]
        done = data.get("generated_text") is not None
        return StreamEvent(text=text, usage=_tgi_usage(data), done=done, finish_reason=_tgi_finish(data))


class ChatCompletion(WireFormat):
    """`POST {HF_ENDPOINT}/chat/completions`, the OpenAI-compatible route; `HF_MODEL_ID` goes in the body as is."""

    name, operation = "chat-completion", "chat"
    done_marker = "[DONE]"
    history_in_turns = True

    def _url(self, settings: Settings) -> str:
        return f"{settings.hf_endpoint}/chat/completions"

    def payload(
        self,
        prompt: str,
        system: str,
        params: GenerationParams,
        stream: bool,
        history: Sequence[Turn] = (),
        after: Sequence[Turn] = (),
    ) -> dict[str, Any]:
        """The context's system message, then the client's turns before the input, then the prompt as the user's,
        then the turns after it (tool calls and their results, a prefill): never reordered.

        Only a turn's `role`, `content`, `tool_calls` and `tool_call_id` are sent: history never changes the
        model or anything else. The OpenAI fields the request asked for go as they are; none are sent otherwise.
        """
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages += [_turn(t) for t in history]
        user = [{"type": "text", "text": prompt}, *params.input_parts] if params.input_parts else prompt
        messages.append({"role": "user", "content": user})
        messages += [_turn(t) for t in after]
        payload: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.tools:
            payload["tools"] = list(params.tools)
        for name in _OPENAI_OPTIONAL:
            value = getattr(params, name)
            if value is not None:
                payload[name] = value
        if params.n != 1:
            payload["n"] = params.n
        if stream:
            # Without stream_options a streamed answer reports no usage at all.
            payload.update(stream=True, stream_options={"include_usage": True})
        return payload

    def parse(self, data: Any) -> Generation:
        """Every choice (in index order) with its text, tool calls and logprobs; the first one is the answer's."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise bad_response("without choices[0].message.content")
        if len(choices) > 1:
            choices = sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)
        first, *more = (_choice(c) for c in choices)
        return Generation(
            first.text,
            _openai_usage(data),
            _model(data),
            first.finish_reason,
            tool_calls=first.tool_calls,
            logprobs=first.logprobs,
            more=tuple(more),
        )

    def parse_event(self, data: Any) -> StreamEvent:
        """A chunk's choices: the first choice's plain `delta.content` as `text` (nearly every chunk), the rest
        (tool call pieces, other choices, logprobs) as `pieces`; the last chunk may carry only `usage`."""
        if not isinstance(data, dict) or not isinstance(data.get("choices", []), list):
            raise bad_response("a stream event that is not a chat completion chunk")
        choices: list[Any] = data.get("choices") or []
        usage = _openai_usage(data)
        if len(choices) == 1:  # nearly every chunk: the first choice's text, nothing else
            choice = choices[0]
            if isinstance(choice, dict) and not choice.get("index") and not choice.get("logprobs"):
                delta = choice.get("delta")
                if not isinstance(delta, dict) or not delta.get("tool_calls"):
                    text = delta.get("content") if isinstance(delta, dict) else None
                    finish = _text_or_none(choice.get("finish_reason"))
                    return StreamEvent(
                        text if isinstance(text, str) else "", usage, model=_model(data), finish_reason=finish
                    )
        text, finish = "", None
        pieces: list[ToolCallDelta | ChoiceDelta | Finish] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise bad_response("a stream event whose choice is not an object")
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            content = content if isinstance(content, str) else ""
            logprobs = choice.get("logprobs") or None
            if index == 0 and logprobs is None:
                text = content
            elif content or logprobs:
                pieces.append(ChoiceDelta(index, content, logprobs if isinstance(logprobs, dict) else None))
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if calls:
                pieces += [_tool_call_delta(call, index) for call in calls]
            reason = _text_or_none(choice.get("finish_reason"))
            if index == 0:
                finish = reason
            elif reason:
                pieces.append(Finish(reason, index))
        return StreamEvent(text, usage, model=_model(data), finish_reason=finish, pieces=tuple(pieces))


def _choice(choice: dict[str, Any]) -> Choice:
    """One choice of a whole answer: `message.content` is text, or null when the model only called tools."""
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if calls is not None and not isinstance(calls, list):
        raise bad_response("with choices[].message.tool_calls that is not a list")
    tool_calls = tuple(_tool_call(call) for call in calls or ())
    if content is None and tool_calls:
        content = ""
    if not isinstance(content, str):
        raise bad_response("without choices[0].message.content")
    logprobs = choice.get("logprobs")
    return Choice(
        content,
        tool_calls,
        _text_or_none(choice.get("finish_reason")),
        logprobs if isinstance(logprobs, dict) else None,
    )


def _tool_call(call: Any) -> ToolCall:
    """A whole tool call, OpenAI-shaped: `arguments` as JSON text (TGI sends an object), an id if none came."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_response("with a tool call without function.name")
    call_id = call.get("id")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else new_call_id(),
        "type": "function",
        "function": {"name": function["name"], "arguments": _arguments(function.get("arguments"))},
    }


def _tool_call_delta(call: Any, choice: int) -> ToolCallDelta:
    """A piece of a streamed tool call as sent: `id` and `name` on a call's first piece, `arguments` appended."""
    if not isinstance(call, dict):
        raise bad_response("a stream event with a tool call that is not an object")
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    index, call_id, name = call.get("index"), call.get("id"), function.get("name")
    return ToolCallDelta(
        index if isinstance(index, int) else 0,
        call_id if isinstance(call_id, str) and call_id else None,
        name if isinstance(name, str) and name else None,
        _arguments(function.get("arguments")),
        choice,
    )


def _arguments(arguments: Any) -> str:
    """Tool call arguments as OpenAI's SDKs expect them, JSON text; an object is written as JSON."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def new_call_id() -> str:
    """An id for a tool call the endpoint sent without one: clients pair each `tool` result with it."""
    return f"call_{uuid.uuid4().hex[:24]}"


# The OpenAI fields of `GenerationParams` sent as they are when set (None: not asked for).
_OPENAI_OPTIONAL = (
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "user",
)
# What of a turn goes to the model: nothing else the client adds to a message (`model`, a URL) is sent.
_TURN_KEYS = ("role", "content", "tool_calls", "tool_call_id")


def _turn(turn: Turn) -> dict[str, Any]:
    return {key: turn[key] for key in _TURN_KEYS if key in turn}


def _model(data: dict[str, Any]) -> str | None:
    """The OpenAI-style `model` of an answer: the router reports the serving provider's own id there."""
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def _tgi_usage(data: dict[str, Any]) -> Usage | None:
    details = data.get("details")
    return _usage(None, details.get("generated_tokens")) if isinstance(details, dict) else None


def _tgi_finish(data: dict[str, Any]) -> str | None:
    """TGI's `details.finish_reason` in OpenAI's words: `length` stays, `eos_token` and `stop_sequence` are `stop`."""
    details = data.get("details")
    reason = details.get("finish_reason") if isinstance(details, dict) else None
    if not isinstance(reason, str):
        return None
    return "length" if reason == "length" else "stop"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _openai_usage(data: dict[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    return _usage(
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None,
        completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None,
    )


WIRE_FORMATS: dict[str, type[WireFormat]] = {f.name: f for f in (TextGeneration, ChatCompletion)}

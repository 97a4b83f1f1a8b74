"""The two wire formats of a generation call: how a request is shaped and how answers are read.

`text-generation` is TGI's and the classic Inference API's; `chat-completion` is the
OpenAI-compatible route of the router's `/v1`, Inference Endpoints, TGI, vLLM and
llama.cpp. Retries, errors and telemetry are the same for both (`transport`, `telemetry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from app.config import Settings
from app.providers.base import Generation, GenerationParams, Turn, Usage
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


def _usage(prompt: Any, completion: Any) -> Usage | None:
    """A `Usage` from whatever counts are integers; None when the endpoint reported none."""
    usage = Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else None,
        completion_tokens=completion if isinstance(completion, int) else None,
    )
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

    def parse(self, data: Any) -> Generation:
        raise NotImplementedError

    def parse_event(self, data: Any) -> StreamEvent:
        raise NotImplementedError

    def learn(self, error: HFError) -> bool:
        """Adapt the payload to what a failed call's answer explains; True when sending it again can now succeed."""
        return False


# What the classic route's `parameters` may hold; a model may reject some of them (`TextGeneration.learn`).
_CLASSIC_PARAMETERS = frozenset({"max_new_tokens", "temperature", "top_p", "return_full_text", "stop", "do_sample"})


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
        """The context's system message, then the client's, then the prior turns, then the prompt as the user's,
        then the turns after it (tool calls and their results, a prefill), each in the order sent.

        Only a turn's `role`, `content`, `tool_calls` and `tool_call_id` are sent: history never changes the
        model or anything else. The OpenAI fields the request asked for go as they are; none are sent otherwise.
        """
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages += [{"role": "system", "content": t["content"]} for t in history if t["role"] == "system"]
        messages += [_turn(t) for t in history if t["role"] != "system"]
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
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise bad_response("without choices[0].message.content")
        return Generation(content, _openai_usage(data), _model(data), _text_or_none(choice.get("finish_reason")))

    def parse_event(self, data: Any) -> StreamEvent:
        """A chunk's `choices[0].delta.content`; the last chunk may carry only `usage`, with no choices."""
        if not isinstance(data, dict) or not isinstance(data.get("choices", []), list):
            raise bad_response("a stream event that is not a chat completion chunk")
        choice = data["choices"][0] if data.get("choices") else {}
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = delta.get("content") if isinstance(delta, dict) else None
        finish = _text_or_none(choice.get("finish_reason")) if isinstance(choice, dict) else None
        usage = _openai_usage(data)
        return StreamEvent(text if isinstance(text, str) else "", usage, model=_model(data), finish_reason=finish)


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
    return _usage(usage.get("prompt_tokens"), usage.get("completion_tokens")) if isinstance(usage, dict) else None


WIRE_FORMATS: dict[str, type[WireFormat]] = {f.name: f for f in (TextGeneration, ChatCompletion)}

"""The Responses API's answers: a `response` object (`response_object`) and its output items, or the event
sequence of OpenAI's streams (`ResponseEvents`), whose every event the SDKs' stream helpers accumulate by
`output_index` and `sequence_number`. The request side (`ResponsesCall`) is `responses_wire`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from app.errors import ContexisError
from app.providers.base import TokenStream, ToolCallDelta, Usage
from app.web.responses_wire import ResponsesCall
from app.web.sse import sse_event


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """The Responses API's usage; a count the endpoint did not report is 0. None when it reported nothing."""
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _hex(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def message_item(response_id: str, index: int, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message output item; its id names its response, so an `item_reference` can find it."""
    content = (
        [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status != "in_progress" else []
    )
    return {
        "type": "message",
        "id": f"msg_{_hex(response_id)}_{index}",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    response_id: str, index: int, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A function call output item: the client runs the function and answers with a `function_call_output`."""
    return {
        "type": "function_call",
        "id": f"fc_{_hex(response_id)}_{index}",
        "call_id": call_id or f"call_{_hex(response_id)}_{index}",
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def item_response_id(item_id: str) -> str | None:
    """The response an output item id names (`msg_<hex>_<n>`, `fc_<hex>_<n>`), None for another id."""
    kind, _, rest = item_id.partition("_")
    hex_id, _, index = rest.rpartition("_")
    if kind not in ("msg", "fc") or len(hex_id) != 32 or not index.isdigit():
        return None
    return f"resp_{hex_id}"


def answer_output(response_id: str, text: str, tool_calls: tuple[Any, ...], status: str) -> list[dict[str, Any]]:
    """A whole answer's output items: its text as a message (when it has text or calls nothing), then its calls."""
    output = [message_item(response_id, 0, text, status)] if text or not tool_calls else []
    for call in tool_calls:
        function = call["function"]
        output.append(function_call_item(response_id, len(output), call["id"], function["name"], function["arguments"]))
    return output


def status_of(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """The response's status and `incomplete_details`: an answer cut at the token limit is incomplete."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def response_object(
    call: ResponsesCall,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """A `response` object: its state, its output, what the request set, and `usage`, `error`, `sources`..."""
    texts = [part["text"] for item in output if item["type"] == "message" for part in item["content"]]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "model": call.body["model"],
        "output": output,
        "output_text": "".join(texts),
        **call.echo,
        "store": call.store,
        "text": {"format": call.text_format},
        "truncation": "disabled",
        "usage": None,
        **fields,
    }


class ResponseEvents:
    """A streamed answer as the Responses API's events, each with the next `sequence_number`.

    `response.created` and `response.in_progress`, then per output item `response.output_item.added`, its
    content (`response.content_part.added`, `response.output_text.delta`... for text;
    `response.function_call_arguments.delta` for a call) and, once the model is done, its `.done` events; then
    `response.completed` (`response.incomplete` when cut at the token limit), after `finish` has stored it. A
    failure after the first event is `response.failed` with the output so far (`failed`).
    """

    def __init__(
        self,
        call: ResponsesCall,
        response_id: str,
        stream: TokenStream,
        finish: Callable[[dict[str, Any]], None],
        **fields: Any,
    ) -> None:
        self.call = call
        self.id = response_id
        self.created_at = int(time.time())
        self.stream = stream
        self.finish = finish
        self.fields = fields
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._text: list[str] | None = None  # the open message's text so far
        self._calls: dict[int, int] = {}  # a tool call's index -> its output index

    def _event(self, kind: str, **data: Any) -> str:
        event = sse_event({"type": kind, "sequence_number": self.sequence, **data}, event=kind)
        self.sequence += 1
        return event

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return response_object(self.call, self.id, self.created_at, status, self.output, **{**self.fields, **fields})

    def __iter__(self) -> Iterator[str]:
        yield self._event("response.created", response=self._response("in_progress"))
        yield self._event("response.in_progress", response=self._response("in_progress"))
        for piece in self.stream:
            if isinstance(piece, str):
                yield from self._text_delta(piece)
            elif isinstance(piece, ToolCallDelta):
                if piece.choice == 0:
                    yield from self._call_delta(piece)
            elif piece.choice == 0 and piece.text:
                yield from self._text_delta(piece.text)
        status, incomplete = status_of(self.stream.finish_reason)
        yield from self._close_message(status)
        for index in sorted(self._calls):
            yield from self._close_call(self._calls[index])
        response = self._response(status, incomplete_details=incomplete, usage=usage_object(self.stream.usage))
        self.finish(response)
        yield self._event("response.completed" if status == "completed" else "response.incomplete", response=response)

    def _text_delta(self, delta: str) -> Iterator[str]:
        if self._text is None:
            self._text = []
            item = message_item(self.id, len(self.output), "", "in_progress")
            self.output.append(item)
            yield self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield self._event("response.content_part.added", **self._where(), part=part)
        self._text.append(delta)
        yield self._event("response.output_text.delta", **self._where(), delta=delta, logprobs=[])

    def _where(self) -> dict[str, Any]:
        index = len(self.output) - 1
        return {"item_id": self.output[index]["id"], "output_index": index, "content_index": 0}

    def _close_message(self, status: str) -> Iterator[str]:
        """End the open message: its text done, its part done, the item done (with its status)."""
        if self._text is None:
            return
        text, where = "".join(self._text), self._where()
        self._text = None
        item = message_item(
            self.id, where["output_index"], text, "incomplete" if status == "incomplete" else "completed"
        )
        self.output[where["output_index"]] = item
        yield self._event("response.output_text.done", **where, text=text, logprobs=[])
        yield self._event("response.content_part.done", **where, part=item["content"][0])
        yield self._event("response.output_item.done", output_index=where["output_index"], item=item)

    def _call_delta(self, piece: ToolCallDelta) -> Iterator[str]:
        index = self._calls.get(piece.index)
        if index is None:
            yield from self._close_message("completed")  # a call after text ends the message
            index = self._calls[piece.index] = len(self.output)
            item = function_call_item(self.id, index, piece.id or "", piece.name or "", "", "in_progress")
            self.output.append(item)
            yield self._event("response.output_item.added", output_index=index, item=item)
        item = self.output[index]
        if piece.name and not item["name"]:
            item["name"] = piece.name
        if piece.arguments:
            item["arguments"] += piece.arguments
            yield self._event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece.arguments
            )

    def _close_call(self, index: int) -> Iterator[str]:
        item = {**self.output[index], "status": "completed"}
        self.output[index] = item
        yield self._event(
            "response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=item["arguments"]
        )
        yield self._event("response.output_item.done", output_index=index, item=item)

    def failed(self, exc: ContexisError) -> str:
        """The event that ends a stream the runtime could not finish: `response.failed`, saying why."""
        if self._text is not None:  # the message cut short, with its text so far
            index = len(self.output) - 1
            self.output[index] = message_item(self.id, index, "".join(self._text), "incomplete")
        for index in self._calls.values():
            self.output[index] = {**self.output[index], "status": "incomplete"}
        error = {"code": exc.code, "message": exc.message}
        return self._event("response.failed", response=self._response("failed", error=error))

"""Structured output: an answer checked against the request's `response_format`, whatever the provider.

An endpoint that takes `response_format` may still answer something else (a provider that ignores it, a
model cut off by `max_tokens`), and the client's parser then fails after a 200. So a `json_schema` answer is
validated with jsonschema and a `json_object` one must parse as a JSON object: a whole answer that does not is
asked for once more with the validator's message, then refused with `structured_output_invalid` (502); a
stream is relayed as it comes and checked at its end, where a failure ends it with an error event.

A request without `response_format` (or one that only calls tools) costs one test of that field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from app.errors import BadRequest, StructuredOutputInvalid
from app.providers.base import (
    ChoiceDelta,
    Finish,
    Generate,
    Generation,
    GenerationParams,
    ServedBy,
    Stream,
    StreamPiece,
    TokenStream,
    Turn,
    Usage,
)
from app.validation import local_validator, unquoted


class Problem(NamedTuple):
    """Why an answer is not what was asked for: told to the model in full (`asked`, quoting its own answer), and to
    the client without the answer's values (`shown`), which the guardrails have not screened."""

    asked: str
    shown: str

    @classmethod
    def same(cls, text: str) -> Problem:
        return cls(text, text)

    def at(self, index: int) -> Problem:
        """The problem of one of several choices."""
        return Problem(f"choices[{index}]: {self.asked}", f"choices[{index}]: {self.shown}")


class Check:
    """What one `response_format` asks of an answer's text."""

    def __init__(self, response_format: Mapping[str, Any]) -> None:
        self.kind = response_format["type"]
        self.validator: Validator | None = None
        if self.kind == "json_schema":
            spec = response_format["json_schema"]
            self.name = spec["name"]
            schema = spec.get("schema") or {}
            # No format checks, and `$ref`s stay within the schema (as OpenAI's structured outputs allow):
            # nothing in a client's schema reaches another host.
            self.validator = local_validator(schema)
            try:
                self.validator.check_schema(schema)
            except SchemaError as exc:
                raise _bad_schema(f"not a valid JSON Schema: {exc.message}") from None
            remote = next(_remote_refs(schema), None)
            if remote is not None:
                raise _bad_schema(f"$ref {remote[:200]!r}: only references within the schema (#...) are supported")

    def problem(self, text: str) -> Problem | None:
        """Why `text` is not what was asked for (the validator's first error), or None when it is."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return Problem.same(f"the answer is not JSON ({exc})")
        if self.validator is None:
            return None if isinstance(value, dict) else Problem.same("the answer is not a JSON object")
        try:
            errors = sorted(self.validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
        except Unresolvable as exc:  # a `#...` reference to nothing in the schema: the client's to fix
            raise _bad_schema(f"$ref {str(exc.ref)[:200]!r} names nothing in the schema") from None
        error = next(iter(errors), None)
        if error is None:
            return None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return Problem(f"${where}: {error.message}", f"${where}: {unquoted(error)}")

    def described(self) -> str:
        return f"json_schema {self.name!r}" if self.kind == "json_schema" else "json_object"


def _bad_schema(problem: str) -> BadRequest:
    return BadRequest(f"response_format.json_schema.schema: {problem}", code="invalid_request", param="response_format")


def _remote_refs(schema: Any) -> Iterator[str]:
    """Every `$ref` or `$dynamicRef` of `schema` that does not point within it."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                yield value
            else:
                yield from _remote_refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _remote_refs(item)


def check_for(params: GenerationParams) -> Check | None:
    """The check `params.response_format` asks for; None for plain text (the default)."""
    response_format = params.response_format
    if response_format is None or response_format.get("type") not in ("json_schema", "json_object"):
        return None
    return Check(response_format)


def _problem(check: Check, generation: Generation) -> Problem | None:
    """The first choice's problem that does not call tools (a tool call is not the final answer), if any."""
    choices = generation.choices
    for index, choice in enumerate(choices):
        if choice.tool_calls:
            continue
        problem = check.problem(choice.text)
        if problem:
            return problem.at(index) if len(choices) > 1 else problem
    return None


def generate(
    call: Generate,
    prompt: str,
    params: GenerationParams,
    system: str = "",
    history: Sequence[Turn] = (),
    after: Sequence[Turn] = (),
    budget: float = math.inf,
) -> Generation:
    """`call` (a provider's `generate`), its answer checked against `params.response_format`: asked once more with the
    validator's message after a mismatch, within what is left of `budget` seconds (the request's deadline),
    `StructuredOutputInvalid` after a second one or when no time is left for it."""
    check = check_for(params)
    started = time.monotonic()
    generation = call(prompt, params, system, history, after)
    if check is None:
        return generation
    problem = _problem(check, generation)
    if problem is None:
        return generation
    # The sooner of the budget and the deadline the params carry (a tool loop's step carries the request's).
    deadline_at = min(started + budget, params.deadline_at or math.inf)
    if deadline_at - time.monotonic() < 1:
        raise invalid(check, problem, "with no time left to ask once more")
    again = (
        *after,
        {"role": "assistant", "content": generation.text},
        {
            "role": "user",
            "content": f"That answer does not match the required {check.described()} format: {problem.asked}. "
            "Answer again with only JSON that matches it.",
        },
    )
    retry = dataclasses.replace(params, deadline_at=deadline_at) if deadline_at != math.inf else params
    generation = call(prompt, retry, system, history, again)
    problem = _problem(check, generation)
    if problem is not None:
        raise invalid(check, problem, "also when asked once more")
    return generation


def stream(
    call: Stream,
    prompt: str,
    params: GenerationParams,
    system: str = "",
    history: Sequence[Turn] = (),
    after: Sequence[Turn] = (),
) -> TokenStream:
    """`call` (a provider's `stream`), relayed as it comes and checked against `params.response_format` at its end."""
    check = check_for(params)
    tokens = call(prompt, params, system, history, after)
    if check is None:
        return tokens
    return TokenStream(_checked(tokens, check), tokens.model)


def _checked(tokens: TokenStream, check: Check) -> Iterator[StreamPiece | Usage | ServedBy | Finish]:
    """The stream's pieces unchanged, then its late pieces once every choice's text has been checked."""
    texts: dict[int, list[str]] = {}
    try:
        for piece in tokens:
            if isinstance(piece, str):
                texts.setdefault(0, []).append(piece)
            elif isinstance(piece, ChoiceDelta):
                texts.setdefault(piece.choice, []).append(piece.text)
            yield piece
    finally:
        tokens.close()
    called = {0} if tokens.tool_calls else set()
    for index in sorted(set(texts) - called) or ([0] if not called else []):
        problem = check.problem("".join(texts.get(index, ())))
        if problem:
            raise invalid(check, problem.at(index) if len(texts) > 1 else problem, "at the stream's end")
    if tokens.response_model:
        yield ServedBy(tokens.response_model)
    if tokens.usage:
        yield tokens.usage
    for index, reason in tokens.finish_reasons.items():
        yield Finish(reason, index)


def invalid(check: Check, problem: Problem, when: str) -> StructuredOutputInvalid:
    return StructuredOutputInvalid(
        f"The model's answer does not match response_format {check.described()} ({when}): {problem.shown}. Try a "
        "larger max_tokens, a provider that supports structured output (the router's supports_structured_output), or "
        "a simpler schema."
    )

"""The guardrails of one request: its input before the prompt is built, its retrieved chunks and its context
tools' results, and the model's answer (whole or streamed) before it leaves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import orjson

from app.errors import GuardrailBlocked, GuardrailRefusal
from app.guardrails.audit import Audit, Decision, entity_counts
from app.guardrails.citations import cites
from app.guardrails.deny import denied
from app.guardrails.injection import ClassifierUnavailable, InjectionDetector
from app.guardrails.pii import Detector, redact
from app.guardrails.policy import Policy
from app.guardrails.stream import HOLD_BACK, held_back
from app.guardrails.values import TooDeep, dumped, each_scalar, mapped, read, texts, tool_value, unescaped
from app.providers.base import Choice, Generation, TokenStream
from app.validation import ChatRequest


class Chunk(Protocol):
    """A retrieved memory chunk, as the guardrails read it."""

    @property
    def content(self) -> str: ...

    @property
    def source(self) -> str: ...


C = TypeVar("C", bound=Chunk)
_C = TypeVar("_C", Choice, Generation)


def _content(content: Any, change: Callable[[str], str]) -> Any:
    """A message's content with `change` applied to its text: a string, or the `text` of each text part (OpenAI's
    content parts); other parts (an image's URL) and a tool-calling turn's None stay as they are."""
    if isinstance(content, str):
        return change(content)
    if isinstance(content, list):
        return [_part(part, change) for part in content]
    return content


def _part(part: Any, change: Callable[[str], str]) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": change(part["text"])}
    return part


def _turn(message: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """A turn with `change` applied to its content and to the arguments of the tool calls it made (a client's
    history carries them back to the model)."""
    turn = {**message, "content": _content(message.get("content"), change)}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        turn["tool_calls"] = [_call(call, change) for call in calls]
    return turn


def _call(call: Any, change: Callable[[str], str]) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": change(function["arguments"])}}
    return call


def _listed(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.items())


def _withheld(guardrail: str, why: str) -> str:
    """What the model reads instead of a tool's result the guardrails kept from it: an error, as a failed call's."""
    return orjson.dumps({"error": f"the result was withheld by the {guardrail} guardrail: {why}"}).decode()


class Guard:
    """One request's checks under its context's `policy`; every decision goes to `audit`."""

    def __init__(self, policy: Policy, detector: Detector, injection: InjectionDetector, audit: Audit) -> None:
        self.policy = policy
        self.detector = detector
        self.injection = injection
        self.audit = audit
        self.sources: list[str] = []
        self._passed: dict[str, str] = {}  # each text of the request screened on the way in -> as passed on

    @property
    def redacted(self) -> tuple[str, ...]:
        """The personal data types replaced so far, in and out (for `ctx test`'s `expect_redacted`)."""
        return self.audit.redacted()

    # -- in -------------------------------------------------------------------------------------------------

    def check_request(self, request: ChatRequest) -> ChatRequest:
        """The request with its personal data redacted (or refused, 422), then checked for injection (403)."""
        if self.policy.pii != "off":
            request = self._personal_data_in(request)
        if self.policy.prompt_injection != "off":
            # Each text once: an OpenAI request's input is both `user_input` and the query.
            turns = (*request.messages, *request.after)  # the turns after the input reach the model too
            history = [text for m in turns for text in texts(m.get("content"), _content)]
            said = [request.query, *texts(request.data, mapped), *history]
            if any(self._injected(list(dict.fromkeys(said)), "in")):
                self._injection_found("in")
        return request

    def as_passed(self, text: str) -> str:
        """A text of the request as the guardrails passed it on: under `pii: redact` with its personal data
        replaced, as the model got it, so what a caller keeps of the request (a stored conversation) holds none
        either. The request's decision is already recorded: this records nothing."""
        if self.policy.pii == "off":
            return text
        passed = self._passed.get(text)
        if passed is None:  # a text the request carried in other pieces (parts the model got joined)
            passed = self.detector.redacted(text)[0]
        return passed

    def _personal_data_in(self, request: ChatRequest) -> ChatRequest:
        found: list[str] = []
        # An OpenAI request's input is both `user_input` and the query: scanned once.
        seen = self._passed

        def screened(text: str) -> str:
            if text in seen:
                return seen[text]
            seen[text], entities = self.detector.redacted(text)
            found.extend(entities)
            return seen[text]

        data = mapped(request.data, screened)
        query = screened(request.query)
        # The turns after the input (a tool's result, an assistant prefill) reach the model as well.
        messages = tuple(_turn(m, screened) for m in request.messages)
        after = tuple(_turn(m, screened) for m in request.after)
        if not found:
            return request
        counts = entity_counts(found)
        if self.policy.pii == "block":
            self.audit.record(Decision("pii", "block", "in", counts))
            raise GuardrailBlocked(
                f"blocked by the pii guardrail: the request holds personal data ({_listed(counts)}); "
                "send it without, or ask the operator for `pii: redact`",
                guardrail="pii",
                status=422,
            )
        self.audit.record(Decision("pii", "redact", "in", counts))
        return replace(request, data=data, query=query, messages=messages, after=after)

    def _injected(self, texts: Sequence[str], stage: str) -> list[bool]:
        try:
            return self.injection.flagged(texts)
        except ClassifierUnavailable:
            self.audit.record(Decision("prompt_injection", "block", stage, reason="classifier_unavailable"))
            raise GuardrailRefusal(
                "the prompt injection classifier did not answer, and this runtime fails closed; try again",
                guardrail="prompt_injection",
                status=503,
                code="guardrail_unavailable",
            ) from None

    def _injection_found(self, stage: str) -> None:
        if self.policy.prompt_injection == "flag":
            self.audit.record(Decision("prompt_injection", "flag", stage))
            return
        self.audit.record(Decision("prompt_injection", "block", stage))
        raise GuardrailBlocked(
            "blocked by the prompt_injection guardrail: the request tries to override the assistant's instructions",
            guardrail="prompt_injection",
            status=403,
        )

    def check_results(self, results: list[C]) -> list[C]:
        """The retrieved chunks without those that carry an injection; 424 `no_sources` when citations are
        required and none is left."""
        if self.policy.prompt_injection != "off" and results:
            flagged = self._injected([r.content for r in results], "in")
            if any(flagged):
                results = [r for r, bad in zip(results, flagged, strict=True) if not bad]
                dropped = sum(flagged)
                self.audit.record(Decision("prompt_injection", "drop", "in", {"chunks": dropped}, "retrieved_chunk"))
        if self.policy.require_citation and not results:
            self.audit.record(Decision("require_citation", "block", "in", reason="no_sources"))
            raise GuardrailRefusal(
                "this context answers only from its documents, and memory found none for the request",
                guardrail="require_citation",
                status=424,
                code="no_sources",
            )
        self.sources = [r.source for r in results]
        return results

    def check_tool_results(self, contents: Sequence[str]) -> list[str]:
        """One step's results of the context's own tools before the model reads them, judged as retrieved chunks are
        (an API's answer or a searched document must not steer the model, nor hand it personal data): personal data
        redacted, under `pii: block` the result withheld; then each result carrying an injection withheld, the
        classifier asked once for the step (shown the values as redacted when `pii` is on). A JSON result is judged
        by its values (`values.tool_value`), and what escapes are left is decoded too, so an escape hides nothing; a
        redacted result stays JSON."""
        out: list[str] = []
        judged: dict[int, str] = {}  # each result not withheld -> the text its injection check reads
        for i, content in enumerate(contents):
            try:
                sent, reads = self._tool_result(content)
            except (RecursionError, TooDeep):  # deeper than the guardrails walk: never passed on unread
                guardrail = "pii" if self.policy.pii != "off" else "prompt_injection"
                self.audit.record(Decision(guardrail, "drop", "in", {"tool_results": 1}, "tool_result"))
                sent, reads = _withheld(guardrail, "it is nested too deeply to be checked"), None
            out.append(sent)
            if reads is not None:
                judged[i] = reads
        if self.policy.prompt_injection != "off" and judged:
            verdicts = self._injected(list(judged.values()), "in")
            flagged = [i for i, bad in zip(judged, verdicts, strict=True) if bad]
            if flagged:
                dropped = {"tool_results": len(flagged)}
                self.audit.record(Decision("prompt_injection", "drop", "in", dropped, "tool_result"))
                for i in flagged:
                    out[i] = _withheld("prompt_injection", "it holds instructions to the assistant")
        return out

    def _tool_result(self, content: str) -> tuple[str, str | None]:
        """A result as the model is to read it, its personal data seen to, and the text its injection check reads
        (None: withheld)."""
        pii = self.policy.pii != "off"
        value, parsed = tool_value(content)
        found: list[str] = []
        if parsed:
            if pii:
                value, found = self._redacted(value)
            sent, reads = dumped(value), read(value)
        else:
            sent, found = self.detector.redacted(content) if pii else (content, [])
            reads = sent
        # Escapes a model may read through: in text, or inside a JSON string (JSON sent as a string), three levels deep.
        decoded = unescaped(reads)
        if pii and decoded != reads:
            hidden = [finding.entity for finding in self.detector.find(decoded)]  # a placeholder is never one
            if hidden:  # no redaction of what was sent reaches them
                return self._dropped_for_personal_data(found + hidden), None
        if not found:
            return sent, decoded
        if self.policy.pii == "block":
            return self._dropped_for_personal_data(found), None
        self.audit.record(Decision("pii", "redact", "in", entity_counts(found), "tool_result"))
        return sent, decoded

    def _dropped_for_personal_data(self, found: list[str]) -> str:
        """What the model reads of a tool result withheld for the personal data in it; the decision recorded."""
        counts = entity_counts(found)
        self.audit.record(Decision("pii", "drop", "in", counts, "tool_result"))
        return _withheld("pii", f"it holds personal data ({_listed(counts)})")

    def _redacted(self, value: Any) -> tuple[Any, list[str]]:
        """A parsed tool result with its personal data replaced, and the types found."""
        each = self.detector.find_each(texts(value, each_scalar))
        found = [finding.entity for findings in each for finding in findings]
        if not found:  # nearly every result
            return value, found
        at = iter(each)  # the walk meets the texts in the order `texts` listed them

        def screened(text: str) -> str:
            findings = next(at)
            return redact(text, findings) if findings else text

        return each_scalar(value, screened), found

    # -- out ------------------------------------------------------------------------------------------------

    def screen(self, text: str, partial: bool = False) -> str:
        """Model text before it leaves: refused (502) when it matches `deny_output` or holds personal data
        under `pii: block`, redacted under `pii: redact`. In a `partial` text (a stream's window) a finding
        that reaches its end may go on in the next delta: it is judged when the text after it arrives."""
        if self.policy.deny_output and denied(text, self.policy.deny_output):
            self.audit.record(Decision("deny_output", "block", "out"))
            raise GuardrailBlocked(
                "the answer was withheld by the deny_output guardrail", guardrail="deny_output", status=502
            )
        if self.policy.pii == "off":
            return text
        findings = self.detector.find(text)
        if partial:
            findings = [f for f in findings if f.end < len(text)]
        if not findings:
            return text
        counts = entity_counts([f.entity for f in findings])
        if self.policy.pii == "block":
            self.audit.record(Decision("pii", "block", "out", counts))
            raise GuardrailBlocked(
                f"the answer was withheld by the pii guardrail: it held personal data ({_listed(counts)})",
                guardrail="pii",
                status=502,
            )
        self.audit.record(Decision("pii", "redact", "out", counts))
        return redact(text, findings)

    def check_citation(self, text: str) -> None:
        """422 `citation_missing` when citations are required and `text` cites none of the sources."""
        if self.policy.require_citation and not cites(text, self.sources):
            self.audit.record(Decision("require_citation", "block", "out", reason="citation_missing"))
            raise GuardrailRefusal(
                "the answer cites none of the retrieved sources, and this context requires a citation",
                guardrail="require_citation",
                status=422,
                code="citation_missing",
            )

    def check_answer(self, text: str) -> str:
        """A whole answer, screened and its citation checked."""
        if not self.policy.checks_output:
            return text
        text = self.screen(text)
        self.check_citation(text)
        return text

    def check_generation(self, generation: Generation) -> Generation:
        """A whole generation: its text and every other choice's (n > 1) checked as an answer."""
        if not self.policy.checks_output:
            return generation
        more = tuple(self._checked_choice(choice) for choice in generation.more)
        return self._checked_choice(replace(generation, more=more))

    def _checked_choice(self, choice: _C) -> _C:
        """A choice checked as an answer; its logprobs, which spell its tokens, go only with a text left as is."""
        text = self.check_answer(choice.text)
        if text == choice.text:
            return choice
        return replace(choice, text=text, logprobs=None)

    def check_stream(self, stream: TokenStream) -> TokenStream:
        """A streamed answer behind the hold-back window; a refusal mid-stream ends it with an error event."""
        if not self.policy.checks_output:
            return stream
        finish = self.check_citation if self.policy.require_citation else None
        return held_back(stream, self.screen, finish, HOLD_BACK if self.policy.deny_output else 0)

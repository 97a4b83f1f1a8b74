"""The assertions a case may make about its answer, one function each, keyed by the name a case uses.

A check returns None when the expectation holds, or a message saying what was expected and what came back;
it raises `Skipped` when it cannot be judged in this run (no embedder, no token count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from app.evaluation.cases import Case, Observation
from app.evaluation.similarity import Embeddings, cosine

EXCERPT_CHARS = 200
DEFAULT_MIN_SIMILARITY = 0.8


class Skipped(Exception):
    """An assertion that cannot be judged in this run; the message says why."""


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """An answer on one line for messages: a long one as its start and its end, where prompts put the user's turn."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else f"{flat[: limit // 2]} … {flat[-(limit // 2) :]}")


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _folded(case: Case, text: str) -> str:
    return text.casefold() if case.spec.get("ignore_case") else text


def _contains(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    missing = [s for s in _listed(value) if _folded(case, s) not in _folded(case, seen.text)]
    return f"expected the answer to contain {missing!r}; got {excerpt(seen.text)}" if missing else None


def _not_contains(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    found = [s for s in _listed(value) if _folded(case, s) in _folded(case, seen.text)]
    return f"expected the answer not to contain {found!r}; got {excerpt(seen.text)}" if found else None


def _regex(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    flags = re.IGNORECASE if case.spec.get("ignore_case") else 0
    unmatched = [p for p in _listed(value) if not re.search(p, seen.text, flags)]
    return f"expected a match for {unmatched!r}; got {excerpt(seen.text)}" if unmatched else None


def _cites(source: str, wanted: str) -> bool:
    return source == wanted or source.endswith("/" + wanted)


def _sources(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    missing = [w for w in _listed(value) if not any(_cites(s, w) for s in seen.sources)]
    if not missing:
        return None
    return f"expected the sources {missing!r} to be cited; the answer cited {seen.sources or 'none'}"


def _latency(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if seen.latency_ms <= value:
        return None
    return f"expected an answer within {value} ms; it took {seen.latency_ms:.0f} ms"


def _completion_tokens(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if seen.model is None:
        raise Skipped("max_completion_tokens: no model was called (render-only)")
    tokens = seen.usage.completion_tokens if seen.usage else None
    if tokens is None:
        raise Skipped("max_completion_tokens: the model endpoint reported no completion token count")
    return f"expected at most {value} completion tokens; the model used {tokens}" if tokens > value else None


def parse_json_answer(text: str) -> Any:
    """The answer as JSON; a Markdown code fence around it (as chat models like to add) is allowed."""
    fenced = re.fullmatch(r"\s*```[A-Za-z]*\s*\n(.*?)\n\s*```\s*", text, re.DOTALL)
    return json.loads(fenced.group(1) if fenced else text)


def _json_schema(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    try:
        document = parse_json_answer(seen.text)
    except ValueError as exc:
        return f"expected a JSON answer; it does not parse ({exc}): {excerpt(seen.text)}"
    error = best_match(Draft202012Validator(value).iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the answer"
    return f"expected JSON matching expect_json_schema; at {where}: {error.message}"


def _similar(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if embeddings is None:
        raise Skipped("similar_to: needs embeddings, and no embedder is configured")
    similarity = cosine(embeddings.of(seen.text), embeddings.of(value))
    minimum = case.spec.get("min_similarity", DEFAULT_MIN_SIMILARITY)
    if similarity >= minimum:
        return None
    return f"expected similarity ≥ {minimum} to {excerpt(value, 80)}; got {similarity:.3f} for {excerpt(seen.text)}"


def _blocked(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if seen.blocked == value:
        return None
    if seen.blocked:
        return f"expected the {value} guardrail to refuse; the {seen.blocked} guardrail did"
    return f"expected the {value} guardrail to refuse; it passed, answering {excerpt(seen.text)}"


def _redacted(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    missing = [entity for entity in _listed(value) if entity not in seen.redacted]
    if not missing:
        return None
    return f"expected {missing!r} to be redacted; the guardrails redacted {list(seen.redacted) or 'nothing'}"


def _tool_calls(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if seen.tool_calls is None:
        raise Skipped("expect_tool_calls: no model was called (render-only)")
    missing = [name for name in _listed(value) if name not in seen.tool_calls]
    return f"expected calls of {missing!r}; the answer called {seen.tool_calls or 'no tool'}" if missing else None


def _no_tool_calls(value: Any, case: Case, seen: Observation, embeddings: Embeddings | None) -> str | None:
    if seen.tool_calls is None:
        raise Skipped("expect_no_tool_calls: no model was called (render-only)")
    return f"expected no tool calls; the answer called {seen.tool_calls}" if seen.tool_calls else None


Check = Callable[[Any, Case, Observation, Embeddings | None], str | None]
ASSERTIONS: dict[str, Check] = {
    "expect_contains": _contains,
    "expect_not_contains": _not_contains,
    "expect_regex": _regex,
    "expect_sources": _sources,
    "max_latency_ms": _latency,
    "max_completion_tokens": _completion_tokens,
    "expect_json_schema": _json_schema,
    "similar_to": _similar,
    "expect_blocked": _blocked,
    "expect_redacted": _redacted,
    "expect_tool_calls": _tool_calls,
    "expect_no_tool_calls": _no_tool_calls,
}

"""Builtin tools: what the runtime itself can do for the model; `memory_search` searches the context's memory.

The search is the request's own (`CallContext.search`): the context's memory component, within the caller's
tenant, exactly as retrieval before the prompt is.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import ContexisError
from app.names import MAX_TOP_K
from app.tools.base import INVALID, ArgumentCheck, CallContext, ToolResult, failure, function_definition

MEMORY_SEARCH_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "description": "What to look for, in plain words."},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "description": "How many matches."},
    },
    "required": ["query"],
    "additionalProperties": False,
}
DEFAULT_TOP_K = 3


class MemorySearch:
    """`builtin: memory_search`: the best matches of the context's memory for the model's query."""

    kind = "builtin"
    name = "memory_search"

    def __init__(self, spec: dict[str, Any]) -> None:
        self.description: str = spec.get(
            "description", "Search this assistant's documents; answers the best matching passages with their source."
        )
        self._check = ArgumentCheck(MEMORY_SEARCH_PARAMETERS)

    def definition(self) -> dict[str, Any]:
        return function_definition(self.name, self.description, MEMORY_SEARCH_PARAMETERS)

    def call(self, arguments: dict[str, Any], context: CallContext) -> ToolResult:
        problem = self._check.problem(arguments)
        if problem:
            return failure(problem, INVALID)
        if context.search is None:
            return failure("this context has no memory component to search")
        try:
            matches = context.search(arguments["query"], int(arguments.get("top_k", DEFAULT_TOP_K)))
        except ContexisError as exc:
            return failure(f"memory search failed ({exc.code})")
        return ToolResult(orjson.dumps({"results": matches}).decode())


BUILTINS = {MemorySearch.name: MemorySearch}

"""What every kind of tool shares: the call's context, its result, argument checks and `${VAR}` expansion.

A tool's failure is never a failed request: it is a `ToolResult` the model reads (`{"error": ..., "status": ...}`),
so the model may correct itself or answer without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app.contexts import ENV_REFERENCE

OK, ERROR, TIMEOUT, INVALID = "ok", "error", "timeout", "invalid"
OUTCOMES = (OK, ERROR, TIMEOUT, INVALID)
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

# A memory search of the request's tenant: (query, top_k) -> the matches as dicts.
Search = Callable[[str, int], list[dict[str, Any]]]


@dataclass(frozen=True)
class CallContext:
    """Who a call is for and until when: the request's id and tenant (sent to the tool), its deadline."""

    request_id: str
    tenant_id: str
    deadline_at: float  # time.monotonic()
    search: Search | None = None

    def remaining(self) -> float:
        return self.deadline_at - time.monotonic()


@dataclass(frozen=True)
class ToolResult:
    """What the model reads back (`content`) and how the call ended (`outcome`, one of `OUTCOMES`)."""

    content: str
    outcome: str = OK

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def failure(message: str, outcome: str = ERROR, status: int | None = None) -> ToolResult:
    """A failed call as the model sees it: `{"error": message}`, with the HTTP status when there was one."""
    body: dict[str, Any] = {"error": message}
    if status is not None:
        body["status"] = status
    return ToolResult(orjson.dumps(body).decode(), outcome)


class Tool(Protocol):
    """A function the model may call: its OpenAI definition, and the call itself (which never raises)."""

    name: str
    kind: str  # http | mcp | builtin: the metric's and span's word for where it runs

    def definition(self) -> dict[str, Any]: ...

    def call(self, arguments: dict[str, Any], context: CallContext) -> ToolResult: ...


def function_definition(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool as OpenAI's chat completions offer it to the model."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


class ArgumentCheck:
    """A tool's parameters schema, compiled once; a schema that is not one (an MCP server's) checks nothing."""

    def __init__(self, schema: dict[str, Any]) -> None:
        try:
            Draft202012Validator.check_schema(schema)
            self._validator: Draft202012Validator | None = Draft202012Validator(schema)
        except SchemaError:
            self._validator = None

    def problem(self, arguments: Any) -> str:
        """What is wrong with `arguments` ("" when they fit), as the model should read it."""
        if not isinstance(arguments, dict):
            return "arguments: must be a JSON object"
        if self._validator is None:
            return ""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
        return "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}" for e in errors)


def expand_env(text: str) -> str:
    """`${VAR}` replaced by the environment's value (validation made sure each is set)."""
    return ENV_REFERENCE.sub(lambda match: os.environ.get(match.group(1), ""), text)


def decode_arguments(raw: Any) -> tuple[dict[str, Any] | None, str]:
    """A tool call's `arguments` (JSON text on the wire) as a mapping, or why they cannot be one."""
    if isinstance(raw, dict):
        return raw, ""
    if raw in (None, ""):
        return {}, ""
    try:
        value = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None, "arguments: not valid JSON"
    if not isinstance(value, dict):
        return None, "arguments: must be a JSON object"
    return value, ""

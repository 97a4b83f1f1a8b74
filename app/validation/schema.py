"""JSON Schema checks: a request's compiled check, explained by jsonschema when it rejects (`SchemaCheck`, errors
naming the field and the rule, never the value), and the validator for schemas someone else wrote
(`local_validator`: `$ref`s resolve within the schema, never over the network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry

from app.errors import BadRequest
from app.names import NAME_RULE
from app.validation.fields import _TOOL_CALLS_RULE, _TOOL_RESULT_RULE, _without_turn_rules


def local_validator(schema: dict[str, Any]) -> Validator:
    """A validator for a schema someone else wrote (a client's `response_format`, an MCP server's tool), whose
    `$ref`s resolve within it and the meta-schemas only: jsonschema's default registry fetches any URL a `$ref`
    names, which would let a request reach a host the operator did not name."""
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, registry=Registry())


class SchemaCheck:
    """A JSON Schema checked by a compiled validator on the hot path; jsonschema only explains a rejection.

    jsonschema is the reference: it decides what a rejected instance's errors are, and an instance the
    compiled check rejects but jsonschema accepts is accepted.
    """

    def __init__(self, schema: dict[str, Any], rules: Callable[[Any], bool] | None = None) -> None:
        # `rules` checks in Python what the compiled check leaves out (the per-message rules, see above).
        self._fast = fastjsonschema.compile(_without_turn_rules(schema) if rules else schema)
        self._rules = rules
        self._explain = Draft202012Validator(schema)

    def errors(self, instance: Any) -> list[ValidationError]:
        """Every violation, ordered by where it is; [] when `instance` is valid."""
        try:
            self._fast(instance)
            if self._rules is None or self._rules(instance):
                return []
        except fastjsonschema.JsonSchemaException:
            pass
        return sorted(self._explain.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])


def unquoted(error: ValidationError) -> str:
    """jsonschema's message for `error` without the value it quotes (`'...' is not of type 'object'`): a client's
    text or a model's answer may hold personal data or a secret, so an error names the field and the rule only."""
    message, quoted = error.message, repr(error.instance)
    if message.startswith(quoted + " "):
        return "the value" + message[len(quoted) :]
    if message.endswith(" " + quoted):  # `False schema does not allow ...`
        return message[: -len(quoted)] + "the value"
    return message


def _describe(error: ValidationError) -> str:
    if error.schema in (_TOOL_RESULT_RULE, _TOOL_CALLS_RULE) and error.context:
        error = error.context[-1]
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{where}: not a valid name ({NAME_RULE})"
    if error.validator == "contains":
        return f"{where}: no message has the role user (its last one is the input)"
    if error.validator == "anyOf":
        explained = error.schema.get("$comment") if isinstance(error.schema, dict) else None
        if explained:  # a rule across fields, explained by the schema itself
            return f"{where}: {explained}"
        if error.context:  # the alternative that got furthest, named where it failed
            return _describe(max(error.context, key=lambda e: len(e.path)))
    return f"{where}: {unquoted(error)}"


def check_body(schema: SchemaCheck, body: Any) -> None:
    """`BadRequest` naming every field `body` gets wrong, the first as OpenAI's `param`."""
    errors = schema.errors(body)
    if errors:
        first = errors[0].absolute_path
        raise BadRequest(
            "; ".join(_describe(e) for e in errors),
            code="invalid_request",
            param=str(first[0]) if first else None,
        )

"""Contexts: the YAML files that give an agent its persona, guardrails and tools.

One discovery rule, shared by the server (chat, `/v1/models`, `/readyz`), `ctx context validate` and
`ctx test`: a context named `Name` lives at `contexts/<Name>/<name>.ctx` (the folder's name in lower case, or
exactly as the folder spells it), and its `name:` is the folder's; a tenant's copy at
`contexts/tenants/<tenant>/<Name>.ctx` (`name: Name`) wins. Any other `.ctx` file is a validation error saying
why it is not served, unless a served context pulls it in: `extends` and `include` pull other files in (maps
deep-merged, the including file wins). Parsed contexts are cached and re-read only when one of their files
changes on disk.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from jsonschema import Draft202012Validator, FormatChecker

from app.errors import ContextInvalid, NotFound
from app.names import MAX_TOP_K, NAME_PATTERN, is_safe_name

# The guardrails a context can set and the personal data types they know (`app.guardrails` enforces them).
GUARDRAILS = ("pii", "prompt_injection", "require_citation", "deny_output")
PII_ENTITIES = ("CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE", "US_SSN")

MAX_DEPTH = 5
DEFAULT_DRIFT_THRESHOLD = 0.85
DEFAULT_TEXT_DRIFT_THRESHOLD = 0.8

_STRINGS = {"type": "array", "items": {"type": "string"}}
_RATIO = {"type": "number", "minimum": 0, "maximum": 1}


def _one_or_more(item: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


# A test case of `testing.cases` (`ctx test`): what it sends through the chat pipeline, what it expects
# of the answer, and the options of those expectations. Unknown keys are errors, so a misspelt assertion
# cannot pass silently.
CASE_REQUEST_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1},
    "description": {"type": "string"},
    "mode": {"enum": ["prompt", "answer", "model"]},
    "input": {"type": "string"},
    "data": {"type": "object"},
    "query": {"type": "string"},
    "top_k": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_K},
    "tenant_id": {"type": "string", "pattern": NAME_PATTERN},
    "component": {"type": "string", "pattern": NAME_PATTERN},
    "prompt_file": {"type": "string", "pattern": NAME_PATTERN},
    "messages": {"type": "array", "items": {"type": "object"}},
}
CASE_ASSERTIONS: dict[str, Any] = {
    "expect_contains": _one_or_more({"type": "string"}),
    "expect_not_contains": _one_or_more({"type": "string"}),
    "expect_regex": _one_or_more({"type": "string", "format": "regex"}),
    "expect_sources": _one_or_more({"type": "string", "minLength": 1}),
    "max_latency_ms": {"type": "number", "exclusiveMinimum": 0},
    "max_completion_tokens": {"type": "integer", "minimum": 1},
    # The value must itself be a JSON Schema (checked against the 2020-12 meta-schema, shipped offline).
    "expect_json_schema": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
    "similar_to": {"type": "string", "minLength": 1},
    # The case is refused by this guardrail / its personal data of this type is replaced (docs/security.md).
    "expect_blocked": {"enum": list(GUARDRAILS)},
    "expect_redacted": _one_or_more({"enum": list(PII_ENTITIES)}),
    # The context tools the answer called (by name, in any order, each at least once), or that it called none.
    "expect_tool_calls": _one_or_more({"type": "string", "minLength": 1}),
    "expect_no_tool_calls": {"const": True},
}
CASE_OPTIONS: dict[str, Any] = {"ignore_case": {"type": "boolean"}, "min_similarity": _RATIO}
TESTING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "drift_threshold": _RATIO,
        "text_drift_threshold": _RATIO,
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {**CASE_REQUEST_FIELDS, **CASE_ASSERTIONS, **CASE_OPTIONS},
                "dependentRequired": {"min_similarity": ["similar_to"]},
            },
        },
    },
}
# Tools (`tools:`): a function the runtime calls over HTTP, every tool of an MCP server, or a builtin. A tool's
# name is what the model calls it by, so it follows OpenAI's rule for function names.
BUILTIN_TOOLS = ("memory_search",)
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_TOOL_TIMEOUT = 10.0
DEFAULT_MAX_TOOL_STEPS = 5
_TOOL_NAME = {"type": "string", "pattern": TOOL_NAME_PATTERN}
_TOOL_URL = {"type": "string", "pattern": r"^https?://[^/?#\s]+(/[^\s#]*)?$"}
_TOOL_HEADERS = {"type": "object", "additionalProperties": {"type": "string"}}
_TOOL_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "maximum": 300}
HTTP_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "http"],
    "properties": {
        "name": _TOOL_NAME,
        "description": {"type": "string"},
        # The arguments' JSON Schema, as the model is offered it and as its calls are checked against.
        "parameters": {"$ref": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
        "http": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "method": {"enum": list(HTTP_METHODS)},
                "url": _TOOL_URL,
                "headers": _TOOL_HEADERS,
                "timeout": _TOOL_TIMEOUT,
            },
        },
    },
}
MCP_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mcp"],
    "properties": {
        "mcp": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": _TOOL_URL,
                "tools": {"type": "array", "items": _TOOL_NAME, "minItems": 1},
                "headers": _TOOL_HEADERS,
                "timeout": _TOOL_TIMEOUT,
            },
        }
    },
}
BUILTIN_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["builtin"],
    "properties": {"builtin": {"enum": list(BUILTIN_TOOLS)}, "description": {"type": "string"}},
}
TOOL_KINDS = {"http": HTTP_TOOL_SCHEMA, "mcp": MCP_TOOL_SCHEMA, "builtin": BUILTIN_TOOL_SCHEMA}
TOOL_SCHEMA: dict[str, Any] = {
    "type": ["object", "string"],
    # Each kind is checked by its own schema, picked by its key, so an error names the field at fault; an
    # object with none of the keys is reported by `_check_tools`.
    "allOf": [
        {"if": {"type": "string"}, "then": {"enum": list(BUILTIN_TOOLS)}},
        *({"if": {"type": "object", "required": [kind]}, "then": schema} for kind, schema in TOOL_KINDS.items()),
    ],
}

# A context's model chain (`app.routing.chain`): its model, the fallbacks tried in order, sampling defaults.
_MODEL_ID = {"type": "string", "minLength": 1, "maxLength": 300, "pattern": r"^[^\s]+$"}
_MODEL_ENDPOINT: dict[str, Any] = {
    "endpoint": {"type": "string", "pattern": r"^https?://[^\s/?#]+(/[^\s?#]*)?$"},
    "token_env": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
    "api": {"enum": ["text-generation", "chat-completion", "auto"]},
}
# A model id on HF_ENDPOINT, or one on an endpoint of its own (if/then/else, so errors name the field at fault).
_MODEL_ENTRY = {
    "type": ["string", "object"],
    "if": {"type": "string"},
    "then": _MODEL_ID,
    "else": {
        "additionalProperties": False,
        "required": ["id"],
        "properties": {"id": _MODEL_ID, **_MODEL_ENDPOINT},
        "dependentRequired": {"token_env": ["endpoint"], "api": ["endpoint"]},
    },
}
_SAMPLING: dict[str, Any] = {
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
    "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
}
MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id"],
    "properties": {
        "id": _MODEL_ID,
        **_MODEL_ENDPOINT,
        "fallbacks": {"type": "array", "items": _MODEL_ENTRY, "maxItems": 16},
        "params": {"type": "object", "additionalProperties": False, "properties": _SAMPLING},
    },
    "dependentRequired": {"token_env": ["endpoint"], "api": ["endpoint"]},
}
# The response cache (docs/cache.md): seconds an answer is reused, the cosine of a similar question's reuse.
CACHE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ttl": {"type": "number", "minimum": 0, "maximum": 31536000},
        "semantic": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "max_temperature": {"type": "number", "minimum": 0, "maximum": 2},
    },
}
CONTEXT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "version": {"type": ["string", "number"]},
        "description": {"type": "string"},
        "extends": {"type": "string", "minLength": 1},
        "include": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "role": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"persona": {"type": "string"}, "capabilities": _STRINGS, "limitations": _STRINGS},
        },
        "tools": {"type": "array", "items": TOOL_SCHEMA},
        "guardrails": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tone": {"type": "string"},
                "format": {"type": "string"},
                **_SAMPLING,
                # Guardrails that act (docs/security.md); each unset one is the environment's default.
                # YAML reads a bare `off` as false: both mean off.
                "pii": {"enum": ["off", False, "redact", "block"]},
                "pii_entities": {"type": "array", "items": {"enum": list(PII_ENTITIES)}, "minItems": 1},
                "prompt_injection": {"enum": ["off", False, "flag", "block"]},
                "require_citation": {"type": "boolean"},
                "deny_output": {"type": "array", "items": {"type": "string", "minLength": 1, "format": "regex"}},
                # Model calls in one request's tool loop; past them the request fails (`tool_steps_exceeded`).
                "max_tool_steps": {"type": "integer", "minimum": 1, "maximum": 20},
                # The most a client may ask for on the OpenAI surface; without it, up to the bounds above.
                "client_max": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "memory": {"type": "object"},
        "model": MODEL_SCHEMA,
        "testing": TESTING_SCHEMA,
        "cache": CACHE_SCHEMA,
    },
}
_file_validator = Draft202012Validator(CONTEXT_SCHEMA, format_checker=FormatChecker())
_resolved_validator = Draft202012Validator({"type": "object", "required": ["name"]})

Signature = tuple[tuple[str, int, int, int], ...]


class Served(NamedTuple):
    """A context file the server serves: the name requests use, the tenant it is for ("" shared), the file."""

    name: str
    tenant: str
    path: Path


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge maps recursively; `override` wins, lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ContextStore:
    """Finds, merges, validates and caches the contexts of one project root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.contexts_dir = self.root / "contexts"
        self._cache: dict[Path, tuple[Signature, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def path_for(self, name: str, tenant_id: str = "") -> Path:
        """The file that defines `name` for `tenant_id` (the tenant's copy wins when present)."""
        tenant_file = self._tenant_file(name, tenant_id)
        return tenant_file or self._shared_path(name)

    def _tenant_file(self, name: str, tenant_id: str) -> Path | None:
        if not tenant_id:
            return None
        path = self.contexts_dir / "tenants" / tenant_id / f"{name}.ctx"
        return path if path.is_file() else None

    def _shared_path(self, name: str) -> Path:
        """`contexts/<Name>/<name>.ctx`, or `<Name>.ctx` spelt as the folder when only that one exists."""
        lower = _shared_file(self.contexts_dir, name)
        if name.islower() or lower.is_file():
            return lower
        exact = self.contexts_dir / name / f"{name}.ctx"
        return exact if exact.is_file() else lower

    def resolve(self, name: str, tenant_id: str = "") -> dict[str, Any]:
        """The merged, validated context; `NotFound` when it does not exist."""
        path = self._tenant_file(name, tenant_id)
        if path is None:
            # The hot path: a cached shared context costs the stats of its signature, nothing more.
            cached = self._cached(_shared_file(self.contexts_dir, name))
            if cached is not None:
                return cached
            path = self._shared_path(name)
        cached = self._cached(path)
        if cached is not None:
            return cached
        if not path.is_file():
            raise NotFound(f"context {name!r} not found", code="context_not_found")
        return self.load(path)

    def load(self, path: Path, *, last_good: bool = True) -> dict[str, Any]:
        """Load one context file with everything it extends or includes, from cache when unchanged.

        A file rewritten in place is empty or cut short for a moment: while a changed file fails to load,
        the last version that loaded is served (``last_good``), so requests never see the half-written
        one; ``problems`` (``/readyz``, ``ctx context validate``) asks with ``last_good=False`` and names it.
        """
        cached = self._cached(path)
        if cached is not None:
            return cached
        try:
            return self._load(path)
        except ContextInvalid:
            previous = self._cache.get(path)
            if last_good and previous is not None:
                return previous[1]
            raise

    def _load(self, path: Path) -> dict[str, Any]:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            # Named as asked for: where the link leads is outside the root and must not be shown.
            raise ContextInvalid(f"{self._rel(path)}: file is outside the project root")
        files: list[Path] = []
        context = self._load_file(resolved, stack=(), files=files)
        errors = list(_resolved_validator.iter_errors(context))
        if errors:
            raise ContextInvalid(f"{self._rel(resolved)}: name: required field is missing")
        expected = self._served_name(path)
        if context["name"] != expected:
            where = "its file's name" if path.parent.parent == self.contexts_dir / "tenants" else "its folder's name"
            raise ContextInvalid(
                f"{self._rel(path)}: name: {context['name']!r} must equal {where} {expected!r}, the name requests use"
            )
        _check_case_names(self._rel(resolved), context)
        _check_tools(self._rel(resolved), context)
        _check_model(self._rel(resolved), context)
        with self._lock:
            # Keyed by the path as asked for, so a hit costs one stat per file and no realpath walk;
            # that path is in the signature too (once: it is most often the first file itself), and stat
            # follows it if a symlink is re-pointed.
            self._cache[path] = (_signature(list(dict.fromkeys([path, *files]))), context)
        return context

    def _cached(self, path: Path) -> dict[str, Any] | None:
        cached = self._cache.get(path)
        return cached[1] if cached and _unchanged(cached[0]) else None

    def _served_name(self, path: Path) -> str:
        """The name a request uses for a served file: its folder's, or a tenant file's own."""
        return path.stem if path.parent.parent == self.contexts_dir / "tenants" else path.parent.name

    def discover(self) -> tuple[list[Served], list[str]]:
        """Every file the server serves, and `file: reason` for each `.ctx` file it would not serve.

        What a folder may hold is judged here once, for the loader, `/v1/models`, `/readyz`, `ctx context
        validate` and `ctx test` alike. A `.ctx` file that a served context extends or includes is no fault.
        """
        if not self.contexts_dir.is_dir():
            return [], []
        served: list[Served] = []
        other: list[tuple[Path, str]] = []
        for entry in sorted(self.contexts_dir.iterdir()):
            if entry.name.startswith(".") or entry.name == "tenants":
                continue
            if not entry.is_dir():
                if entry.suffix == ".ctx":
                    folder = f"contexts/{entry.stem}/{entry.stem.lower()}.ctx"
                    other.append((entry, f"a context lives in a folder of its name: {folder}"))
                continue
            files = sorted(entry.glob("*.ctx"))
            if not is_safe_name(entry.name):
                other.extend(
                    (f, f"folder {entry.name!r} is not a context name (1-128 of A-Z a-z 0-9 _ . -)") for f in files
                )
                continue
            path = self.path_for(entry.name)
            if path.is_file():
                served.append(Served(entry.name, "", path))
                why = f"folder {entry.name!r} serves {path.name}: one context per folder (extend or include the rest)"
            else:
                why = f"folder {entry.name!r} serves {entry.name.lower()}.ctx, which does not exist"
            other.extend((f, why) for f in files if f != path)
        for tenant in sorted(self.contexts_dir.glob("tenants/*")):
            files = sorted(tenant.glob("*.ctx")) if tenant.is_dir() else []
            for path in files:
                if not is_safe_name(tenant.name):
                    other.append(
                        (path, f"tenant folder {tenant.name!r} is not a tenant name (1-128 of A-Z a-z 0-9 _ . -)")
                    )
                elif not is_safe_name(path.stem):
                    other.append((path, f"{path.stem!r} is not a context name (1-128 of A-Z a-z 0-9 _ . -)"))
                else:
                    served.append(Served(path.stem, tenant.name, path))
        pulled_in = self._pulled_in(served)
        unserved = [f"{self._rel(path)}: not served: {why}" for path, why in other if path.resolve() not in pulled_in]
        return served, unserved

    def _pulled_in(self, served: list[Served]) -> set[Path]:
        """The files that served contexts extend or include (those that load)."""
        files: set[Path] = set()
        for entry in served:
            try:
                self.load(entry.path)
            except ContextInvalid:
                continue
            signature = self._cache[entry.path][0]
            files.update(Path(name).resolve() for name, *_ in signature[1:])
        return files

    def names(self) -> list[str]:
        """The shared contexts a request can name (valid or not: `resolve` says what is wrong)."""
        return [entry.name for entry in self.discover()[0] if not entry.tenant]

    def available(self, tenant_id: str = "") -> dict[str, Path]:
        """The valid contexts `tenant_id` may name, each with the file that defines it (tenant overrides included)."""
        served = self.discover()[0]
        chosen: dict[str, Path] = {}
        for entry in served:
            if not entry.tenant:
                chosen.setdefault(entry.name, entry.path)
        for entry in served if tenant_id else []:
            if entry.tenant == tenant_id:
                chosen[entry.name] = entry.path  # the tenant's copy wins, valid or not
        found: dict[str, Path] = {}
        for name, path in sorted(chosen.items()):
            try:
                self.load(path)
            except ContextInvalid:
                continue  # /readyz names broken files; a listing shows what can answer
            found[name] = path
        return found

    def problems(self) -> list[str]:
        """`file: field: problem` for each invalid context and each file not served (empty when sound)."""
        if not self.contexts_dir.is_dir():
            return [f"{self.contexts_dir}: project has no contexts directory"]
        served, found = self.discover()
        for entry in served:
            try:
                self.load(entry.path, last_good=False)
            except ContextInvalid as exc:
                found.append(exc.message)
        return sorted(found)

    def _rel(self, path: Path) -> str:
        """How messages (and the public /readyz) name a file: relative to the root, never a path outside it."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return path.name

    def _load_file(self, path: Path, stack: tuple[Path, ...], files: list[Path]) -> dict[str, Any]:
        rel = self._rel(path)
        if path in stack:
            chain = " -> ".join(self._rel(p) for p in (*stack, path))
            raise ContextInvalid(f"{rel}: extends/include: cycle {chain}")
        if len(stack) > MAX_DEPTH:
            raise ContextInvalid(f"{rel}: extends/include: nested deeper than {MAX_DEPTH} levels")
        raw = self._read(path)
        files.append(path)
        errors = sorted(_file_validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            raise ContextInvalid("; ".join(f"{rel}: {_field(e)}: {e.message}" for e in errors))
        merged: dict[str, Any] = {}
        parents = ([raw["extends"]] if "extends" in raw else []) + raw.get("include", [])
        for reference in parents:
            parent = self._reference(path, reference)
            merged = deep_merge(merged, self._load_file(parent, (*stack, path), files))
        own = {k: v for k, v in raw.items() if k not in ("extends", "include")}
        return deep_merge(merged, own)

    def _reference(self, path: Path, reference: str) -> Path:
        target = (path.parent / reference).resolve()
        if not target.is_relative_to(self.root):
            raise ContextInvalid(f"{self._rel(path)}: extends/include: {reference!r} is outside the project root")
        if not target.is_file():
            raise ContextInvalid(f"{self._rel(path)}: extends/include: {reference!r} not found")
        return target

    def _read(self, path: Path) -> dict[str, Any]:
        rel = self._rel(path)
        if not path.resolve().is_relative_to(self.root):
            raise ContextInvalid(f"{rel}: file is outside the project root")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "document"
            raise ContextInvalid(f"{rel}: {where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ContextInvalid(f"{rel}: cannot be read ({exc.__class__.__name__})") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ContextInvalid(f"{rel}: document: must be a mapping, not {type(data).__name__}")
        return data


def _check_case_names(rel: str, context: dict[str, Any]) -> None:
    """Baselines key on case names, so two cases of one context may not share one."""
    seen: set[str] = set()
    for number, case in enumerate(context.get("testing", {}).get("cases", []), start=1):
        name = case.get("name", f"case-{number}")
        if name in seen:
            raise ContextInvalid(f"{rel}: testing.cases.{number - 1}.name: {name!r} is used by an earlier case")
        seen.add(name)


# `{name}` in a tool's URL: an argument filling a path segment. `${NAME}` in a URL or header: the environment's.
PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def tool_entries(context: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each `tools` entry of a (validated) context as (its kind, its mapping); `- memory_search` is a builtin."""
    entries = []
    for entry in context.get("tools", []):
        spec = {"builtin": entry} if isinstance(entry, str) else entry
        kind = next((kind for kind in TOOL_KINDS if kind in spec), "")
        entries.append((kind, spec))
    return entries


def _check_tools(rel: str, context: dict[str, Any]) -> None:
    """What a schema cannot say of `tools`: each entry's kind, names used once, the URL's arguments declared and
    in its path only, and every `${VAR}` set in the environment (an unset one would send an empty secret)."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, (kind, spec) in enumerate(tool_entries(context)):
        where = f"{rel}: tools.{number}"
        if not kind:
            problems.append(f"{where}: needs one of {', '.join(TOOL_KINDS)}")
            continue
        body = spec[kind] if kind != "builtin" else {}
        names = [spec["name"]] if kind == "http" else body.get("tools", []) if kind == "mcp" else [spec["builtin"]]
        for name in names:
            if name in seen:
                problems.append(f"{where}: tool {name!r} is already defined by tools.{seen[name]}")
            seen.setdefault(name, number)
        texts = [("url", body.get("url", "")), *((f"headers.{k}", v) for k, v in body.get("headers", {}).items())]
        for field, text in texts:
            for variable in ENV_REFERENCE.findall(text):
                if not os.environ.get(variable):
                    problems.append(f"{where}.{kind}.{field}: ${{{variable}}} is not set in the environment")
        if kind == "http":
            problems += _check_url_template(f"{where}.http.url", body["url"], spec.get("parameters", {}))
    if problems:
        raise ContextInvalid("; ".join(problems))


def _check_url_template(where: str, url: str, parameters: dict[str, Any]) -> list[str]:
    """A model's arguments may fill path segments only, never the scheme, host, port or query."""
    authority, _, path = url.partition("://")[2].partition("/")
    problems = []
    if PLACEHOLDER.search(authority):
        problems.append(f"{where}: the scheme, host and port are the operator's: no {{argument}} there")
    path, _, query = path.partition("?")
    if PLACEHOLDER.search(query):
        problems.append(f"{where}: {{argument}} may fill path segments only, not the query")
    declared = parameters.get("properties", {}) if isinstance(parameters, dict) else {}
    for name in PLACEHOLDER.findall(path):
        if name not in declared:
            problems.append(f"{where}: {{{name}}} is not a property of the tool's parameters")
    return problems


def _check_model(rel: str, context: dict[str, Any]) -> None:
    """What the schema cannot say of a merged `model:` section: no entry twice, a provider suffix only where a
    chat route reads it, and `params` within the guardrails' ceilings."""
    section = context.get("model")
    if section is None:
        return
    seen: set[tuple[str, str]] = set()
    for number, entry in enumerate([section, *section.get("fallbacks", [])]):
        where = "model" if number == 0 else f"model.fallbacks.{number - 1}"
        entry = {"id": entry} if isinstance(entry, str) else entry
        named = (entry["id"], entry.get("endpoint", "").rstrip("/"))
        if named in seen:
            raise ContextInvalid(f"{rel}: {where}: {entry['id']!r} is already in the chain")
        seen.add(named)
        api = entry.get("api", "auto")
        text_route = api == "text-generation" or (api == "auto" and not named[1].endswith("/v1"))
        if entry.get("endpoint") and ":" in entry["id"] and text_route:
            raise ContextInvalid(
                f"{rel}: {where}: {entry['id']!r} picks an Inference Provider, which only a chat-completion "
                "endpoint (.../v1) understands"
            )
    ceilings = (context.get("guardrails") or {}).get("client_max", {})
    for name, value in section.get("params", {}).items():
        if name in ceilings and value > ceilings[name]:
            raise ContextInvalid(
                f"{rel}: model.params.{name}: {value} is above guardrails.client_max.{name} ({ceilings[name]})"
            )


def _field(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "document"


@functools.lru_cache(maxsize=1024)
def _shared_file(contexts_dir: Path, name: str) -> Path:
    """A request names its context every time: the same Path, built once (and its hash computed once)."""
    return contexts_dir / name / f"{name.lower()}.ctx"


def _signature(files: list[Path]) -> Signature:
    stats = [(str(p), os.stat(p)) for p in files]
    return tuple((name, st.st_ino, st.st_mtime_ns, st.st_size) for name, st in stats)


def _unchanged(signature: Signature) -> bool:
    try:
        return all(
            (st := os.stat(name)).st_ino == ino and st.st_mtime_ns == mtime and st.st_size == size
            for name, ino, mtime, size in signature
        )
    except OSError:
        return False

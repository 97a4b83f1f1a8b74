"""What the schema cannot say of a merged context: case names used once, tools, the model chain.

Each check names the file and the field at fault, as the schema's errors do (`ContextStore` runs them after
merging, so a section an included file brings is checked too).
"""

from __future__ import annotations

import os
import re
from typing import Any

from app.contexts.schema import TOOL_KINDS
from app.errors import ContextInvalid


def check_case_names(rel: str, context: dict[str, Any]) -> None:
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


def check_tools(rel: str, context: dict[str, Any]) -> None:
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


def check_model(rel: str, context: dict[str, Any]) -> None:
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


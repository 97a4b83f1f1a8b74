"""Prompt templates: Jinja2 files under `prompts/<Component>/`, rendered in a sandbox.

Templates are compiled once and cached by Jinja; with `auto_reload` each use
checks the file's mtime, so an edited template is picked up without a restart.
`StrictUndefined` turns a variable the request did not send into a 422 that
names it, instead of silently rendering an empty string.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.errors import MissingVariable, NotFound, TemplateFailure

_UNDEFINED_NAME = re.compile(r"^'([^']+)' is undefined$")


class _RootedLoader(FileSystemLoader):
    """A loader that refuses files whose real path (symlinks followed) leaves the prompts directory."""

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(Path(self.searchpath[0]).resolve()):
            raise TemplateNotFound(template)
        return source, filename, uptodate


class PromptRenderer:
    """Renders `prompts/<component>/<prompt_file>` with the request's variables."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.prompts_dir = self.root / "prompts"
        # Immutable: templates cannot modify the cached context they are handed.
        self.env = ImmutableSandboxedEnvironment(
            loader=_RootedLoader(str(self.prompts_dir)),
            undefined=StrictUndefined,
            autoescape=False,
            auto_reload=True,
            cache_size=1000,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, component: str, prompt_file: str, variables: dict[str, Any]) -> str:
        """The rendered prompt; `NotFound`, `MissingVariable` or `TemplateFailure` otherwise."""
        name = f"{component}/{prompt_file}"
        rel = f"prompts/{name}"
        try:
            template = self.env.get_template(name)
        except TemplateNotFound:
            if not (self.prompts_dir / component).is_dir():
                message = f"component {component!r} has no prompts directory"
                raise NotFound(message, code="component_not_found") from None
            raise NotFound(f"prompt file {rel!r} not found", code="prompt_not_found") from None
        except TemplateSyntaxError as exc:
            raise TemplateFailure(f"{rel}:{exc.lineno}: {exc.message}") from None
        try:
            return template.render(variables)
        except UndefinedError as exc:
            missing = _UNDEFINED_NAME.match(exc.message or "")
            if missing and missing.group(1) not in variables:
                raise MissingVariable(
                    f"{rel} needs the variable {missing.group(1)!r}, which the request's data does not provide"
                ) from None
            raise TemplateFailure(f"{rel}:{_template_line(exc, template.filename)}: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - any failure inside a project's template is the template's
            detail = str(exc) or exc.__class__.__name__
            raise TemplateFailure(f"{rel}:{_template_line(exc, template.filename)}: {detail}") from None


def system_message(context: dict[str, Any]) -> str:
    """The system message of a chat completion: who the agent is, its tone and what it must not do.

    Chat models weigh the system role above the user's turn, so the context's persona and limits go
    there as well as into the rendered prompt (which remains the user message).
    """
    role = context.get("role") or {}
    lines = [f"You are {context['name']}. {role.get('persona', '')}".strip()]
    tone = (context.get("guardrails") or {}).get("tone")
    if tone:
        lines.append(f"Tone: {tone}.")
    if role.get("limitations"):
        lines.append("Limitations:")
        lines.extend(f"- {item}" for item in role["limitations"])
    return "\n".join(lines)


def _template_line(exc: BaseException, filename: str | None) -> int | str:
    """The template line Jinja wrote into the traceback, or '?' when it has none."""
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == filename]
    return lines[-1] or "?" if lines else "?"

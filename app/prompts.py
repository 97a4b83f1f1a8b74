"""Prompt templates: Jinja2 files under `prompts/<Component>/`, rendered in a sandbox.

Templates are compiled once and cached by Jinja; with `auto_reload` each use
checks the file's mtime, so an edited template is picked up without a restart.
Each compiled template knows its source's digest and the templates it names, so
the response cache can tell what a prompt will be without rendering it
(`PromptRenderer.version`).
`StrictUndefined` turns a variable the request did not send into a 422 that
names it, instead of silently rendering an empty string. What a render may cost
is bounded too: no value past CMP_MAX_PROMPT_CHARS is built (`BoundedSandbox`),
the prompt stops there, and a render ends after CMP_RENDER_TIMEOUT (`Watchdog`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import re
import string
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from app.errors import MissingVariable, NotFound, RenderLimit, TemplateFailure

_UNDEFINED_NAME = re.compile(r"^'([^']+)' is undefined$")
_UNDEFINED_DATA_KEY = re.compile(r"^'app\.prompts\.TemplateData object' has no attribute '([^']+)'$")


class TemplateData(dict[str, Any]):
    """The request's `data` as the template variable `data`, so `{{ data.key }}` works beside `{{ key }}`.

    A type of its own so a key the request did not send reads as the request's missing variable (a 422 naming
    `data.key`), not as a fault of the template.
    """

# A `%` conversion's width and precision, or `*` (taken from the arguments).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
# str methods whose first argument is the length of what they build.
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


@dataclass(frozen=True)
class TemplateVersion:
    """What tells a prompt's text without rendering it: with the values of the variables it `reads`, `digest` (of
    its templates' sources, the bound on its size and Jinja's release) renders one text only."""

    digest: str
    reads: tuple[str, ...]  # the variables its templates read (each name they use and do not set), sorted


class SourcedTemplate(Template):
    """A template that knows what it was compiled from (set by `_RootedLoader.load` from the very source it
    compiled), so the response cache can key on it instead of on its output."""

    own: TemplateVersion | None = None  # None when the same variables may render another text
    references: tuple[str, ...] | None = None  # the templates it names; None when a name is computed at render time

    def describe(self, source: str, max_chars: int) -> None:
        """Its own version and the templates it names, from the source it was compiled from."""
        ast = self.environment.parse(source)
        names = tuple(meta.find_referenced_templates(ast))
        self.references = None if None in names else tuple(name for name in names if name is not None)
        if not _repeatable(ast):
            return
        stamp = f"{jinja2.__version__}\x00{max_chars}\x00{source}"
        digest = hashlib.sha256(stamp.encode("utf-8", "surrogatepass")).hexdigest()
        self.own = TemplateVersion(digest, tuple(sorted(meta.find_undeclared_variables(ast))))


def _repeatable(ast: nodes.Template) -> bool:
    """Whether the same variables always render the same text: not with the `random` filter, nor with a `map` whose
    filter name may be computed at render time (any argument but a literal: `map(name)`, `map(*names)`,
    `map("map", "ran" ~ "dom")`). A literal holding "random" in any case anywhere is taken for the filter."""
    for node in ast.find_all(nodes.Filter):
        if node.name == "random":
            return False
        literal = all(isinstance(arg, nodes.Const) for arg in node.args)
        if node.name == "map" and (not literal or node.dyn_args is not None or node.dyn_kwargs is not None):
            return False
    return not any(isinstance(node.value, str) and "random" in node.value.lower() for node in ast.find_all(nodes.Const))


class _RootedLoader(FileSystemLoader):
    """A loader that refuses files whose real path (symlinks followed) leaves the prompts directory, and
    empty files: a template is never empty on purpose, but is while an editor rewrites it in place."""

    def __init__(self, searchpath: str, max_chars: int) -> None:
        super().__init__(searchpath)
        self.max_chars = max_chars
        self._loading = threading.local()  # the source `load` is compiling, as `get_source` read it

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(Path(self.searchpath[0]).resolve()):
            raise TemplateNotFound(template)
        if not source.strip():
            raise TemplateSyntaxError("the template is empty", 1, template, filename)
        self._loading.source = source
        return source, filename, uptodate

    def load(
        self, environment: Environment, name: str, globals: MutableMapping[str, Any] | None = None
    ) -> Template:
        try:
            template = super().load(environment, name, globals)
        finally:
            source = self._loading.__dict__.pop("source", "")  # not kept past the load, compiled or not
        # Described from what it compiled, not the file as it is now (`BoundedSandbox.template_class`).
        cast(SourcedTemplate, template).describe(source, self.max_chars)
        return template


class _TooLarge(Exception):
    """A template operation would build a value longer than the render may hold."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _ints(values: Any) -> list[int]:
    items = values if isinstance(values, tuple | list) else [values]
    return [abs(v) for v in items if isinstance(v, int) and not isinstance(v, bool)]


def _formatted_size(fmt: str, args: Any) -> int:
    """A bound on the widths a `%` format asks for; `*` widths come from the arguments."""
    size = len(fmt)
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                size += max(_ints(args), default=0)
            elif number:
                size += int(number)
    return size


def _format_method_size(fmt: str, args: Any, kwargs: dict[str, Any]) -> int:
    """A bound on what `str.format` builds: the widths in its specs (`{:>99}`), or the arguments' for nested ones."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return len(fmt)  # malformed: format() refuses it without building anything
    values = [*args, *kwargs.values()]
    values += [v for arg in args if isinstance(arg, dict) for v in arg.values()]  # format_map
    size = len(fmt)
    for _, _, spec, _ in fields:
        if spec:
            size += sum(int(number) for number in re.findall(r"\d+", spec))
            if "{" in spec:
                size += max(_ints(values), default=0)
    return size


def _replaced_size(text: Any, old: Any, new: Any, *args: Any, **kwargs: Any) -> int:
    """The length of `text.replace(old, new)` at most (an empty `old` inserts `new` between every character)."""
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    times = text.count(old) if old else len(text) + 1
    return len(text) + times * max(0, len(new) - len(old))


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _grown_size(operator: str, left: Any, right: Any) -> int:
    """The size `left <operator> right` would build, before building it (0 when it builds nothing sized)."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and _ints(times):
                return len(seq) * times
    elif operator == "**" and _ints(left) and _ints(right) and abs(left) > 1 and right > 0:
        return left.bit_length() * right // 3  # about the decimal digits of the result
    elif operator == "%" and isinstance(left, str):
        return _formatted_size(left, right)
    return 0


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox that refuses, before building it, any value longer than `max_chars`.

    `"a" * n`, `[x] * n`, `10 ** n`, `"%999999999s" % x`, `"{:>99999999}".format(x)`, `"a".ljust(n)`,
    `s.replace("a", s)`, `lipsum(n)` and the padding filters would otherwise allocate whatever the request's
    data asks for; the rendered prompt as a whole is bounded by `PromptRenderer` and loops by its deadline.
    """

    intercepted_binops = frozenset({"*", "**", "%"})
    template_class = SourcedTemplate

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        for name, size in (("center", _padded), ("indent", _indented), ("format", _format_filter)):
            self.filters[name] = self._bounded(self.filters[name], size)
        self.filters["replace"] = self._bounded(self.filters["replace"], lambda _ctx, *a, **k: _replaced_size(*a, **k))
        del self.globals["lipsum"]  # lipsum(n) writes n paragraphs, whatever n is
        check = self._check

        class BoundedNamespace(Namespace):
            """`namespace()`, whose attributes cannot carry a value past the bound from one loop pass to the next."""

            def __setitem__(self, name: str, value: Any) -> None:
                check(_length(value))
                super().__setitem__(name, value)

        self.globals["namespace"] = BoundedNamespace

    def _check(self, size: int) -> None:
        if size > self.max_chars:
            raise _TooLarge(size)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self._check(_grown_size(operator, left, right))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # Whatever grew past the bound unseen (`~` in a macro that calls itself) stops at the next call.
        __self._check(max(map(_length, [*args, *kwargs.values()]), default=0))
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(owner, str):
            if name in _PADDING_METHODS and args:
                __self._check(max(_ints(args[0]), default=0))
            elif name in ("format", "format_map"):
                __self._check(_format_method_size(owner, args, kwargs))
            elif name == "replace":
                __self._check(_replaced_size(owner, *args))
        return super().call(__context, __obj, *args, **kwargs)

    def _bounded(self, fn: Callable[..., Any], size: Callable[..., int]) -> Callable[..., Any]:
        @functools.wraps(fn)  # keeps Jinja's pass_eval_context marker
        def bounded(*args: Any, **kwargs: Any) -> Any:
            self._check(size(*args, **kwargs))
            return fn(*args, **kwargs)

        return bounded


def _padded(value: Any, width: Any = 80) -> int:
    return max(_ints(width), default=0)


def _indented(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> int:
    text = str(value)
    per_line = len(width) if isinstance(width, str) else max(_ints(width), default=0)
    return len(text) + (text.count("\n") + 1) * per_line


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> int:
    return _formatted_size(str(value), args)


class RenderTimeout(BaseException):
    """Raised inside a rendering thread by `Watchdog`; a BaseException so no `except Exception` swallows it."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Set (or, with None, clear) the exception a thread raises at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


class Watchdog:
    """Ends renders that run past their deadline, from one daemon thread per process.

    A template's loops are Python bytecode with no hook to read a clock in (the sandbox intercepts calls and
    operators, not iterations), and gunicorn's watchdog only sees the worker's main thread beat. So the thread
    still rendering at its deadline gets `RenderTimeout` raised in it (CPython's PyThreadState_SetAsyncExc),
    which stops the render at its next bytecode. The rendering thread takes only a plain lock, which an
    exception landing at any point cannot leave held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._deadlines: dict[int, float] = {}
        self._pid = 0
        self._next_at = math.inf  # when the watching thread looks at the deadlines next, unless woken
        self._seconds = 0.0  # the latest timeout armed: how long (a second at least) it waits with no render

    def arm(self, seconds: float) -> None:
        """This thread gets `RenderTimeout` once `seconds` have passed, unless it calls `disarm` first."""
        deadline_at = time.monotonic() + seconds
        with self._lock:
            if self._pid != os.getpid():  # first use, or a fork (gunicorn's workers) left the thread behind
                self._pid = os.getpid()
                self._next_at = math.inf
                threading.Thread(target=self._watch, name="render-watchdog", daemon=True).start()
            self._deadlines[threading.get_ident()] = deadline_at
            self._seconds = seconds
            # Renders share one timeout, so a new deadline falls after the time the thread already waits for
            # (the earliest deadline, or one timeout after it last looked): it is woken only for an earlier one,
            # not for every render (two thread switches each).
            wake = deadline_at < self._next_at
            if wake:
                self._next_at = deadline_at
        if wake:
            self._wake.set()

    def disarm(self) -> None:
        """End this thread's deadline; `RenderTimeout` if it passed, even when the render ended just before."""
        thread_id = threading.get_ident()
        with self._lock:
            fired = self._deadlines.pop(thread_id, None) is None
        if fired:
            _raise_in(thread_id, None)  # drop it if it has not landed yet, and raise it here instead
            raise RenderTimeout()

    def _watch(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                for thread_id, deadline_at in list(self._deadlines.items()):
                    if deadline_at <= now:
                        del self._deadlines[thread_id]
                        _raise_in(thread_id, RenderTimeout)
                next_at = self._next_at = min(self._deadlines.values(), default=now + max(self._seconds, 1.0))
            self._wake.wait(next_at - now)


_watchdog = Watchdog()


_MOST_NESTED = 16  # templates named within templates a version follows, deeper than which only the output tells


@dataclass(frozen=True)
class PromptFile:
    """A prompt file, resolved to the template that renders it."""

    rel: str  # prompts/<component>/<prompt_file>, as errors name it
    compiled: Template


class PromptRenderer:
    """Renders `prompts/<component>/<prompt_file>` with the request's variables, within size and time bounds."""

    def __init__(self, root: Path, max_chars: int = 1024 * 1024, timeout: float = 5.0) -> None:
        self.root = root.resolve()
        self.prompts_dir = self.root / "prompts"
        self.max_chars = max_chars
        self.timeout = timeout
        # Immutable: templates cannot modify the cached context they are handed.
        self.env = BoundedSandbox(
            max_chars,
            loader=_RootedLoader(str(self.prompts_dir), max_chars),
            undefined=StrictUndefined,
            autoescape=False,
            auto_reload=True,
            cache_size=1000,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Each template's last version that compiled: a file rewritten in place is empty or cut short for a
        # moment, and requests meanwhile get the version before (a rename is atomic and needs none of this).
        self._last_good: dict[str, Template] = {}

    def resolve(self, component: str, prompt_file: str) -> PromptFile:
        """The template of a prompt file (its last version that compiled, while the file does not); `NotFound` or
        `TemplateFailure` otherwise."""
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
            previous = self._last_good.get(name)
            if previous is None:
                raise TemplateFailure(f"{rel}:{exc.lineno}: {exc.message}") from None
            template = previous
        else:
            if self._last_good.get(name) is not template:
                self._last_good[name] = template
        return PromptFile(rel, template)

    def version(self, prompt: PromptFile) -> TemplateVersion | None:
        """What tells this prompt's text from the values of the variables it reads: the template's own version and
        those of the templates it names, as they are now (an absent one as absent). None when only the rendered
        text can tell: a name computed at render time, the `random` filter, a named template that fails to load."""
        return self._version(prompt.compiled, 0, {})

    def _version(
        self, template: Template, depth: int, seen: dict[str, TemplateVersion | None]
    ) -> TemplateVersion | None:
        """`seen`: the named templates' versions already found in this walk (a partial named twice is walked once)."""
        if not isinstance(template, SourcedTemplate) or template.own is None or template.references is None:
            return None
        if not template.references:
            return template.own
        if depth >= _MOST_NESTED:
            return None
        digests, reads = [template.own.digest], set(template.own.reads)
        for name in template.references:
            if name not in seen:
                try:
                    seen[name] = self._version(self.env.get_template(name), depth + 1, seen)
                except TemplateNotFound:
                    digests.append(f"{name} absent")
                    continue
                except TemplateError:
                    return None
            version = seen[name]
            if version is None:
                return None
            digests.append(version.digest)
            reads.update(version.reads)
        return TemplateVersion(hashlib.sha256("\x00".join(digests).encode()).hexdigest(), tuple(sorted(reads)))

    def render_file(self, prompt: PromptFile, variables: dict[str, Any]) -> str:
        """`prompt` rendered with `variables`; `MissingVariable`, `RenderLimit` or `TemplateFailure` otherwise."""
        rel, template = prompt.rel, prompt.compiled
        try:
            _watchdog.arm(self.timeout)
            try:
                return self._render(template, variables)
            finally:
                _watchdog.disarm()
        except RenderTimeout:
            message = f"{rel}: rendering took longer than CMP_RENDER_TIMEOUT={self.timeout:g}s"
            raise RenderLimit(message, code="render_timeout") from None
        except _TooLarge as exc:
            where = f"{rel}:{_template_line(exc, template.filename)}"
            message = f"{where}: builds a value of {exc.size} characters, over CMP_MAX_PROMPT_CHARS={self.max_chars}"
            raise RenderLimit(message, code="prompt_too_large") from None
        except RenderLimit as exc:
            raise RenderLimit(f"{rel}: {exc.message}", code=exc.code) from None
        except UndefinedError as exc:
            missing = _UNDEFINED_NAME.match(exc.message or "")
            if missing and missing.group(1) not in variables:
                raise MissingVariable(_missing(rel, missing.group(1), missing.group(1))) from None
            key = _UNDEFINED_DATA_KEY.match(exc.message or "")
            if key:
                raise MissingVariable(_missing(rel, f"data.{key.group(1)}", key.group(1))) from None
            raise TemplateFailure(f"{rel}:{_template_line(exc, template.filename)}: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - any failure inside a project's template is the template's
            detail = str(exc) or exc.__class__.__name__
            raise TemplateFailure(f"{rel}:{_template_line(exc, template.filename)}: {detail}") from None

    def _render(self, template: Any, variables: dict[str, Any]) -> str:
        """The template's output, piece by piece, stopped once it passes `max_chars`."""
        pieces: list[str] = []
        size = 0
        for piece in template.generate(variables):
            size += len(piece)
            if size > self.max_chars:
                message = f"the rendered prompt is longer than CMP_MAX_PROMPT_CHARS={self.max_chars} characters"
                raise RenderLimit(message, code="prompt_too_large")
            pieces.append(piece)
        return "".join(pieces)


def _missing(rel: str, variable: str, key: str) -> str:
    """A missing variable, with the two ways on: a default in the template, or the value in the request."""
    return (
        f"{rel} needs the variable {variable!r}, which the request's data does not provide: give it a default in "
        f"the template ({{{{ {variable} | default(...) }}}}) or send data.{key}; an OpenAI client sends only "
        "messages (the last user message is user_input) unless it adds data in its body (extra_body)"
    )


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

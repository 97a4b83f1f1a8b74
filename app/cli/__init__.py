"""The `ctx` command line: one module per command group, found by `pkgutil`, so a new group is one new file.

A group module defines `register(commands, common)`: it adds its parsers to `commands` (the top-level
subparsers), with `common` (`--root`) as a parent where the project root means something, and sets each
parser's `handler` to a function `(args, settings) -> exit code`. Modules without `register` (`common`) are
helpers. Commands import the app's heavier modules inside their handlers, so `serve` can prepare the
environment (Prometheus multiprocess mode) before they load, and `ctx --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path

from app.cli.common import fail, root_hint
from app.config import Settings
from app.errors import ContexisError, NotFound, SettingsError

# What a shell reports for a program stopped by Ctrl-C (128 + SIGINT) and by a closed pipe (128 + SIGPIPE).
INTERRUPTED = 130
BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """Every group's parsers under `ctx`, groups in the order of their module names."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, help="project root (default: CMP_PROJECT_ROOT or the current directory)")

    parser = argparse.ArgumentParser(prog="ctx", description="Contexis runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl-C and a reader that went away (`| head`) end it quietly, without a traceback."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # Nothing more can be written: point stdout at /dev/null so the exit's own flush stays silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return fail(str(exc), 2)
    root = getattr(args, "root", None)
    if root:
        settings = settings.replace(project_root=root)
    if settings.hf_endpoint_warning and args.command in ("serve", "hf"):
        print(f"ctx: warning: {settings.hf_endpoint_warning}", file=sys.stderr)
    try:
        code: int = args.handler(args, settings)
    except NotFound as exc:
        return fail(f"{exc.code}: {exc.message}; {root_hint(settings)}", 1)
    except ContexisError as exc:
        return fail(f"{exc.code}: {exc.message}", 1)
    return code

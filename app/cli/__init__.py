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
import pkgutil
import sys
from pathlib import Path

from app.cli.common import fail
from app.config import Settings
from app.errors import ContexisError, SettingsError


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
    except ContexisError as exc:
        return fail(f"{exc.code}: {exc.message}", 1)
    return code

"""`ctx init`, `ctx generate context` and `ctx lock`: start a project, add a context to it, pin what it serves."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from app.cli.common import fail
from app.config import Settings
from app.names import is_safe_name


def invocation() -> str:
    """How to run this `ctx` again from anywhere: `ctx` when that is on PATH, else the path of this one."""
    program = Path(sys.argv[0])
    if program.name == "cli.py":
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(program.resolve()))}"
    if program.name != "ctx":
        return "ctx"
    found = shutil.which("ctx")
    return "ctx" if found and Path(found).resolve() == program.resolve() else shlex.quote(str(program.resolve()))


def _name(template: str, name: str | None) -> str:
    from app.scaffold import DEFAULT_NAMES

    return name or DEFAULT_NAMES[template]


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """A new project in DIR: one context from a template, its prompt and docs, a `.env.example`, and a `.gitignore`
    keeping the state directory and secrets out of git (a `.gitignore` already there is kept as it is)."""
    from app import scaffold

    name = _name(args.template, args.name)
    if not is_safe_name(name):
        return fail(f"--name {name!r} is not a context name (1-128 of A-Z a-z 0-9 _ . -)", 2)
    root: Path = args.dir
    if root.exists() and not root.is_dir():
        return fail(f"{root} exists and is not a directory", 2)
    files = scaffold.project_files(args.template, name)
    taken = scaffold.existing(root, files)
    if taken:
        hint = "pick an empty DIR; `ctx generate context NAME` adds a context to a project"
        return fail(f"{root} already has {', '.join(taken)}: {hint}", 1)
    ignore = root / ".gitignore"
    kept = ignore.exists()
    if not kept:
        files[".gitignore"] = scaffold.GITIGNORE
    scaffold.write(root, files)
    ctx = invocation()
    where = "" if root.resolve() == Path.cwd().resolve() else f"cd {shlex.quote(str(root))}\n  "
    print(f"created project {root} with context {name} ({args.template}): {', '.join(files)}")
    missing = (
        scaffold.unignored(ignore.read_text(encoding="utf-8", errors="replace")) if kept and ignore.is_file() else []
    )
    if missing:
        print(
            f"ctx: warning: kept the existing {ignore}; add {' and '.join(missing)} to it, or git would commit the "
            "state directory (usage ledger, stored responses, cache) or the secrets of .env",
            file=sys.stderr,
        )
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "How do I get started?"}]})
    print(
        "next, from the project folder (the cases pass without a model; copy .env.example to .env for one):\n"
        f"  {where}{ctx} test\n"
        f"  {ctx} memory ingest --component {name} docs/{name}\n"
        f"  {ctx} serve --addr :8000\n"
        "then ask it as an OpenAI client would:\n"
        f"  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    return 0


def cmd_generate_context(args: argparse.Namespace, settings: Settings) -> int:
    """One more context in the project: its file, prompt, memory configuration and docs folder."""
    from app import scaffold

    if not is_safe_name(args.name):
        return fail(f"{args.name!r} is not a context name (1-128 of A-Z a-z 0-9 _ . -)", 2)
    root = settings.project_root
    if not (root / "contexts").is_dir():
        return fail(
            f"{root} has no contexts/ folder: run it in a project, pass --root (or set CMP_PROJECT_ROOT), "
            "or start one with `ctx init DIR`",
            2,
        )
    files = scaffold.context_files(args.template, args.name)
    taken = scaffold.existing(root, files)
    if taken:
        return fail(f"{root} already has {', '.join(taken)}: pick another NAME", 1)
    scaffold.write(root, files)
    print(f"created context {args.name} ({args.template}): {', '.join(files)}")
    where = "" if root.resolve() == Path.cwd().resolve() else f" --root {shlex.quote(str(root))}"
    print(f"next: {invocation()} test --context {args.name}{where}")
    return 0


def cmd_lock(args: argparse.Namespace, settings: Settings) -> int:
    """Write `context.lock.json` (every source's sha256, the runtime's version); `--check`: exit 1 on a difference."""
    from app.lock import LOCK_FILE, LockInvalid, ProjectLock

    root = settings.project_root
    if not (root / "contexts").is_dir():
        return fail(f"{root} has no contexts/ folder: pass --root (or set CMP_PROJECT_ROOT) to lock a project", 2)
    lock = ProjectLock(root)
    where = os.path.relpath(lock.path)
    if not args.check:
        written = lock.write()
        print(f"wrote {where}: {len(written.files)} files, {written.hash} (runtime {written.runtime})")
        return 0
    try:
        recorded = lock.read()
    except LockInvalid as exc:
        return fail(str(exc), 1)
    if recorded is None:
        return fail(f"{where} does not exist: run `ctx lock` to write it", 1)
    changes = recorded.differences(lock.current())
    if changes:
        print(f"ctx: the project does not match {LOCK_FILE} ({len(changes)} differences):", file=sys.stderr)
        for change in changes:
            print(f"ctx:   {change}", file=sys.stderr)
        return fail("run `ctx lock` to record them", 1)
    print(f"{where} matches: {len(recorded.files)} files, {recorded.hash}")
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from app.scaffold import TEMPLATES

    template_help = "support (a support agent), rag (answers from docs/, cited) or agent (plans in steps)"
    init = commands.add_parser("init", help="start a project: a context that serves on both APIs at once")
    init.add_argument("dir", nargs="?", type=Path, default=Path("."), help="the project folder (default: .)")
    init.add_argument("--template", choices=TEMPLATES, default="support", help=template_help)
    init.add_argument("--name", help="the context's name (default: SupportBot, DocsBot or Agent by template)")
    init.set_defaults(handler=cmd_init)

    generate = commands.add_parser("generate", help="add to a project").add_subparsers(
        dest="generate_command", required=True
    )
    context = generate.add_parser("context", parents=[common], help="add a context, its prompt and docs folder")
    context.add_argument("name", help="the context's name, which requests use (folder contexts/NAME/)")
    context.add_argument("--template", choices=TEMPLATES, default="support", help=template_help)
    context.set_defaults(handler=cmd_generate_context)

    lock = commands.add_parser("lock", parents=[common], help="write context.lock.json, or --check it")
    lock.add_argument("--check", action="store_true", help="exit 1 naming each file that differs from the lock")
    lock.set_defaults(handler=cmd_lock)

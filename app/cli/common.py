"""What several command groups share: failing with a message, argument types, progress bars, report files."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings
    from app.memory import Progress


def fail(message: str, code: int) -> int:
    """Print `ctx: message` on stderr and return the exit code, so a handler ends with `return fail(...)`."""
    print(f"ctx: {message}", file=sys.stderr)
    return code


def root_hint(settings: Settings) -> str:
    """Where the project was looked for, and how to name another: the way on from a 'not found'."""
    return (
        f"the project root is {settings.project_root.resolve()}: pass --root DIR or set CMP_PROJECT_ROOT "
        "(`make serve` serves examples/quickstart; `ctx init DIR` starts a project)"
    )


def positive(raw: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return int(raw)


def write_report(path: Path, content: bytes) -> None:
    """CI systems collect reports from folders that may not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@contextlib.contextmanager
def progress_bar(unit: str) -> Iterator[Progress]:
    """A `Progress` callback drawing a tqdm bar, only on a terminal (disable=None): logs and pipes get none."""
    from tqdm import tqdm

    with tqdm(unit=unit, disable=None, leave=False, file=sys.stderr) as bar:

        def progress(done: int, total: int, _label: str) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress

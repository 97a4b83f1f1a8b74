"""Baselines: each case's recorded answer, in `tests/baselines/<Context>.json` under the project root.

Files are sorted, indented JSON so a changed baseline reads as a diff in review; a tenant's run keeps its own
files under `tests/baselines/tenants/<tenant>/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def baseline_path(root: Path, context: str, tenant_id: str = "") -> Path:
    """Where the baseline of `context` (for `tenant_id`, when given) lives."""
    folder = root / "tests" / "baselines"
    if tenant_id:
        folder = folder / "tenants" / tenant_id
    return folder / f"{context}.json"


def read_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The recorded cases of one baseline file: name → {"answer", and "embedding" when one was recorded}."""
    document = json.loads(path.read_text(encoding="utf-8"))
    cases = document.get("cases") if isinstance(document, dict) else None
    if not isinstance(cases, dict):
        raise ValueError("expected an object with a 'cases' object")
    return cases


def baseline_lock(path: Path) -> str | None:
    """The hash of the sources a baseline was recorded with (None for one recorded before locks, or unreadable)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    lock = document.get("lock") if isinstance(document, dict) else None
    return lock if isinstance(lock, str) else None


def write_baseline(
    path: Path, context: str, model: str | None, cases: dict[str, dict[str, Any]], lock: str | None = None
) -> None:
    """Replace the baseline file atomically, so an interrupted run never leaves half a file.

    `lock` is the hash of the project's sources when the answers were recorded (`app.lock`), so a drift
    report can be traced to the change that made it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"context": context, "model": model, "cases": cases, "lock": lock}
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)

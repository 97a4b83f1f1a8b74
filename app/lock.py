"""`context.lock.json`: the sha256 of every source a project serves from, and the runtime's version.

The sources are the files under `contexts/`, `prompts/`, `memory/` (per-component configuration; the
databases `ctx memory ingest` builds are data, not sources) and `docs/` (the documents memory is built
from). Hidden files are skipped. The lock's own hash is the sha256 of what it records, so one short value
(`/version`, the request span, `ctx test` baselines) says which sources answered.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LOCK_FILE = "context.lock.json"
SOURCE_DIRS = ("contexts", "prompts", "memory", "docs")
_DATA_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".tmp")
_FORMAT = 1


def runtime_version() -> str:
    """The installed runtime's version (what `/version` shows and a lock records)."""
    try:
        return version("contexis-runtime")
    except PackageNotFoundError:
        return "0+unknown"


class LockInvalid(ValueError):
    """A lock file that cannot be read as one."""


@dataclass(frozen=True)
class Lock:
    """What a lock records: the runtime's version and each source's sha256, by its path under the root."""

    runtime: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """sha256 of the runtime version and every file's digest, in a canonical JSON form."""
        canonical = json.dumps({"runtime": self.runtime, "files": self.files}, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def as_json(self) -> str:
        document: dict[str, Any] = {"format": _FORMAT, "runtime": self.runtime, "hash": self.hash, "files": self.files}
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def differences(self, current: Lock) -> list[str]:
        """`changed: path` / `added: path` / `removed: path` / `runtime: a -> b`, from this lock to `current`."""
        found = [
            f"{'changed' if path in current.files else 'removed'}: {path}"
            for path, digest in self.files.items()
            if current.files.get(path) != digest
        ]
        found += [f"added: {path}" for path in current.files if path not in self.files]
        if self.runtime != current.runtime:
            found.append(f"runtime: {self.runtime} -> {current.runtime}")
        return sorted(found)


class ProjectLock:
    """One project's lock: the recorded one, the sources as they are now, and what differs.

    Digests are kept by each file's (inode, mtime, size), so checking a large `docs/` again (every `/readyz`
    with CMP_LOCKED) re-reads only what changed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.path = self.root / LOCK_FILE
        self._digests: dict[Path, tuple[tuple[int, int, int], str]] = {}
        recorded = self._read_quietly()
        # Read once, when the process starts: what /version and the spans of its requests name.
        self.started_hash: str | None = recorded.hash if recorded else None

    def sources(self) -> list[Path]:
        """Every source file, sorted by its path under the root."""
        found: list[Path] = []
        for name in SOURCE_DIRS:
            top = self.root / name
            for folder, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.extend(
                    Path(folder) / file
                    for file in files
                    if not file.startswith(".") and not file.endswith(_DATA_SUFFIXES)
                )
        return sorted(found, key=lambda path: path.relative_to(self.root).as_posix())

    def current(self) -> Lock:
        """The lock the project's sources make now."""
        files: dict[str, str] = {}
        for path in self.sources():
            try:
                files[path.relative_to(self.root).as_posix()] = self._digest(path)
            except FileNotFoundError:
                continue  # removed while the walk ran
        return Lock(runtime_version(), files)

    def write(self) -> Lock:
        """Record the current sources in `context.lock.json` (atomically)."""
        lock = self.current()
        partial = self.path.with_name(f".{LOCK_FILE}.tmp")
        partial.write_text(lock.as_json(), encoding="utf-8")
        os.replace(partial, self.path)
        return lock

    def read(self) -> Lock | None:
        """The recorded lock, None without a lock file; `LockInvalid` when the file is not one."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LockInvalid(f"{LOCK_FILE} cannot be read: {exc.__class__.__name__}") from None
        files = document.get("files") if isinstance(document, dict) else None
        runtime = document.get("runtime") if isinstance(document, dict) else None
        if (
            not isinstance(files, dict)
            or not isinstance(runtime, str)
            or not all(isinstance(v, str) for v in files.values())
        ):
            raise LockInvalid(f"{LOCK_FILE} is not a lock file: expected 'runtime' and 'files'; run `ctx lock`")
        return Lock(runtime, files)

    def problem(self) -> str:
        """Why the project does not match its lock ("" when it does): for `/readyz` with CMP_LOCKED=true."""
        try:
            recorded = self.read()
        except LockInvalid as exc:
            return f"CMP_LOCKED=true: {exc}"
        if recorded is None:
            return f"CMP_LOCKED=true and the project has no {LOCK_FILE}: run `ctx lock` and deploy it"
        changes = recorded.differences(self.current())
        if not changes:
            return ""
        shown = ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
        return f"CMP_LOCKED=true: the project does not match {LOCK_FILE} ({shown}); run `ctx lock --check`"

    def _read_quietly(self) -> Lock | None:
        try:
            return self.read()
        except LockInvalid:
            return None

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._digests.get(path)
        if cached and cached[0] == key:
            return cached[1]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        value = "sha256:" + digest.hexdigest()
        self._digests[path] = (key, value)
        return value

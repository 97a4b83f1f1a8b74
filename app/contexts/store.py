"""Finding, merging and caching context files: the discovery rule of `app.contexts`, `extends`/`include`,
and the last version that loaded, served while a changed file does not."""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from app.contexts.checks import check_case_names, check_model, check_tools
from app.contexts.schema import file_validator, resolved_validator
from app.errors import ContextInvalid, NotFound
from app.names import is_safe_name

MAX_DEPTH = 5

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
        # Each file is stat'ed before it is read, so a change while it loads is a change the next request sees;
        # the path as asked for is the first file itself unless it is a link.
        files = [] if path == resolved else [(path, self._stat(path))]
        context = self._load_file(resolved, stack=(), files=files)
        errors = list(resolved_validator.iter_errors(context))
        if errors:
            raise ContextInvalid(f"{self._rel(resolved)}: name: required field is missing")
        expected = self._served_name(path)
        if context["name"] != expected:
            where = "its file's name" if path.parent.parent == self.contexts_dir / "tenants" else "its folder's name"
            raise ContextInvalid(
                f"{self._rel(path)}: name: {context['name']!r} must equal {where} {expected!r}, the name requests use"
            )
        check_case_names(self._rel(resolved), context)
        check_tools(self._rel(resolved), context)
        check_model(self._rel(resolved), context)
        with self._lock:
            # Keyed by the path as asked for, so a hit costs one stat per file and no realpath walk;
            # that path is in the signature too (once: it is most often the first file itself), and stat
            # follows it if a symlink is re-pointed.
            self._cache[path] = (_signature(dict(files)), context)
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
        for entry in _listing(self.contexts_dir, "*"):
            if entry.name.startswith(".") or entry.name == "tenants":
                continue
            if not entry.is_dir():
                if entry.suffix == ".ctx":
                    folder = f"contexts/{entry.stem}/{entry.stem.lower()}.ctx"
                    other.append((entry, f"a context lives in a folder of its name: {folder}"))
                continue
            files = _listing(entry, "*.ctx")
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
        for tenant in _listing(self.contexts_dir / "tenants", "*"):
            files = _listing(tenant, "*.ctx") if tenant.is_dir() else []
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

    def modified(self, path: Path) -> int:
        """When the version of `path` that loaded was written (seconds since the epoch), from what was seen as it
        was read: `path` may be gone since (`available` gives only loaded files)."""
        return self._cache[path][0][0][2] // 1_000_000_000

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

    def _load_file(
        self, path: Path, stack: tuple[Path, ...], files: list[tuple[Path, os.stat_result]]
    ) -> dict[str, Any]:
        rel = self._rel(path)
        if path in stack:
            chain = " -> ".join(self._rel(p) for p in (*stack, path))
            raise ContextInvalid(f"{rel}: extends/include: cycle {chain}")
        if len(stack) > MAX_DEPTH:
            raise ContextInvalid(f"{rel}: extends/include: nested deeper than {MAX_DEPTH} levels")
        files.append((path, self._stat(path)))
        raw = self._read(path)
        errors = sorted(file_validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
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

    def _stat(self, path: Path) -> os.stat_result:
        try:
            return os.stat(path)
        except OSError as exc:  # gone since it was listed
            raise ContextInvalid(f"{self._rel(path)}: cannot be read ({exc.__class__.__name__})") from None

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


def _field(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "document"


@functools.lru_cache(maxsize=1024)
def _shared_file(contexts_dir: Path, name: str) -> Path:
    """A request names its context every time: the same Path, built once (and its hash computed once)."""
    return contexts_dir / name / f"{name.lower()}.ctx"


def _listing(folder: Path, pattern: str) -> list[Path]:
    """`folder`'s entries matching `pattern`, sorted; none when it is gone (removed while the server looks)."""
    try:
        return sorted(folder.glob(pattern))
    except OSError:
        return []


def _signature(files: dict[Path, os.stat_result]) -> Signature:
    """What the files were when they were read: the path as asked for first, then each file it pulled in."""
    return tuple((str(p), st.st_ino, st.st_mtime_ns, st.st_size) for p, st in files.items())


def _unchanged(signature: Signature) -> bool:
    try:
        return all(
            (st := os.stat(name)).st_ino == ino and st.st_mtime_ns == mtime and st.st_size == size
            for name, ino, mtime, size in signature
        )
    except OSError:
        return False

"""A component's memory settings: `memory/<Component>/memory_config.yaml`, parsed once per file version."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.errors import MemoryConfigError
from app.names import MAX_TOP_K

CONFIG_NAME = "memory_config.yaml"
SEARCH_MODES = ("keyword", "vector", "hybrid")


@dataclass(frozen=True)
class MemoryConfig:
    """Chunking and retrieval settings of one component."""

    chunk_size: int = 800
    chunk_overlap: int = 100
    top_k: int = 5
    # keyword | vector | hybrid; None: hybrid when an embedding model is configured, keyword otherwise.
    search_mode: str | None = None

    @property
    def chunking(self) -> str:
        """Stored with each document so a changed chunking re-ingests unchanged files."""
        return f"{self.chunk_size}/{self.chunk_overlap}"


def _int_setting(data: dict[str, Any], key: str, default: int, low: int, high: int, path: Path) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemoryConfigError(f"{path}: {key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise MemoryConfigError(f"{path}: {key} must be between {low} and {high}, got {value}")
    return value


@functools.lru_cache(maxsize=256)
def _load_config(path: Path, mtime_ns: int) -> MemoryConfig:
    """Parse once per file version; ``mtime_ns`` is part of the cache key so edits are seen."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MemoryConfigError(f"{path}: cannot read memory config: {exc}") from exc
    if data is None:
        return MemoryConfig()
    if not isinstance(data, dict):
        raise MemoryConfigError(f"{path}: memory config must be a mapping, got {type(data).__name__}")
    defaults = MemoryConfig()
    unknown = sorted(set(map(str, data)) - {"chunk_size", "chunk_overlap", "top_k", "search_mode"})
    if unknown:
        raise MemoryConfigError(f"{path}: unknown memory config keys: {', '.join(unknown)}")
    size = _int_setting(data, "chunk_size", defaults.chunk_size, 100, 20_000, path)
    overlap = _int_setting(data, "chunk_overlap", defaults.chunk_overlap, 0, size // 2, path)
    top_k = _int_setting(data, "top_k", defaults.top_k, 1, MAX_TOP_K, path)
    mode = data.get("search_mode")
    if mode is not None and mode not in SEARCH_MODES:
        raise MemoryConfigError(f"{path}: search_mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    return MemoryConfig(chunk_size=size, chunk_overlap=overlap, top_k=top_k, search_mode=mode)


def load_config(component_dir: Path) -> MemoryConfig:
    """The component's settings, or the defaults when it has no config file."""
    path = component_dir / CONFIG_NAME
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        return MemoryConfig()
    return _load_config(path, mtime_ns)

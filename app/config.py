"""Typed runtime settings, read once from the environment (and `.env`).

`wsgi.py` and `cli.py` both build a `Settings` with `Settings.from_env()`, so the
server and the command line always agree on the project root, the model and its
limits.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from app.errors import SettingsError
from app.keys import ApiKey, keys_from_file, keys_from_json, keys_from_tokens, unique_keys

DEFAULT_HF_ENDPOINT = "https://api-inference.huggingface.co/models"
HF_APIS = ("text-generation", "chat-completion", "auto")


def _text(env: Mapping[str, str], name: str, default: str = "") -> str:
    # An empty variable counts as unset: Kubernetes renders missing secret keys as "".
    value = env.get(name, "").strip()
    return value or default


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float, minimum: float = 0):
    raw = _text(env, name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = _text(env, name, default).lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = _text(env, name).lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _api_keys(env: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """Every key from the three sources, checked together so an id or a key is never given twice."""
    keys = [*keys_from_json(_text(env, "CMP_API_KEYS"), "CMP_API_KEYS")]
    keys += keys_from_tokens(_text(env, "CMP_API_TOKENS"))
    path = _text(env, "CMP_API_KEYS_FILE")
    if path:
        keys += keys_from_file(path)
    return unique_keys(keys)


def _rate_limit(env: Mapping[str, str]) -> str:
    """A Flask-Limiter limit string such as `60/minute` or `10/second;500/hour`; empty means no limit."""
    raw = _text(env, "CMP_RATE_LIMIT")
    if raw.lower() in {"", "off", "none"}:
        return ""
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise SettingsError(f"CMP_RATE_LIMIT must look like '60/minute' or '10/second;500/hour', got {raw!r}") from None
    return raw


def _storage_uri(env: Mapping[str, str]) -> str:
    """Where the rate-limit counters live; only the scheme is checked (the URI may hold a password)."""
    raw = _text(env, "CMP_RATE_LIMIT_STORAGE_URI", "memory://")
    from limits.storage import SCHEMES

    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in SCHEMES or scheme.startswith("async+"):
        known = ", ".join(sorted(s for s in SCHEMES if not s.startswith("async+")))
        raise SettingsError(f"CMP_RATE_LIMIT_STORAGE_URI must start with one of {known} followed by '://'")
    return raw


MEMORY_URL_SCHEMES = ("postgresql://", "postgres://")


def _memory_url(env: Mapping[str, str]) -> str:
    """Empty (SQLite under the project root) or a PostgreSQL URL; the URL may hold a password, never echoed."""
    raw = _text(env, "CMP_MEMORY_URL")
    if raw and not raw.startswith(MEMORY_URL_SCHEMES):
        raise SettingsError("CMP_MEMORY_URL must be empty (SQLite) or start with postgresql:// or postgres://")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the runtime reads from its environment, validated up front."""

    project_root: Path = Path(".")
    hf_token: str = field(default="", repr=False)
    hf_model_id: str = ""
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_api: str = "auto"
    hf_connect_timeout: float = 5.0
    hf_timeout: float = 60.0
    hf_deadline: float = 120.0
    hf_max_retries: int = 2
    hf_backoff_factor: float = 0.5
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    service_name: str = "contexis-runtime"
    traces_exporter: str = "none"
    threads: int = 128  # gunicorn threads per worker (deploy/gunicorn.conf.py), and model connections per worker
    auth_enabled: bool = False
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    rate_limit: str = ""
    rate_limit_storage_uri: str = field(default="memory://", repr=False)
    trusted_proxies: int = 0
    max_data_depth: int = 8
    max_data_items: int = 1000
    max_string_chars: int = 32768
    hf_max_response_bytes: int = 1024 * 1024
    memory_url: str = field(default="", repr=False)
    memory_timeout: float = 2.0
    memory_pool_size: int = 0  # 0: one connection per thread (`threads`)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
        """Read the process environment; a `.env` file fills only what the environment lacks."""
        env: dict[str, str] = {}
        if dotenv_path and os.path.isfile(dotenv_path):
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ if environ is None else environ)
        return cls(
            project_root=Path(_text(env, "CMP_PROJECT_ROOT", ".")),
            hf_token=_text(env, "HF_TOKEN"),
            hf_model_id=_text(env, "HF_MODEL_ID"),
            hf_endpoint=_text(env, "HF_ENDPOINT", DEFAULT_HF_ENDPOINT).rstrip("/"),
            hf_api=_choice(env, "HF_API", HF_APIS, "auto"),
            hf_connect_timeout=_number(env, "HF_CONNECT_TIMEOUT", 5.0, minimum=0.001),
            hf_timeout=_number(env, "HF_TIMEOUT", 60.0, minimum=0.001),
            hf_deadline=_number(env, "HF_DEADLINE", 120.0, minimum=0.001),
            hf_max_retries=_number(env, "HF_MAX_RETRIES", 2, kind=int),
            hf_backoff_factor=_number(env, "HF_BACKOFF_FACTOR", 0.5),
            max_body_bytes=_number(env, "CMP_MAX_BODY_BYTES", 1024 * 1024, kind=int, minimum=1),
            log_level=_text(env, "CMP_LOG_LEVEL", "INFO").upper(),
            service_name=_text(env, "OTEL_SERVICE_NAME", "contexis-runtime"),
            traces_exporter=_text(env, "OTEL_TRACES_EXPORTER", "none").lower(),
            threads=_number(env, "GUNICORN_THREADS", cls.threads, kind=int, minimum=1),
            auth_enabled=_flag(env, "CMP_AUTH_ENABLED"),
            api_keys=_api_keys(env),
            rate_limit=_rate_limit(env),
            rate_limit_storage_uri=_storage_uri(env),
            trusted_proxies=_number(env, "CMP_TRUSTED_PROXIES", 0, kind=int),
            max_data_depth=_number(env, "CMP_MAX_DATA_DEPTH", 8, kind=int, minimum=1),
            max_data_items=_number(env, "CMP_MAX_DATA_ITEMS", 1000, kind=int, minimum=1),
            max_string_chars=_number(env, "CMP_MAX_STRING_CHARS", 32768, kind=int, minimum=1),
            hf_max_response_bytes=_number(env, "HF_MAX_RESPONSE_BYTES", 1024 * 1024, kind=int, minimum=1),
            memory_url=_memory_url(env),
            memory_timeout=_number(env, "CMP_MEMORY_TIMEOUT", 2.0, minimum=0.001),
            memory_pool_size=_number(env, "CMP_MEMORY_POOL_SIZE", 0, kind=int),
        ).checked()

    def checked(self) -> Settings:
        """Reject combinations no single variable shows: auth switched on with no key to accept."""
        if self.auth_enabled and not self.api_keys:
            raise SettingsError(
                "CMP_AUTH_ENABLED=true needs keys: set CMP_API_KEYS, CMP_API_TOKENS or CMP_API_KEYS_FILE"
            )
        return self

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (the CLI's flags override the environment)."""
        return dataclasses.replace(self, **changes)

    @property
    def hf_enabled(self) -> bool:
        """The guide's rule: the model is called only when both token and model id are set."""
        return bool(self.hf_token and self.hf_model_id)

    @property
    def hf_wire_api(self) -> str:
        """The wire format in use: `auto` means chat-completion for an OpenAI-style `/v1` base URL."""
        if self.hf_api != "auto":
            return self.hf_api
        return "chat-completion" if self.hf_endpoint.rstrip("/").endswith("/v1") else "text-generation"

    @property
    def hf_missing(self) -> list[str]:
        """Names of the variables still needed to enable Hugging Face."""
        return [name for name, value in (("HF_TOKEN", self.hf_token), ("HF_MODEL_ID", self.hf_model_id)) if not value]

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

from dotenv import dotenv_values

DEFAULT_HF_ENDPOINT = "https://api-inference.huggingface.co/models"
HF_APIS = ("text-generation", "chat-completion", "auto")


class SettingsError(ValueError):
    """An environment variable holds a value the runtime cannot use."""


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
        )

    def replace(self, **changes: object) -> Settings:
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

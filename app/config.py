"""Typed runtime settings, read once from the environment (and `.env`).

`wsgi.py` and `cli.py` both build a `Settings` with `Settings.from_env()`, so the
server and the command line always agree on the project root, the model and its
limits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from dotenv import dotenv_values

from app.errors import SettingsError
from app.keys import ApiKey, keys_from_file, keys_from_json, keys_from_tokens, unique_keys

HF_APIS = ("text-generation", "chat-completion", "auto")
# All of Hugging Face's inference goes through the router: chat models on its OpenAI-compatible `/v1`,
# the classic task route of the `hf-inference` provider under `/hf-inference/models`.
ROUTER_CHAT_ENDPOINT = "https://router.huggingface.co/v1"
ROUTER_CLASSIC_ENDPOINT = "https://router.huggingface.co/hf-inference/models"
DEFAULT_HF_ENDPOINT = ROUTER_CHAT_ENDPOINT
# The guide's default, retired by Hugging Face: it answers every call with 410 Gone.
RETIRED_HF_HOST = "api-inference.huggingface.co"
DEFAULT_HF_HUB_ENDPOINT = "https://huggingface.co"
# Feature extraction goes to the hf-inference provider's classic route, as huggingface_hub calls it.
DEFAULT_HF_EMBED_ENDPOINT = ROUTER_CLASSIC_ENDPOINT
HF_EMBED_APIS = ("feature-extraction", "openai", "auto")
# Every Redis the runtime uses (rate limits, model circuits, the response cache) answers within these, or is
# treated as down; a URL's own `?socket_timeout=&socket_connect_timeout=` win.
REDIS_TIMEOUTS: dict[str, Any] = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


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


def _hf_endpoint(env: Mapping[str, str], api: str) -> tuple[str, str]:
    """(the endpoint to call, the retired one it replaces or ""): the router by default, never the retired host.

    The retired host answers only 410 Gone, so a setting naming it (the guide's own default and
    "optional override") is moved to the router route of the same wire format instead of failing.
    """
    router = ROUTER_CLASSIC_ENDPOINT if api == "text-generation" else ROUTER_CHAT_ENDPOINT
    configured = _text(env, "HF_ENDPOINT").rstrip("/")
    if not configured:
        return router, ""
    if (urlsplit(configured).hostname or "").lower() == RETIRED_HF_HOST:
        return router, configured
    return configured, ""


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


def public_url(url: str) -> str:
    """`url` without its `user:password@`, which requests would otherwise show wherever the URL goes."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def describe_url(url: str) -> str:
    """A PostgreSQL URL for humans: host, port and database, never the user's password (in the netloc, or in
    the query as libpq also reads it: `?password=`), so it can go into logs, errors and `/readyz`."""
    from psycopg.conninfo import conninfo_to_dict  # the database's own parser; only its callers need psycopg

    parts = conninfo_to_dict(url)
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{host}{port}/{parts.get('dbname') or ''}"


_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def _cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """Browser origins allowed to call the API, comma-separated; `*` (any origin) only alone."""
    origins = tuple(o.strip().rstrip("/") for o in _text(env, "CMP_CORS_ORIGINS").split(",") if o.strip())
    if "*" in origins and len(origins) > 1:
        raise SettingsError("CMP_CORS_ORIGINS: '*' allows every origin and cannot be listed with others")
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise SettingsError(f"CMP_CORS_ORIGINS: {origin!r} is not an origin such as https://chat.example.com")
    return origins


MEMORY_URL_SCHEMES = ("postgresql://", "postgres://")
STATE_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(raw: str, name: str) -> str:
    """`raw` (a redis://, rediss:// or unix:// URL) when redis-py can connect with it: its own parser, every option
    of the query one it takes, a port and a database that are numbers, a socket path for unix://. Else a
    SettingsError naming `name` and what is wrong, never the URL (it may hold a password), so a bad URL stops the
    start rather than failing the first request."""
    import redis  # only its callers need it

    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - parsing is the check
    except ValueError:
        raise SettingsError(
            f"{name}: the port after the host must be a number from 0 to 65535 "
            "(a '/', '?' or '#' in the password must be percent-encoded)"
        ) from None
    if parts.scheme == "unix" and not parts.path:
        raise SettingsError(f"{name}: unix:// needs the socket's path, such as unix:///run/redis/redis.sock")
    if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
        raise SettingsError(f"{name}: the path after the host must be a database number, such as /0")
    try:
        redis.ConnectionPool.from_url(raw).make_connection()  # builds the connection's options, connects nowhere
    except ValueError as exc:  # redis-py's words name the option, never its value
        raise SettingsError(f"{name}: {exc}") from None
    except TypeError:
        options = ", ".join(sorted(parse_qs(parts.query)))
        raise SettingsError(f"{name}: its query has an option redis-py does not take (one of: {options})") from None
    return raw


def _state_url(env: Mapping[str, str]) -> str:
    """Where state shared by workers and replicas lives (model circuits): `CMP_STATE_URL`, else a Redis
    `CMP_RATE_LIMIT_STORAGE_URI`; empty (or `memory://`) keeps it per process. Never echoed (it may hold a
    password)."""
    raw = _text(env, "CMP_STATE_URL")
    if not raw:
        limits = _text(env, "CMP_RATE_LIMIT_STORAGE_URI")
        return _redis_url(limits, "CMP_RATE_LIMIT_STORAGE_URI") if limits.startswith(STATE_URL_SCHEMES) else ""
    if raw.startswith("memory://"):
        return ""
    if not raw.startswith(STATE_URL_SCHEMES):
        raise SettingsError("CMP_STATE_URL must be empty, memory://, or start with redis://, rediss:// or unix://")
    return _redis_url(raw, "CMP_STATE_URL")


def _cache_url(env: Mapping[str, str]) -> str:
    """Where cached answers live (`CMP_CACHE_URL`): empty (SQLite under the state directory), `off`, `memory://`
    or a Redis URL redis-py can use; never echoed (it may hold a password)."""
    raw = _text(env, "CMP_CACHE_URL")
    if raw.lower() == "off":
        return "off"
    if raw and raw != "memory://" and not raw.startswith(STATE_URL_SCHEMES):
        more = " (memory:// takes nothing after it)" if raw.startswith("memory://") else ""
        raise SettingsError(
            "CMP_CACHE_URL must be empty (SQLite), off, memory://, or start with redis://, rediss:// or unix://" + more
        )
    return _redis_url(raw, "CMP_CACHE_URL") if raw.startswith(STATE_URL_SCHEMES) else raw


def _memory_url(env: Mapping[str, str], name: str = "CMP_MEMORY_URL") -> str:
    """Empty (SQLite under the project root) or a PostgreSQL URL; the URL may hold a password, never echoed."""
    raw = _text(env, name)
    if raw and not raw.startswith(MEMORY_URL_SCHEMES):
        raise SettingsError(f"{name} must be empty (SQLite) or start with postgresql:// or postgres://")
    return raw


def _usage_url(env: Mapping[str, str]) -> str:
    """Where the usage ledger lives: "" (SQLite in the state directory), `off`, or a PostgreSQL URL (never echoed)."""
    raw = _text(env, "CMP_USAGE_URL")
    if raw.lower() == "off":
        return "off"
    if raw and not raw.startswith(MEMORY_URL_SCHEMES):
        raise SettingsError("CMP_USAGE_URL must be empty (SQLite), off, or start with postgresql:// or postgres://")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the runtime reads from its environment, validated up front."""

    project_root: Path = Path(".")
    hf_token: str = field(default="", repr=False)
    hf_model_id: str = ""
    hf_endpoint: str = field(default=DEFAULT_HF_ENDPOINT, repr=False)  # may carry user:password@
    hf_endpoint_retired: str = field(default="", repr=False)  # the retired HF_ENDPOINT that hf_endpoint replaces
    hf_api: str = "auto"
    hf_bill_to: str = ""
    hf_hub_endpoint: str = DEFAULT_HF_HUB_ENDPOINT
    hf_connect_timeout: float = 5.0
    hf_timeout: float = 60.0
    hf_deadline: float = 120.0
    hf_max_retries: int = 2
    hf_backoff_factor: float = 0.5
    max_body_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    service_name: str = "contexis-runtime"
    traces_exporter: str = "none"
    threads: int = 128  # gunicorn threads per worker (app/gunicorn_conf.py), and model connections per worker
    header_timeout: float = 10.0  # seconds a client has to send its request head (app/gunicorn_worker.py)
    queue_timeout: float = 10.0  # seconds a request may wait for a free thread before a 503 (app/gunicorn_worker.py)
    auth_enabled: bool = False
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    rate_limit: str = ""
    rate_limit_storage_uri: str = field(default="memory://", repr=False)
    trusted_proxies: int = 0
    max_data_depth: int = 8
    max_data_items: int = 1000
    max_string_chars: int = 32768
    max_prompt_chars: int = 1024 * 1024
    render_timeout: float = 5.0
    max_messages: int = 100
    max_history_chars: int = 131072
    cors_origins: tuple[str, ...] = ()
    playground: bool = False  # `GET /playground` and `POST /api/v1/test` (docs/playground.md)
    hf_max_response_bytes: int = 1024 * 1024
    hf_embed_model_id: str = ""
    hf_embed_endpoint: str = DEFAULT_HF_EMBED_ENDPOINT
    hf_embed_api: str = "auto"
    hf_embed_batch: int = 32
    hf_embed_query_timeout: float = 2.0
    test_concurrency: int = 4  # `ctx test` cases in flight at once: each may hold one model call
    test_deadline: float = 120.0  # seconds a `POST /api/v1/test` run may take (then cut: docs/api.md)
    memory_url: str = field(default="", repr=False)
    memory_timeout: float = 2.0
    memory_pool_size: int = 0  # 0: one connection per thread (`threads`)
    # Guardrails every context gets unless it sets its own (docs/security.md).
    pii_mode: str = "off"
    pii_phone_region: str = "US"
    pi_enforcement: str = "off"
    require_citation: bool = False
    pi_model: str = ""
    pi_model_endpoint: str = ROUTER_CLASSIC_ENDPOINT
    pi_model_timeout: float = 1.0
    pi_model_threshold: float = 0.9
    pi_model_failure: str = "open"
    usage_url: str = field(default="", repr=False)  # "" SQLite under state_dir, "off", or postgresql://
    state_dir: Path | None = None  # CMP_STATE_DIR: where embedded databases live; None: <project root>/.contexis
    usage_timeout: float = 2.0
    budgets_file: str = ""
    model_prices_file: str = ""
    bill_to_by_tenant_file: str = ""
    budget_cache_seconds: float = 1.0
    tool_max_response_bytes: int = 256 * 1024  # most of a tool's answer read (HTTP body, MCP message)
    mcp_list_ttl: float = 300.0  # seconds an MCP server's tool list is kept per process
    locked: bool = False  # CMP_LOCKED: not ready while the project differs from its context.lock.json
    state_url: str = field(default="", repr=False)  # Redis for state shared by workers; "" per process
    breaker_failures: int = 3  # consecutive failures that open a model's circuit
    breaker_cooldown: float = 30.0  # seconds a circuit stays open before one trial call
    catalog_refresh: float = 300.0  # seconds between reads of the router's catalog
    responses_ttl: float = 30 * 24 * 3600  # CMP_RESPONSES_TTL: seconds a stored Responses API response is kept
    cache_url: str = field(default="", repr=False)  # "" SQLite under state_dir, off, memory://, or redis://
    cache_max_bytes: int = 256 * 1024 * 1024  # cached answers kept by SQLite or memory:// before LRU eviction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env") -> Settings:
        """Read the process environment; a `.env` file fills only what the environment lacks."""
        env: dict[str, str] = {}
        if dotenv_path and os.path.isfile(dotenv_path):
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ if environ is None else environ)
        hf_api = _choice(env, "HF_API", HF_APIS, "auto")
        hf_endpoint, hf_endpoint_retired = _hf_endpoint(env, hf_api)
        return cls(
            project_root=Path(_text(env, "CMP_PROJECT_ROOT", ".")),
            hf_token=_text(env, "HF_TOKEN"),
            hf_model_id=_text(env, "HF_MODEL_ID"),
            hf_endpoint=hf_endpoint,
            hf_endpoint_retired=hf_endpoint_retired,
            hf_api=hf_api,
            hf_bill_to=_text(env, "HF_BILL_TO"),
            hf_hub_endpoint=_text(env, "HF_HUB_ENDPOINT", DEFAULT_HF_HUB_ENDPOINT).rstrip("/"),
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
            header_timeout=_number(env, "GUNICORN_HEADER_TIMEOUT", cls.header_timeout, minimum=0.001),
            queue_timeout=_number(env, "GUNICORN_QUEUE_TIMEOUT", cls.queue_timeout, minimum=0.001),
            auth_enabled=_flag(env, "CMP_AUTH_ENABLED"),
            locked=_flag(env, "CMP_LOCKED"),
            api_keys=_api_keys(env),
            rate_limit=_rate_limit(env),
            rate_limit_storage_uri=_storage_uri(env),
            trusted_proxies=_number(env, "CMP_TRUSTED_PROXIES", 0, kind=int),
            max_data_depth=_number(env, "CMP_MAX_DATA_DEPTH", 8, kind=int, minimum=1),
            max_data_items=_number(env, "CMP_MAX_DATA_ITEMS", 1000, kind=int, minimum=1),
            max_string_chars=_number(env, "CMP_MAX_STRING_CHARS", 32768, kind=int, minimum=1),
            max_prompt_chars=_number(env, "CMP_MAX_PROMPT_CHARS", 1024 * 1024, kind=int, minimum=1),
            render_timeout=_number(env, "CMP_RENDER_TIMEOUT", 5.0, minimum=0.001),
            max_messages=_number(env, "CMP_MAX_MESSAGES", 100, kind=int),
            max_history_chars=_number(env, "CMP_MAX_HISTORY_CHARS", 131072, kind=int),
            cors_origins=_cors_origins(env),
            playground=_flag(env, "CMP_PLAYGROUND"),
            hf_max_response_bytes=_number(env, "HF_MAX_RESPONSE_BYTES", 1024 * 1024, kind=int, minimum=1),
            hf_embed_model_id=_text(env, "HF_EMBED_MODEL_ID"),
            hf_embed_endpoint=_text(env, "HF_EMBED_ENDPOINT", DEFAULT_HF_EMBED_ENDPOINT).rstrip("/"),
            hf_embed_api=_choice(env, "HF_EMBED_API", HF_EMBED_APIS, "auto"),
            hf_embed_batch=_number(env, "HF_EMBED_BATCH", 32, kind=int, minimum=1),
            hf_embed_query_timeout=_number(env, "HF_EMBED_QUERY_TIMEOUT", 2.0, minimum=0.001),
            test_concurrency=_number(env, "CMP_TEST_CONCURRENCY", cls.test_concurrency, kind=int, minimum=1),
            test_deadline=_number(env, "CMP_TEST_DEADLINE", cls.test_deadline, minimum=0.001),
            memory_url=_memory_url(env),
            memory_timeout=_number(env, "CMP_MEMORY_TIMEOUT", 2.0, minimum=0.001),
            memory_pool_size=_number(env, "CMP_MEMORY_POOL_SIZE", 0, kind=int),
            pii_mode=_choice(env, "CMP_PII_MODE", ("off", "redact", "block"), "off"),
            pii_phone_region=_text(env, "CMP_PII_PHONE_REGION", "US").upper(),
            pi_enforcement=_choice(env, "CMP_PI_ENFORCEMENT", ("off", "flag", "block"), "off"),
            require_citation=_flag(env, "CMP_REQUIRE_CITATION"),
            pi_model=_text(env, "CMP_PI_MODEL"),
            pi_model_endpoint=_text(env, "CMP_PI_MODEL_ENDPOINT", ROUTER_CLASSIC_ENDPOINT).rstrip("/"),
            pi_model_timeout=_number(env, "CMP_PI_MODEL_TIMEOUT", 1.0, minimum=0.001),
            pi_model_threshold=_number(env, "CMP_PI_MODEL_THRESHOLD", 0.9),
            pi_model_failure=_choice(env, "CMP_PI_MODEL_FAILURE", ("open", "closed"), "open"),
            usage_url=_usage_url(env),
            state_dir=Path(_text(env, "CMP_STATE_DIR")) if _text(env, "CMP_STATE_DIR") else None,
            usage_timeout=_number(env, "CMP_USAGE_TIMEOUT", 2.0, minimum=0.001),
            budgets_file=_text(env, "CMP_BUDGETS"),
            model_prices_file=_text(env, "CMP_MODEL_PRICES"),
            bill_to_by_tenant_file=_text(env, "CMP_BILL_TO_BY_TENANT"),
            budget_cache_seconds=_number(env, "CMP_BUDGET_CACHE_SECONDS", 1.0),
            tool_max_response_bytes=_number(env, "CMP_TOOL_MAX_RESPONSE_BYTES", 256 * 1024, kind=int, minimum=1),
            mcp_list_ttl=_number(env, "CMP_MCP_LIST_TTL", 300.0),
            state_url=_state_url(env),
            breaker_failures=_number(env, "CMP_BREAKER_FAILURES", cls.breaker_failures, kind=int, minimum=1),
            breaker_cooldown=_number(env, "CMP_BREAKER_COOLDOWN", cls.breaker_cooldown, minimum=0.001),
            catalog_refresh=_number(env, "CMP_CATALOG_REFRESH", cls.catalog_refresh, minimum=1),
            cache_url=_cache_url(env),
            cache_max_bytes=_number(env, "CMP_CACHE_MAX_BYTES", cls.cache_max_bytes, kind=int, minimum=1),
            responses_ttl=_number(env, "CMP_RESPONSES_TTL", cls.responses_ttl, minimum=1),
        ).checked()

    def checked(self) -> Settings:
        """Reject combinations no single variable shows: auth with no key, a provider suffix the route ignores."""
        if self.auth_enabled and not self.api_keys:
            raise SettingsError(
                "CMP_AUTH_ENABLED=true needs keys: set CMP_API_KEYS, CMP_API_TOKENS or CMP_API_KEYS_FILE"
            )
        if ":" in self.hf_model_id and self.hf_wire_api == "text-generation":
            model, _, provider = self.hf_model_id.partition(":")
            raise SettingsError(
                f"HF_MODEL_ID={self.hf_model_id} picks an Inference Provider (':{provider}'), which only the "
                f"chat-completion route understands; the text-generation route puts the model id in the URL path, "
                f"where a provider suffix names no model. Use HF_MODEL_ID={model}, or "
                f"HF_API=chat-completion with HF_ENDPOINT={ROUTER_CHAT_ENDPOINT}"
            )
        if self.hf_embed_model_id and not self.hf_token:
            # Silently falling back to keywords would hide the misconfiguration until recall drops.
            raise SettingsError(
                "HF_EMBED_MODEL_ID needs HF_TOKEN (a local embedding server without auth accepts any value)"
            )
        if self.pi_model and not self.hf_token:
            raise SettingsError(
                "CMP_PI_MODEL needs HF_TOKEN (a local classifier server without auth accepts any value)"
            )
        if not 0 <= self.pi_model_threshold <= 1:
            raise SettingsError(f"CMP_PI_MODEL_THRESHOLD must be between 0 and 1, got {self.pi_model_threshold}")
        if not re.fullmatch(r"[A-Z]{2}", self.pii_phone_region):
            raise SettingsError(f"CMP_PII_PHONE_REGION must be a two-letter region code, got {self.pii_phone_region!r}")
        return self

    def rate_limit_scope_warning(self, workers: int) -> str:
        """What `CMP_RATE_LIMIT` really allows when `memory://` counts in each of `workers` processes ("" if exact).

        No storage of the `limits` library shares counters between processes without a server (memory is
        per process; Redis, Memcached, MongoDB and the others are servers), so the master says it at start.
        """
        if not self.rate_limit or not self.rate_limit_storage_uri.startswith("memory://") or workers < 2:
            return ""
        from limits import parse_many

        effective = "; ".join(str(type(i)(i.amount * workers, i.multiples)) for i in parse_many(self.rate_limit))
        return (
            f"CMP_RATE_LIMIT={self.rate_limit} is counted by each of the {workers} workers with memory:// storage: "
            f"a client may get up to {effective} per pod (and per replica). Set CMP_RATE_LIMIT_STORAGE_URI to "
            "redis://HOST:6379/0 for one budget."
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (the CLI's flags override the environment)."""
        return dataclasses.replace(self, **changes)

    @property
    def state_path(self) -> Path:
        """Where the runtime keeps its embedded databases (usage ledger, stored responses): CMP_STATE_DIR, else
        `.contexis/` under the project root."""
        return self.state_dir if self.state_dir is not None else Path(self.project_root) / ".contexis"

    @property
    def records_url(self) -> str:
        """The PostgreSQL of the runtime's own records (stored responses): CMP_USAGE_URL, else CMP_MEMORY_URL; ""
        for SQLite under the state directory."""
        return self.usage_url if self.usage_url not in ("", "off") else self.memory_url

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
    def hf_endpoint_warning(self) -> str:
        """What to tell the user at startup when their HF_ENDPOINT names the retired host; "" otherwise."""
        if not self.hf_endpoint_retired:
            return ""
        retired, used = public_url(self.hf_endpoint_retired), self.hf_endpoint_public
        return (
            f"HF_ENDPOINT={retired} is retired by Hugging Face (every call answers 410 Gone); "
            f"using {used} instead. Set HF_ENDPOINT={used} to silence this warning."
        )

    @property
    def hf_endpoint_public(self) -> str:
        """`HF_ENDPOINT` as it may be shown (`/version`, logs): without `user:password@`."""
        return public_url(self.hf_endpoint)

    @property
    def embed_enabled(self) -> bool:
        """Memory searches by meaning too when an embedding model is configured (with the token)."""
        return bool(self.hf_token and self.hf_embed_model_id)

    @property
    def hf_embed_wire_api(self) -> str:
        """`auto`: the OpenAI-compatible `/embeddings` for a `/v1` base URL, feature extraction otherwise."""
        if self.hf_embed_api != "auto":
            return self.hf_embed_api
        return "openai" if self.hf_embed_endpoint.endswith("/v1") else "feature-extraction"

    @property
    def hf_missing(self) -> list[str]:
        """Names of the variables still needed to enable Hugging Face."""
        return [name for name, value in (("HF_TOKEN", self.hf_token), ("HF_MODEL_ID", self.hf_model_id)) if not value]

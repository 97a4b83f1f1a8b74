"""Settings: defaults, validation, `.env`, and a repr that hides the token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import DEFAULT_HF_ENDPOINT, Settings, SettingsError

ROUTER_V1 = "https://router.huggingface.co/v1"
ROUTER_CLASSIC = "https://router.huggingface.co/hf-inference/models"


def test_defaults_follow_the_guide_except_the_retired_endpoint():
    settings = Settings.from_env({}, dotenv_path=None)
    assert settings.hf_endpoint == ROUTER_V1 == DEFAULT_HF_ENDPOINT
    assert settings.hf_wire_api == "chat-completion"
    assert not settings.hf_endpoint_warning
    assert (settings.hf_timeout, settings.hf_connect_timeout, settings.hf_max_retries) == (60.0, 5.0, 2)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.project_root == Path(".")
    assert settings.test_concurrency == 4
    assert not settings.hf_enabled


def test_hf_is_enabled_only_with_token_and_model():
    assert not Settings.from_env({"HF_TOKEN": "t"}, dotenv_path=None).hf_enabled
    assert not Settings.from_env({"HF_MODEL_ID": "m"}, dotenv_path=None).hf_enabled
    assert Settings.from_env({"HF_TOKEN": "t", "HF_MODEL_ID": "m"}, dotenv_path=None).hf_enabled


def test_text_generation_defaults_to_the_routers_classic_route():
    settings = Settings.from_env({"HF_API": "text-generation"}, dotenv_path=None)
    assert settings.hf_endpoint == ROUTER_CLASSIC
    assert settings.hf_wire_api == "text-generation"


@pytest.mark.parametrize(
    "retired",
    [
        "https://api-inference.huggingface.co/models",
        "https://api-inference.huggingface.co/models/",
        "https://api-inference.huggingface.co",
        "https://api-inference.huggingface.co/",
        "HTTPS://API-INFERENCE.HUGGINGFACE.CO/models//",
    ],
)
@pytest.mark.parametrize(
    ("api", "moved", "wire"),
    [
        ("auto", ROUTER_V1, "chat-completion"),
        ("chat-completion", ROUTER_V1, "chat-completion"),
        ("text-generation", ROUTER_CLASSIC, "text-generation"),
    ],
)
def test_the_retired_host_moves_to_the_router_with_a_warning_naming_both(retired, api, moved, wire):
    settings = Settings.from_env({"HF_ENDPOINT": retired, "HF_API": api}, dotenv_path=None)
    assert settings.hf_endpoint == moved
    assert settings.hf_wire_api == wire
    assert retired.rstrip("/") in settings.hf_endpoint_warning
    assert f"using {moved} instead" in settings.hf_endpoint_warning


def test_other_endpoints_are_kept_without_a_warning():
    settings = Settings.from_env({"HF_ENDPOINT": "https://xyz.endpoints.huggingface.cloud/v1/"}, dotenv_path=None)
    assert settings.hf_endpoint == "https://xyz.endpoints.huggingface.cloud/v1"
    assert not settings.hf_endpoint_warning


def test_bill_to_and_hub_endpoint():
    settings = Settings.from_env({"HF_BILL_TO": "acme-corp", "HF_HUB_ENDPOINT": "http://hub.test/"}, dotenv_path=None)
    assert (settings.hf_bill_to, settings.hf_hub_endpoint) == ("acme-corp", "http://hub.test")
    assert Settings.from_env({}, dotenv_path=None).hf_hub_endpoint == "https://huggingface.co"


@pytest.mark.parametrize(
    "env",
    [
        {"HF_API": "text-generation"},
        {"HF_ENDPOINT": "http://127.0.0.1:8080"},  # auto on a classic route is text-generation too
        {"HF_ENDPOINT": "https://api-inference.huggingface.co/models", "HF_API": "text-generation"},
    ],
)
def test_a_provider_suffix_on_the_text_generation_route_is_a_startup_error(env):
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**env, "HF_MODEL_ID": "meta-llama/Llama-3.1-8B-Instruct:together"}, dotenv_path=None)
    message = str(raised.value)
    assert "':together'" in message and "only the chat-completion route" in message
    assert "HF_MODEL_ID=meta-llama/Llama-3.1-8B-Instruct," in message


@pytest.mark.parametrize("suffix", [":together", ":fastest", ":cheapest"])
def test_a_provider_suffix_on_the_chat_route_is_fine(suffix):
    model = f"meta-llama/Llama-3.1-8B-Instruct{suffix}"
    assert Settings.from_env({"HF_MODEL_ID": model}, dotenv_path=None).hf_model_id == model


def test_empty_endpoint_keeps_the_default_and_trailing_slash_is_dropped():
    assert Settings.from_env({"HF_ENDPOINT": ""}, dotenv_path=None).hf_endpoint == DEFAULT_HF_ENDPOINT
    assert Settings.from_env({"HF_ENDPOINT": "http://x/v1/"}, dotenv_path=None).hf_endpoint == "http://x/v1"


def test_repr_hides_the_token():
    settings = Settings.from_env({"HF_TOKEN": "hf_very_secret", "HF_MODEL_ID": "m"}, dotenv_path=None)
    assert "hf_very_secret" not in repr(settings)
    assert "hf_very_secret" not in str(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HF_TIMEOUT", "x"),
        ("HF_MAX_RETRIES", "-1"),
        ("CMP_MAX_BODY_BYTES", "1.5"),
        ("CMP_TEST_CONCURRENCY", "0"),
        ("CMP_MEMORY_TIMEOUT", "0"),
        ("CMP_MEMORY_POOL_SIZE", "-2"),
        ("CMP_MEMORY_URL", "sqlite:///memory.db"),
    ],
)
def test_bad_values_raise_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value}, dotenv_path=None)


def test_environment_wins_over_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("HF_MODEL_ID=from-file\nHF_TIMEOUT=9\n")
    settings = Settings.from_env({"HF_MODEL_ID": "from-env"}, dotenv_path=str(dotenv))
    assert settings.hf_model_id == "from-env"
    assert settings.hf_timeout == 9.0


def test_memory_defaults_to_sqlite_and_reads_its_postgresql_settings():
    settings = Settings.from_env({}, dotenv_path=None)
    assert (settings.memory_url, settings.memory_timeout, settings.memory_pool_size) == ("", 2.0, 0)
    env = {"CMP_MEMORY_URL": "postgres://db/m", "CMP_MEMORY_TIMEOUT": "0.5", "CMP_MEMORY_POOL_SIZE": "16"}
    settings = Settings.from_env(env, dotenv_path=None)
    assert (settings.memory_url, settings.memory_timeout, settings.memory_pool_size) == ("postgres://db/m", 0.5, 16)


@pytest.mark.parametrize(
    "url",
    [
        "redis//cache:6379",
        "foo://cache",
        "memory://junk",
        "redis://:hunter2@cache:notaport/0",
        "redis://:hun/ter2@cache:6379/0",  # a '/' in the password, not percent-encoded: the port is 'hun'
        "redis://:hunter2@cache:99999/0",
        "redis://:hunter2@cache/zero",
        "redis://:hunter2@cache/0?socket_timeout=soon",
        "redis://:hunter2@cache/0?timeout=1",
        "unix://",
    ],
)
def test_a_cache_url_redis_py_cannot_use_is_refused_naming_it_without_its_password(url):
    with pytest.raises(SettingsError, match=r"^CMP_CACHE_URL") as raised:
        Settings.from_env({"CMP_CACHE_URL": url}, dotenv_path=None)
    assert not {"hunter2", "hun", "ter2", "cache"} & set(re.split(r"\W+", str(raised.value)))


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("", ""),
        ("off", "off"),
        ("OFF", "off"),
        ("memory://", "memory://"),
        ("redis://:pw@cache:6379/0?socket_timeout=1", "redis://:pw@cache:6379/0?socket_timeout=1"),
        ("rediss://cache/", "rediss://cache/"),
        ("unix:///run/redis/redis.sock?db=2", "unix:///run/redis/redis.sock?db=2"),
    ],
)
def test_cache_urls_that_work(url, kept):
    assert Settings.from_env({"CMP_CACHE_URL": url}, dotenv_path=None).cache_url == kept


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CMP_STATE_URL": "redis://:hunter2@cache:notaport"}, "CMP_STATE_URL"),
        ({"CMP_RATE_LIMIT_STORAGE_URI": "redis://:hunter2@cache/0?bogus=1"}, "CMP_RATE_LIMIT_STORAGE_URI"),
    ],
)
def test_the_other_redis_urls_are_checked_alike(env, name):
    with pytest.raises(SettingsError, match=rf"^{name}") as raised:
        Settings.from_env(env, dotenv_path=None)
    assert "hunter2" not in str(raised.value)

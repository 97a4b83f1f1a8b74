"""Settings: defaults, validation, `.env`, and a repr that hides the token."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import DEFAULT_HF_ENDPOINT, Settings, SettingsError


def test_defaults_follow_the_guide():
    settings = Settings.from_env({}, dotenv_path=None)
    assert settings.hf_endpoint == "https://api-inference.huggingface.co/models" == DEFAULT_HF_ENDPOINT
    assert (settings.hf_timeout, settings.hf_connect_timeout, settings.hf_max_retries) == (60.0, 5.0, 2)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.project_root == Path(".")
    assert not settings.hf_enabled


def test_hf_is_enabled_only_with_token_and_model():
    assert not Settings.from_env({"HF_TOKEN": "t"}, dotenv_path=None).hf_enabled
    assert not Settings.from_env({"HF_MODEL_ID": "m"}, dotenv_path=None).hf_enabled
    assert Settings.from_env({"HF_TOKEN": "t", "HF_MODEL_ID": "m"}, dotenv_path=None).hf_enabled


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

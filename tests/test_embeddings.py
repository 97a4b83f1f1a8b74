"""The embeddings client: both wire formats, normalised vectors, a stable dimension, errors, telemetry, cache."""

from __future__ import annotations

import json
import math

import pytest
import responses
from fake_hf import EMBED_DIMENSION, FakeHF, Reply, fake_vector, feature_extraction, openai_embeddings
from helpers import TOKEN

from app.config import DEFAULT_HF_EMBED_ENDPOINT, Settings
from app.errors import SettingsError
from app.observability import RuntimeMetrics
from app.providers import build_embedder
from app.providers.huggingface import HFError, HuggingFaceEmbedder

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ROUTER_URL = f"{DEFAULT_HF_EMBED_ENDPOINT}/{EMBED_MODEL}/pipeline/feature-extraction"


@pytest.fixture
def embed_settings(settings: Settings) -> Settings:
    return settings.replace(hf_token=TOKEN, hf_embed_model_id=EMBED_MODEL, hf_backoff_factor=0)


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def sample(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_settings_defaults_and_the_token_rule():
    settings = Settings.from_env({}, dotenv_path=None)
    assert not settings.embed_enabled and build_embedder(settings) is None
    assert settings.hf_embed_endpoint == "https://router.huggingface.co/hf-inference/models"
    assert (settings.hf_embed_batch, settings.hf_embed_wire_api) == (32, "feature-extraction")
    local = Settings.from_env({"HF_TOKEN": "t", "HF_EMBED_MODEL_ID": "m", "HF_EMBED_ENDPOINT": "http://tei/v1/"}, None)
    assert local.embed_enabled and local.hf_embed_wire_api == "openai" and local.hf_embed_endpoint == "http://tei/v1"
    with pytest.raises(SettingsError, match="HF_EMBED_MODEL_ID needs HF_TOKEN"):
        Settings.from_env({"HF_EMBED_MODEL_ID": "m"}, dotenv_path=None)
    with pytest.raises(SettingsError, match="HF_EMBED_API"):
        Settings.from_env({"HF_EMBED_API": "sparse"}, dotenv_path=None)
    with pytest.raises(SettingsError, match="HF_EMBED_BATCH"):
        Settings.from_env({"HF_EMBED_BATCH": "0"}, dotenv_path=None)


@responses.activate
def test_feature_extraction_route_token_and_unit_vectors(embed_settings):
    responses.post(ROUTER_URL, json=[fake_vector("refund"), fake_vector("parcel courier")])
    vectors = HuggingFaceEmbedder(embed_settings).embed(["refund", "parcel courier"])
    request = responses.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.body) == {"inputs": ["refund", "parcel courier"]}
    assert vectors == [pytest.approx(unit(fake_vector("refund"))), pytest.approx(unit(fake_vector("parcel courier")))]
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)


@responses.activate
def test_token_level_answers_are_mean_pooled(embed_settings):
    responses.post(ROUTER_URL, json=[[[1.0, 0.0], [0.0, 1.0]]])
    assert HuggingFaceEmbedder(embed_settings).embed(["x"]) == [pytest.approx(unit([0.5, 0.5]))]


@pytest.mark.parametrize("api", ["auto", "openai"])
def test_openai_compatible_route_reorders_by_index(embed_settings, api):
    with FakeHF(Reply(body=openai_embeddings)) as fake:
        endpoint = f"{fake.url}/v1" if api == "auto" else f"{fake.url}/tei"
        embedder = HuggingFaceEmbedder(embed_settings.replace(hf_embed_endpoint=endpoint, hf_embed_api=api))
        vectors = embedder.embed(["warranty", "login", "parcel"])
    assert fake.seen[0].path == ("/v1/embeddings" if api == "auto" else "/tei/embeddings")
    assert fake.seen[0].body == {"model": EMBED_MODEL, "input": ["warranty", "login", "parcel"]}
    assert vectors == [pytest.approx(unit(fake_vector(t))) for t in ("warranty", "login", "parcel")]
    assert embedder.dimension == EMBED_DIMENSION


@responses.activate
def test_a_dimension_that_changes_between_calls_is_an_error(embed_settings):
    metrics = RuntimeMetrics()
    responses.post(ROUTER_URL, json=[[1.0, 2.0, 3.0]])
    responses.post(ROUTER_URL, json=[[1.0, 2.0]])
    embedder = HuggingFaceEmbedder(embed_settings, metrics)
    embedder.embed(["a"])
    with pytest.raises(HFError) as caught:
        embedder.embed(["b"])
    assert caught.value.code == "hf_bad_response" and "2 dimensions" in caught.value.message
    assert sample(metrics, "cmp_hf_embed_errors_total", code="invalid_response") == 1


@responses.activate
@pytest.mark.parametrize(
    "body",
    [
        '{"error": "oops"}',  # an error in a 200
        "[[1.0, 2.0]]",  # one vector for two inputs
        "[[1.0], [1.0, 2.0]]",  # two dimensions in one answer
        '[["x"], ["y"]]',
        "[[0.0, 0.0], [1.0, 0.0]]",  # no direction to normalise
        "[[1e400, 1.0], [1.0, 0.0]]",  # infinite
        '{"data": "x"}',
        "<html>busy</html>",
    ],
)
def test_answers_that_are_not_one_vector_per_input_are_bad_responses(embed_settings, body):
    responses.post(ROUTER_URL, body=body)
    with pytest.raises(HFError) as caught:
        HuggingFaceEmbedder(embed_settings).embed(["a", "b"])
    assert caught.value.code == "hf_bad_response"


@responses.activate
def test_errors_are_typed_counted_and_never_carry_the_token(embed_settings, spans):
    metrics = RuntimeMetrics()
    responses.post(ROUTER_URL, status=401, json={"error": f"Invalid credentials in Authorization header {TOKEN}"})
    with pytest.raises(HFError) as caught:
        HuggingFaceEmbedder(embed_settings, metrics).embed(["a"])
    assert (caught.value.code, caught.value.status) == ("hf_unauthorized", 502)
    assert TOKEN not in caught.value.message and "HF_TOKEN" in caught.value.message
    assert sample(metrics, "cmp_hf_embed_errors_total", code="401") == 1
    assert sample(metrics, "cmp_hf_embed_latency_seconds_count", model=EMBED_MODEL) == 1
    (span,) = [s for s in spans.get_finished_spans() if s.name == "huggingface.embed"]
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["error.type"] == "401"
    assert TOKEN not in json.dumps(dict(span.attributes)) + str(span.events)


@responses.activate
def test_retries_go_through_the_shared_transport(embed_settings):
    responses.post(ROUTER_URL, status=503, json={"error": "Model is currently loading", "estimated_time": 1.0})
    responses.post(ROUTER_URL, json=[[1.0, 0.0]])
    assert HuggingFaceEmbedder(embed_settings).embed(["a"]) == [[1.0, 0.0]]
    assert len(responses.calls) == 2


def test_query_vectors_are_cached_per_process_and_bounded_in_length(embed_settings, spans):
    with FakeHF(Reply(body=feature_extraction)) as fake:
        embedder = HuggingFaceEmbedder(embed_settings.replace(hf_embed_endpoint=fake.url))
        first = embedder.embed_query("money back " + "x" * 5000)
        assert embedder.embed_query("money back " + "x" * 5000) == first
        embedder.embed_query("other")
    assert len(fake.seen) == 2
    assert len(fake.seen[0].body["inputs"][0]) == 2000
    assert fake.seen[0].path == f"/{EMBED_MODEL}/pipeline/feature-extraction"
    assert [s.name for s in spans.get_finished_spans()].count("huggingface.embed") == 2

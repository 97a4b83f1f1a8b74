"""The router's catalog: real bodies read into offers, prices per chain entry, and a refresher that never
puts the network on a reader's path."""

from __future__ import annotations

import copy
import time

import pytest
import responses
from fake_hf import ROUTER_CATALOG, FakeHF, Reply
from helpers import TOKEN

from app.config import ROUTER_CHAT_ENDPOINT
from app.providers.huggingface.catalog import Catalog, CatalogError, Offer, parse

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture
def catalog(hf_settings) -> Catalog:
    catalog = Catalog(hf_settings.replace(hf_endpoint=ROUTER_CHAT_ENDPOINT))
    catalog.load(ROUTER_CATALOG)
    return catalog


def test_offers_hold_what_the_router_says_of_each_provider(catalog):
    groq, together, nebius = catalog.offers(LLAMA)
    assert groq == Offer(
        model=LLAMA, provider="groq", status="live", context_length=131072, input_price=0.59, output_price=0.79,
        supports_tools=True, supports_structured_output=False, latency=0.21, throughput=310.5,
    )  # fmt: skip
    assert (together.provider, together.supports_structured_output) == ("together", True)
    assert nebius.down and not groq.down
    assert catalog.offers(f"{LLAMA}:groq") == catalog.offers(LLAMA)  # the suffix names the model's offers
    bare = catalog.offer(f"{QWEN}:featherless-ai")
    assert bare and (bare.price, bare.supports_tools, bare.context_length) == (None, None, None)


def test_an_offer_is_named_by_model_and_provider(catalog):
    offer = catalog.offer(f"{LLAMA}:together")
    assert offer and offer.id == f"{LLAMA}:together" and offer.input_price == 0.88
    assert catalog.offer(LLAMA) is None
    assert catalog.offer(f"{LLAMA}:fastest") is None
    assert catalog.offer(f"{LLAMA}:sambanova") is None
    assert catalog.offer("nobody/unknown:groq") is None


def test_prices_per_chain_entry(catalog):
    assert catalog.price(f"{LLAMA}:groq") == (0.59, 0.79)
    assert catalog.price(f"{LLAMA}:nebius") == (0.13, 0.4)  # a provider named is priced even when down
    # Without a provider: the highest price among the offers that are not down, so a ledger never undercounts.
    assert catalog.price(LLAMA) == (0.88, 0.88)
    assert catalog.price(f"{LLAMA}:cheapest") == (0.59, 0.79)
    assert catalog.price(f"{LLAMA}:fastest") == (0.59, 0.79)
    assert catalog.price(f"{QWEN}:fastest") == (0.3, 0.3)  # no throughput reported: the upper bound
    assert catalog.price(f"{QWEN}:featherless-ai") is None
    assert catalog.price("nobody/unknown") is None


def test_entries_of_another_shape_are_left_out():
    body = copy.deepcopy(ROUTER_CATALOG)
    body["data"] += [{"id": "vllm-model", "object": "model"}, "junk", {"id": 3, "providers": []}]
    body["data"][0]["providers"] += [
        {"status": "live"},
        {"provider": "x", "status": "live", "pricing": {"input": "free", "output": -1}, "context_length": True},
    ]
    table = parse(body)
    assert set(table) == {LLAMA, QWEN}
    odd = table[LLAMA][-1]
    assert (odd.provider, odd.price, odd.input_price, odd.context_length) == ("x", None, None, None)
    with pytest.raises(CatalogError):
        parse({"error": "nope"})
    with pytest.raises(CatalogError):
        parse(["a list"])


@responses.activate
def test_refresh_reads_the_router_with_the_token(hf_settings):
    responses.get(f"{ROUTER_CHAT_ENDPOINT}/models", json=ROUTER_CATALOG)
    catalog = Catalog(hf_settings.replace(hf_endpoint=ROUTER_CHAT_ENDPOINT))
    assert not catalog.loaded
    catalog.refresh()
    assert catalog.loaded and len(catalog.offers(LLAMA)) == 3
    assert responses.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


@responses.activate
@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"status": 401, "json": {"error": "Invalid credentials in Authorization header"}}, "answered 401"),
        ({"status": 200, "body": "<html>oops</html>"}, "not JSON"),
        ({"status": 200, "json": {"object": "list"}}, "no `data` list"),
    ],
)
def test_a_failed_refresh_keeps_the_last_good_catalog(catalog, reply, message):
    responses.get(f"{ROUTER_CHAT_ENDPOINT}/models", **reply)
    with pytest.raises(CatalogError, match=message) as failure:
        catalog.refresh()
    assert TOKEN not in str(failure.value)
    assert catalog.price(f"{LLAMA}:groq") == (0.59, 0.79)


def test_the_refresher_reads_in_the_background_and_stops(hf_settings):
    with FakeHF() as fake:
        fake.catalog = Reply(200, ROUTER_CATALOG)
        catalog = Catalog(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"), interval=0.1)
        assert catalog.offers(LLAMA) == []  # nothing read yet, and reading did not wait for it
        catalog.start()
        catalog.start()  # idempotent: one thread
        deadline = time.monotonic() + 5
        while fake.catalog_reads < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        catalog.close()
        reads = fake.catalog_reads
        assert reads >= 3 and len(catalog.offers(LLAMA)) == 3
        time.sleep(0.3)
        assert fake.catalog_reads == reads  # stopped


def test_an_unreachable_catalog_is_logged_without_the_token(hf_settings, caplog):
    catalog = Catalog(hf_settings.replace(hf_endpoint="http://127.0.0.1:9/v1"), interval=60)
    with pytest.raises(CatalogError, match="unreachable"):
        catalog.refresh()
    catalog.start()
    deadline = time.monotonic() + 5
    while "not refreshed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    catalog.close()
    assert "Router catalog not refreshed from http://127.0.0.1:9/v1/models" in caplog.text
    assert TOKEN not in caplog.text


def test_an_endpoint_without_a_catalog_is_not_asked_again(hf_settings, caplog):
    caplog.set_level("INFO")
    with FakeHF() as fake:  # answers 404 to GET .../models
        catalog = Catalog(hf_settings.replace(hf_endpoint=f"{fake.url}/v1"), interval=0.05)
        catalog.start()
        deadline = time.monotonic() + 5
        while "No catalog at" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        catalog.close()
        assert fake.catalog_reads == 1
    assert "not refreshed" not in caplog.text

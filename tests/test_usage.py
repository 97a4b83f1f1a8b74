"""The usage ledger (issue #29): rows of every model call, prices, estimates, budgets, billing and reports.

Model stand-ins are real local servers (fake_hf); the SQLite ledger is the file under the project's state
directory, read back with sqlite3; PostgreSQL is the session's real server (`postgres`); the multi-worker
cases run a real `ctx serve`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fake_hf import ROUTER_CATALOG, FakeHF, Reply, Stream, chat_events, completion
from helpers import (
    ACME_KEY,
    EXAMPLE,
    FIRST_RELEASE_LEDGER,
    GUIDE_BODY,
    KEYS_JSON,
    MODEL,
    REPO,
    STAR_KEY,
    TOKEN,
    Postgres,
    Server,
    bearer,
    chat,
    json_lines,
    metric,
    run,
    sha,
    sse_events,
)
from helpers_cache import enable_cache

from app import create_app
from app.config import Settings
from app.usage.ledger import COLUMNS, Row
from app.usage.sqlite import SQLiteLedger

USAGE = {"prompt_tokens": 12, "completion_tokens": 5}
PRICE = {"input": 0.5, "output": 1.5}  # USD per million tokens
COST = (12 * 0.5 + 5 * 1.5) / 1_000_000
USAGE_KEY = "ctx_live_USAGE_reader_0123456789"
ACME_USAGE_KEY = "ctx_live_ACME_usage_0123456789"


def usage_env(project: Path, fake_url: str, **extra: str) -> dict[str, str]:
    """The environment of a runtime with a chat-completion model at `fake_url` and a price for it."""
    prices = project / "prices.yaml"
    prices.write_text(yaml.safe_dump({MODEL: PRICE}))
    return {
        "CMP_PROJECT_ROOT": str(project),
        "HF_TOKEN": TOKEN,
        "HF_MODEL_ID": MODEL,
        "HF_ENDPOINT": f"{fake_url}/v1",
        "HF_BACKOFF_FACTOR": "0",
        "CMP_MODEL_PRICES": str(prices),
        **extra,
    }


def usage_app(project: Path, fake_url: str, **extra: str):
    return create_app(Settings.from_env(usage_env(project, fake_url, **extra), dotenv_path=None))


def budgets(project: Path, config: dict[str, Any]) -> str:
    path = project / "budgets.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def rows(app) -> list[dict[str, Any]]:
    """Every ledger row of the app's SQLite ledger, written now."""
    ledger = app.extensions["contexis"].meter.ledger
    assert ledger.flush()
    with sqlite3.connect(ledger.path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage_calls ORDER BY id")]


def sqlite_rows(project: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(project / ".contexis" / "usage.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM usage_calls ORDER BY id")]


def openai_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "SupportBot", "messages": [{"role": "user", "content": content}], **extra}


# -- rows: reported, streamed, estimated -------------------------------------------------------------


def test_a_whole_answer_has_one_row_with_reported_counts_and_cost(project):
    details = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {}}
    body = completion("Hi", usage=USAGE) | {"usage": details}
    with FakeHF(Reply(body=body)) as fake:
        app = usage_app(project, fake.url)
        response = chat(app, tenant_id="acme", data={"user_input": "hello"})
    assert response.status_code == 200
    (row,) = rows(app)
    assert row["request_id"] == response.headers["X-Request-ID"]
    assert (row["tenant"], row["key_id"], row["context"], row["route"]) == ("acme", None, "SupportBot", "/api/v1/chat")
    assert (row["model"], row["served_model"], row["endpoint"]) == (
        MODEL,
        "upstream-name",
        f"{fake.url}/v1/chat/completions",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (12, 5, 4)
    assert (row["estimated"], row["stream"], row["outcome"]) == (0, 0, "ok")
    assert row["cost_usd"] == pytest.approx(COST)
    assert row["latency_ms"] >= 0
    assert metric(app, "cmp_model_cost_usd_total", model=MODEL, context="SupportBot") == pytest.approx(COST)


def test_a_streamed_answer_asks_for_usage_and_records_what_it_reports(project):
    with FakeHF(Stream(chat_events(["Hel", "lo"], USAGE))) as fake:
        app = usage_app(project, fake.url)
        response = app.test_client().post("/v1/chat/completions", json=openai_body(stream=True))
        assert response.status_code == 200
        response.get_data()
    assert fake.seen[0].body["stream_options"] == {"include_usage": True}
    (row,) = rows(app)
    assert (row["prompt_tokens"], row["completion_tokens"], row["estimated"], row["stream"]) == (12, 5, 0, 1)
    assert row["route"] == "/v1/chat/completions"
    assert row["cost_usd"] == pytest.approx(COST)


def test_a_stream_without_usage_is_estimated_by_characters_and_flagged(project):
    pieces = ["Hello", " there, how can I help?"]
    with FakeHF(Stream(chat_events(pieces))) as fake:
        app = usage_app(project, fake.url)
        response = chat(app, stream=True)
        sse_events(response)
    (row,) = rows(app)
    sent = fake.seen[0].body["messages"]
    assert row["estimated"] == 1
    assert row["completion_tokens"] == math.ceil(len("".join(pieces)) / 4)
    assert row["prompt_tokens"] == sum(math.ceil(len(m["content"]) / 4) for m in sent)
    assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 0.5 + row["completion_tokens"] * 1.5) / 1e6)


def test_an_estimate_uses_the_models_tokenizer_when_it_is_cached_offline(project, tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["hello", "there", "how", "can", "i", "help", "you"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate([*words, "[UNK]"])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    snapshot = tmp_path / "hub" / f"models--{MODEL.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    tokenizer.save(str(snapshot / "tokenizer.json"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from app.usage.estimate import tokenizer_for

    tokenizer_for.cache_clear()
    try:
        with FakeHF(Reply(body=completion("hello there how can i help you"))) as fake:
            app = usage_app(project, fake.url)
            assert chat(app).status_code == 200
        (row,) = rows(app)
    finally:
        tokenizer_for.cache_clear()
    assert row["estimated"] == 1
    assert row["completion_tokens"] == 7  # the tokenizer's words; characters would say 8


def test_a_model_without_a_price_costs_null_never_zero(project):
    prices = project / "other-prices.yaml"
    prices.write_text(yaml.safe_dump({"other/model": PRICE}))
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_MODEL_PRICES=str(prices))
        assert chat(app).status_code == 200
    (row,) = rows(app)
    assert (row["prompt_tokens"], row["cost_usd"]) == (12, None)
    assert metric(app, "cmp_model_cost_usd_total", model=MODEL, context="SupportBot") == 0
    report = run("usage", "report", "--json", "--root", str(project))
    assert report.returncode == 0, report.stdout + report.stderr
    assert json.loads(report.stdout)["total"]["cost_usd"] is None


def chained_app(project: Path, primary_url: str, backup_url: str, **extra: str):
    """SupportBot names its models: groq's Llama on `primary_url` (HF_ENDPOINT), then a local model."""
    path = project / "contexts" / "SupportBot" / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    section = {"id": ROUTED, "fallbacks": [{"id": "local-llama", "endpoint": f"{backup_url}/v1"}]}
    path.write_text(yaml.safe_dump({**context, "model": section}))
    env = usage_env(project, primary_url, HF_MAX_RETRIES="0", **extra)
    del env["HF_MODEL_ID"]
    (project / "prices.yaml").write_text(yaml.safe_dump({"local-llama": PRICE}))
    return create_app(Settings.from_env(env, dotenv_path=None))


ROUTED = "meta-llama/Llama-3.3-70B-Instruct:groq"


def test_each_attempt_of_a_model_chain_has_its_row(project):
    with FakeHF(Reply(503, {"error": "down"})) as primary, FakeHF(Reply(body=completion("Hi", usage=USAGE))) as backup:
        app = chained_app(project, primary.url, backup.url)
        response = chat(app, tenant_id="acme")
    assert response.status_code == 200, response.json
    failed, served = rows(app)
    assert (failed["model"], failed["outcome"], failed["cost_usd"]) == (ROUTED, "503", None)
    assert (served["model"], served["outcome"], served["endpoint"]) == (
        "local-llama",
        "ok",
        f"{backup.url}/v1/chat/completions",
    )
    assert served["cost_usd"] == pytest.approx(COST)
    assert failed["request_id"] == served["request_id"] == response.headers["X-Request-ID"]


def test_a_router_model_is_priced_from_the_router_catalog(project):
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as primary, FakeHF() as backup:
        app = chained_app(project, primary.url, backup.url)
        app.extensions["contexis"].router.catalog.load(ROUTER_CATALOG)  # what its thread reads from the router
        assert chat(app).status_code == 200
    (row,) = rows(app)
    assert row["model"] == ROUTED
    assert row["cost_usd"] == pytest.approx((12 * 0.59 + 5 * 0.79) / 1e6)  # groq's pricing in the catalog


def test_a_failed_call_has_a_row_with_its_code_and_no_tokens(project):
    with FakeHF(Reply(status=503, body={"error": "overloaded"})) as fake:
        app = usage_app(project, fake.url, HF_MAX_RETRIES="0")
        assert chat(app).status_code == 502
    (row,) = rows(app)
    assert (row["outcome"], row["prompt_tokens"], row["completion_tokens"], row["cost_usd"]) == (
        "503",
        None,
        None,
        None,
    )


def test_a_client_that_leaves_mid_stream_leaves_a_cancelled_row_with_what_arrived(project):
    hold = threading.Event()
    with FakeHF(Stream(chat_events(["first", " second", " third"]), hold=hold, hold_at=2)) as fake:
        app = usage_app(project, fake.url)
        response = app.test_client().post("/api/v1/chat", json={**GUIDE_BODY, "stream": True}, buffered=False)
        next(iter(response.response))
        response.close()
        hold.set()
    (row,) = rows(app)
    assert row["outcome"] == "cancelled"
    assert row["estimated"] == 1 and row["completion_tokens"] >= 1


def test_no_model_means_no_ledger_at_all(settings):
    app = create_app(settings)
    assert chat(app).status_code == 200
    assert app.extensions["contexis"].meter.enabled is False
    assert not (settings.project_root / ".contexis" / "usage.db").exists()


# -- budgets -----------------------------------------------------------------------------------------


def test_a_spent_budget_answers_429_in_each_apis_shape_without_calling_the_model(project):
    path = budgets(project, {"tenants": {"acme": {"tokens_per_day": 30}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="0")
        client = app.test_client()
        assert chat(client, tenant_id="acme").status_code == 200
        assert chat(client, tenant_id="acme").status_code == 200  # 17 tokens used of 30: still under
        native = chat(client, tenant_id="acme")
        openai = client.post("/v1/chat/completions", json=openai_body(tenant_id="acme"))
        streamed = chat(client, tenant_id="acme", stream=True)
        other = chat(client, tenant_id="globex")  # no budget of its own, and no default
        calls = len(fake.seen)
    assert calls == 3
    for response in (native, openai, streamed):
        assert response.status_code == 429
        assert response.headers["x-should-retry"] == "false"
        retry_after = int(response.headers["Retry-After"])
        assert 0 < retry_after <= 86400
        assert response.headers["Content-Type"] == "application/json"
    assert native.json["error"]["code"] == "budget_exceeded"
    message = native.json["error"]["message"]
    assert "tenant 'acme'" in message and "tokens_per_day" in message and "34 tokens" in message
    assert "resets at" in message and message.endswith("T00:00:00Z")
    assert openai.json["error"] | {"message": ""} == {
        "message": "",
        "type": "rate_limit_error",
        "param": None,
        "code": "budget_exceeded",
    }
    assert other.status_code == 200
    assert metric(app, "cmp_budget_rejections_total", scope="tenant") == 3
    assert metric(app, "cmp_budget_rejections_total", scope="key") == 0


def test_the_default_budget_applies_to_each_tenant_without_its_own(project):
    path = budgets(project, {"default": {"usd_per_month": COST * 1.5}, "tenants": {"acme": {"usd_per_day": 1}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="0")
        statuses = [
            chat(app, tenant_id=tenant).status_code for tenant in ("a", "a", "a", "b", "b", "b", "acme", "acme")
        ]
    assert statuses == [200, 200, 429, 200, 200, 429, 200, 200]
    assert metric(app, "cmp_budget_rejections_total", scope="default") == 2


def test_a_keys_budget_counts_its_calls_only_and_the_key_never_reaches_the_ledger(project):
    path = budgets(project, {"keys": {"acme-frontend": {"tokens_per_month": 17}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(
            project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="0", CMP_AUTH_ENABLED="true",
            CMP_API_KEYS=KEYS_JSON,
        )  # fmt: skip
        client = app.test_client()
        first = client.post("/api/v1/chat", json=GUIDE_BODY, headers=bearer(ACME_KEY))
        second = client.post("/api/v1/chat", json=GUIDE_BODY, headers=bearer(ACME_KEY))
        other = client.post("/api/v1/chat", json={**GUIDE_BODY, "tenant_id": "acme"}, headers=bearer(STAR_KEY))
    assert (first.status_code, second.status_code, other.status_code) == (200, 429, 200)
    assert "key 'acme-frontend'" in second.json["error"]["message"]
    assert [(r["key_id"], r["tenant"]) for r in rows(app)] == [("acme-frontend", "acme"), ("operator", "acme")]
    stored = (project / ".contexis" / "usage.db").read_bytes()
    assert ACME_KEY.encode() not in stored and TOKEN.encode() not in stored


def test_budgets_are_reloaded_when_their_file_changes_and_a_broken_file_keeps_the_last_good_ones(project):
    path = budgets(project, {"tenants": {"acme": {"tokens_per_day": 1}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="0")
        assert chat(app, tenant_id="acme").status_code == 200
        assert chat(app, tenant_id="acme").status_code == 429
        budgets(project, {"tenants": {"acme": {"tokens_per_day": 1000}}})
        time.sleep(1.1)  # budgets are looked at once a second
        assert chat(app, tenant_id="acme").status_code == 200
        Path(path).write_text("tenants: [unterminated\n")
        time.sleep(1.1)
        assert chat(app, tenant_id="acme").status_code == 200


def test_a_budget_file_that_is_wrong_at_start_is_a_settings_error(project):
    from app.errors import SettingsError

    path = budgets(project, {"tenants": {"acme": {"dollars_per_week": 5}}})
    with pytest.raises(SettingsError, match="unknown limit 'dollars_per_week'"):
        usage_app(project, "http://127.0.0.1:9", CMP_BUDGETS=path)


def test_a_spent_budget_stays_spent_after_a_restart(project):
    path = budgets(project, {"tenants": {"acme": {"tokens_per_day": 17}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        first = usage_app(project, fake.url, CMP_BUDGETS=path)
        assert chat(first, tenant_id="acme").status_code == 200
        first.extensions["contexis"].meter.ledger.close()  # what the process does at exit
        restarted = usage_app(project, fake.url, CMP_BUDGETS=path)
        assert chat(restarted, tenant_id="acme").status_code == 429
        assert len(fake.seen) == 1


def test_the_budget_gauge_reports_each_configured_budget(project):
    path = budgets(project, {"default": {"tokens_per_month": 100}, "tenants": {"acme": {"tokens_per_day": 34}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BUDGETS=path)
        for tenant in ("acme", "b", "b", "c"):
            assert chat(app, tenant_id=tenant).status_code == 200
    meter = app.extensions["contexis"].meter
    meter.ledger.flush()
    ratios = {(scope, name, limit): ratio for scope, name, limit, ratio in meter.guard.ratios()}
    assert ratios == {("tenant", "acme", "tokens_per_day"): 0.5, ("default", "default", "tokens_per_month"): 0.34}


@pytest.mark.parametrize("guard_kept, ledger_kept", [(20, 20), (100, 20), (20, 100)])
def test_many_distinct_tenants_leave_a_bounded_budget_cache_and_every_budget_still_holds(
    project, guard_kept: int, ledger_kept: int
):
    path = budgets(project, {"default": {"tokens_per_day": 1000}, "tenants": {"acme": {"tokens_per_day": 30}}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="300")
        meter = app.extensions["contexis"].meter
        meter.guard.max_entries, meter.ledger.max_owners = guard_kept, ledger_kept
        client = app.test_client()
        assert chat(client, tenant_id="acme").status_code == 200  # 17 of acme's 30 tokens
        statuses = {chat(client, tenant_id=f"tenant-{n}").status_code for n in range(60)}
        assert meter.ledger.flush()
        kept = (len(meter.guard._cache), len(meter.ledger._owners))
        # acme's totals were forgotten meanwhile (by the guard, the ledger or both): they still count its first call.
        assert chat(client, tenant_id="acme").status_code == 200
        assert chat(client, tenant_id="acme").status_code == 429
    assert statuses == {200}
    assert kept == (min(guard_kept, 61), min(ledger_kept, 62)), kept  # 61 tenants; their rows' and a key's owners


# -- billing -----------------------------------------------------------------------------------------


def test_each_tenant_is_billed_to_its_organisation_others_to_hf_bill_to(project):
    bill_to = project / "bill-to.yaml"
    bill_to.write_text(yaml.safe_dump({"acme": "acme-corp"}))
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_BILL_TO_BY_TENANT=str(bill_to), HF_BILL_TO="platform-org")
        chat(app, tenant_id="acme")
        chat(app, tenant_id="globex")
        chat(app, tenant_id="acme", stream=True).get_data()
    assert [seen.headers.get("X-HF-Bill-To") for seen in fake.seen] == ["acme-corp", "platform-org", "acme-corp"]


def test_a_chain_entrys_own_endpoint_never_gets_a_tenants_organisation(project):
    bill_to = project / "bill-to.yaml"
    bill_to.write_text(yaml.safe_dump({"acme": "acme-corp"}))
    with FakeHF(Reply(503, {"error": "down"})) as primary, FakeHF(Reply(body=completion("Hi", usage=USAGE))) as backup:
        app = chained_app(project, primary.url, backup.url, CMP_BILL_TO_BY_TENANT=str(bill_to))
        assert chat(app, tenant_id="acme").status_code == 200
    assert primary.seen[0].headers.get("X-HF-Bill-To") == "acme-corp"
    assert "X-HF-Bill-To" not in backup.seen[0].headers


# -- reports -----------------------------------------------------------------------------------------


def _usage_keys() -> str:
    keys = [
        *json.loads(KEYS_JSON),
        {"key_id": "finance", "hash": sha(USAGE_KEY), "tenant_id": "*", "scopes": ["usage:read"]},
        {"key_id": "acme-finance", "hash": sha(ACME_USAGE_KEY), "tenant_id": "acme", "scopes": ["usage:read"]},
    ]
    return json.dumps(keys)


def test_reports_total_the_rows_by_every_grouping_in_the_cli_and_the_api(project):
    replies = [
        Reply(body=completion("Hi", usage=USAGE)),
        Reply(body=completion("Yo", usage={"prompt_tokens": 3, "completion_tokens": 1})),
    ]
    with FakeHF(*replies, Reply(status=503, body={"error": "down"})) as fake:
        app = usage_app(project, fake.url, HF_MAX_RETRIES="0", CMP_AUTH_ENABLED="true", CMP_API_KEYS=_usage_keys())
        client = app.test_client()
        for tenant in ("acme", "globex", "acme"):
            client.post("/api/v1/chat", json={**GUIDE_BODY, "tenant_id": tenant}, headers=bearer(STAR_KEY))
        written = rows(app)
        api = client.get("/api/v1/usage?by=tenant&since=1d", headers=bearer(USAGE_KEY))
        own = client.get("/api/v1/usage?by=model", headers=bearer(ACME_USAGE_KEY))
        denied = client.get("/api/v1/usage?tenant=globex", headers=bearer(ACME_USAGE_KEY))
        chat_key = client.get("/api/v1/usage", headers=bearer(STAR_KEY))
        bad = client.get("/api/v1/usage?since=yesterday", headers=bearer(USAGE_KEY))
    assert len(written) == 3
    assert api.status_code == 200, api.json
    groups = {g["group"]: g for g in api.json["groups"]}
    assert groups["acme"] | {"cost_usd": None} == {
        "group": "acme", "requests": 2, "calls": 2, "prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
        "cost_usd": None, "unpriced_calls": 0, "estimated_calls": 0, "errors": 1,
        "cache_hits": 0, "saved_tokens": 0, "saved_usd": None,
    }  # fmt: skip
    assert groups["acme"]["cost_usd"] == pytest.approx(COST)
    assert groups["globex"]["prompt_tokens"] == 3
    total = api.json["total"]
    assert total["calls"] == len(written)
    assert total["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in written)
    assert total["completion_tokens"] == sum(r["completion_tokens"] or 0 for r in written)
    assert total["cost_usd"] == pytest.approx(sum(r["cost_usd"] or 0 for r in written))
    assert own.status_code == 200 and own.json["tenant"] == "acme"
    assert own.json["total"]["calls"] == 2
    assert denied.status_code == 403
    assert chat_key.status_code == 403 and "usage:read" in chat_key.json["error"]["message"]
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_request"
    for by in ("tenant", "context", "model", "key", "day"):
        result = run("usage", "report", "--by", by, "--json", "--root", str(project))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["total"]["calls"] == 3
        assert sum(g["calls"] for g in report["groups"]) == 3
        assert report["total"]["total_tokens"] == sum(r["prompt_tokens"] or 0 for r in written) + sum(
            r["completion_tokens"] or 0 for r in written
        )
    csv_out = run("usage", "report", "--by", "tenant", "--csv", "--tenant", "acme", "--root", str(project)).stdout
    assert csv_out.splitlines()[0].startswith("tenant,requests,calls,prompt_tokens")
    assert csv_out.splitlines()[1].startswith("acme,2,2,12,5,17,")
    table = run("usage", "report", "--root", str(project)).stdout
    assert "TOTAL" in table and "globex" in table


def test_a_report_without_a_writable_state_directory_is_a_503_not_a_500(settings, tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a directory\n")
    response = create_app(settings.replace(state_dir=taken)).test_client().get("/api/v1/usage")
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "usage_unavailable"
    assert "set CMP_STATE_DIR to a writable directory" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "query", ["since=999999d", "since=0001-01-01T00:00:00%2B01:00", "since=9999-12-31T23:59:59-14:00"]
)
def test_a_report_bound_past_the_calendar_is_a_400_in_the_api_and_no_traceback_in_the_cli(settings, query):
    response = create_app(settings).test_client().get(f"/api/v1/usage?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["code"] == "invalid_request"
    name, value = query.replace("%2B", "+").split("=")
    result = run("usage", "report", f"--{name}", value, "--root", str(settings.project_root))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"ctx: invalid_request: {name}: {value!r} is neither" in result.stderr


# -- processes: two workers, SIGTERM, a restart ---------------------------------------------------------


def test_two_gunicorn_workers_share_one_ledger_and_one_budget_across_a_restart(project):
    path = budgets(project, {"tenants": {"acme": {"tokens_per_day": 170}}})  # ten calls of 17 tokens
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        env = usage_env(project, fake.url, CMP_BUDGETS=path, CMP_BUDGET_CACHE_SECONDS="0")
        server = Server("--workers", "2", "--threads", "4", env={**env, "GUNICORN_ACCESSLOG": "-"})
        statuses = {}
        try:
            for n in range(54):
                # A fresh connection each time, so either worker answers; spaced past the ledger's batches.
                response = requests.post(
                    f"{server.url}/api/v1/chat",
                    json={**GUIDE_BODY, "tenant_id": "acme"},
                    headers={"X-Request-ID": f"rid-{n}"},
                    timeout=30,
                )
                statuses[f"rid-{n}"] = response.status_code
                if n < 14:
                    time.sleep(0.3)
        finally:
            code, output = server.stop()
        assert code == 0, output[-2000:]
        assert list(statuses.values()) == [200] * 10 + [429] * 44
        # Both workers refused: each saw the other's spending (gunicorn's access log names the worker).
        answered = [line for line in json_lines(output) if line.get("request_id") in statuses and "worker_pid" in line]
        refusing = {line["worker_pid"] for line in answered if line["status"] == 429}
        assert len(refusing) == 2, answered
        restarted = Server("--workers", "2", env=env)
        try:
            again = requests.post(f"{restarted.url}/api/v1/chat", json={**GUIDE_BODY, "tenant_id": "acme"}, timeout=30)
        finally:
            restarted.stop()
        assert again.status_code == 429
        assert len(fake.seen) == 10
    written = sqlite_rows(project)
    assert len(written) == 10 and sum(r["prompt_tokens"] + r["completion_tokens"] for r in written) == 170


def test_sigterm_under_load_loses_no_row(project):
    with FakeHF(Reply(body=completion("Hi", usage=USAGE), delay=0.01)) as fake:
        server = Server("--workers", "2", "--threads", "4", env=usage_env(project, fake.url))
        answered: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
                except requests.RequestException:
                    return  # the server stopped listening
                if response.status_code == 200:
                    answered.append(response.headers["X-Request-ID"])

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(load)
            time.sleep(2)
            code, output = server.stop()
            stop.set()
    assert code == 0, output[-2000:]
    assert len(answered) > 50
    assert sorted(r["request_id"] for r in sqlite_rows(project)) == sorted(answered)


def test_serving_the_bundled_example_in_a_test_leaves_examples_untouched():
    """A test that serves examples/quickstart with a model meters its calls elsewhere (helpers.runtime_env): the
    repository's example never gains a `.contexis/usage.db`."""
    stamp = {path: path.stat().st_mtime_ns for path in EXAMPLE.rglob("*")}
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": f"{fake.url}/v1", "HF_BACKOFF_FACTOR": "0"}
        server = Server("--root", str(EXAMPLE), "--workers", "1", env=env)
        try:
            response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=30)
        finally:
            code, output = server.stop()
    assert code == 0, output[-2000:]
    assert response.status_code == 200 and len(fake.seen) == 1
    assert {path: path.stat().st_mtime_ns for path in EXAMPLE.rglob("*")} == stamp  # nothing new, nothing written


def test_a_ledger_file_of_the_previous_release_is_upgraded_in_place_and_a_hit_records_its_saving(project):
    state = project / ".contexis"
    state.mkdir()
    with sqlite3.connect(state / "usage.db") as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(FIRST_RELEASE_LEDGER)
    conn.close()
    enable_cache(project)
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url)
        assert [chat(app).headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
        written = rows(app)
        report = app.test_client().get("/api/v1/usage?by=context&since=1970-01-01").json
    assert [(r["request_id"] == "r-old", r["outcome"]) for r in written] == [(True, "ok"), (False, "ok"),
                                                                            (False, "cache_hit")]  # fmt: skip
    assert [(r["saved_tokens"], r["saved_usd"]) for r in written[:2]] == [(None, None), (None, None)]
    assert (written[2]["cost_usd"], written[2]["saved_tokens"]) == (0.0, 17)
    assert written[2]["saved_usd"] == pytest.approx(COST)
    with sqlite3.connect(state / "usage.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    (group,) = report["groups"]  # the old row and the new ones, all SupportBot's
    assert (group["calls"], group["cache_hits"], group["saved_tokens"]) == (3, 1, 17)
    assert group["saved_usd"] == pytest.approx(COST) and group["cost_usd"] == pytest.approx(0.001 + COST)


def test_a_ledger_locked_past_the_timeout_at_start_is_opened_later_not_a_worker_that_cannot_boot(project, caplog):
    state = project / ".contexis"
    state.mkdir()
    # The lock a last connection holds while it checkpoints a long WAL as it closes (seconds, on a busy disk).
    holder = sqlite3.connect(state / "usage.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_USAGE_TIMEOUT="0.2")
        assert "usage ledger locked at start, opened later" in caplog.text
        assert chat(app, tenant_id="acme").status_code == 200
        assert app.extensions["contexis"].meter.ledger.flush() is False  # still locked: the row waits in the queue
        holder.execute("COMMIT")
        holder.close()
        written = rows(app)
    assert [(r["tenant"], r["outcome"], r["saved_usd"]) for r in written] == [("acme", "ok", None)]


# -- PostgreSQL: replicas -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def usage_pg(postgres: Postgres) -> str:
    """A database of its own for the ledger, migrated by `ctx usage migrate` (twice: it is safe to repeat)."""
    url = postgres.database("usage_ledger")
    first = run("usage", "migrate", env={"CMP_USAGE_URL": url})
    again = run("usage", "migrate", env={"CMP_USAGE_URL": url})
    assert first.returncode == 0, first.stderr
    assert "usage schema version 2 (migrated from version 0)" in first.stdout
    assert "usage schema version 2 (up to date)" in again.stdout
    return url


@pytest.fixture
def pg_url(usage_pg: str, postgres: Postgres) -> str:
    postgres.admin("TRUNCATE usage_calls, usage_daily", database="usage_ledger")
    return usage_pg


def test_two_runtimes_on_postgresql_share_one_budget_and_it_stays_spent(project, pg_url, postgres):
    path = budgets(project, {"tenants": {"acme": {"tokens_per_day": 85}}})  # five calls
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        extra = {"CMP_USAGE_URL": pg_url, "CMP_BUDGETS": path, "CMP_BUDGET_CACHE_SECONDS": "0"}
        replicas = [usage_app(project, fake.url, **extra), usage_app(project, fake.url, **extra)]
        statuses = []
        for n in range(8):
            replica = replicas[n % 2]
            statuses.append(chat(replica, tenant_id="acme").status_code)
            replica.extensions["contexis"].meter.ledger.flush()
        assert statuses == [200] * 5 + [429] * 3
        restarted = usage_app(project, fake.url, **extra)
        assert chat(restarted, tenant_id="acme").status_code == 429
        assert len(fake.seen) == 5
    (count, tokens) = postgres.admin(
        "SELECT count(*), sum(prompt_tokens + completion_tokens) FROM usage_calls", database="usage_ledger"
    )[0]
    assert (count, tokens) == (5, 85)
    report = run("usage", "report", "--by", "key", "--json", env={"CMP_USAGE_URL": pg_url})
    assert json.loads(report.stdout)["total"]["calls"] == 5, report.stderr
    assert json.loads(report.stdout)["total"]["cost_usd"] == pytest.approx(5 * COST)


def test_a_ledger_that_cannot_be_reached_lets_calls_through_and_keeps_their_rows(project, caplog):
    from helpers import free_port

    down = f"postgresql://contexis@127.0.0.1:{free_port()}/usage"
    path = budgets(project, {"default": {"tokens_per_day": 1000}})
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_USAGE_URL=down, CMP_BUDGETS=path, CMP_USAGE_TIMEOUT="0.5")
        assert chat(app, tenant_id="acme").status_code == 200
        assert app.test_client().get("/readyz").status_code == 200
        ledger = app.extensions["contexis"].meter.ledger
        assert ledger.flush() is False  # refused: kept for the next try
    assert len(ledger._rows) == 1
    assert "budget not read from the ledger" in caplog.text and "usage ledger not written" in caplog.text
    assert "contexis@" not in caplog.text
    ledger._rows.clear()  # nothing left for this process's exit to try again


def test_a_password_in_the_ledger_urls_query_reaches_no_log_error_or_report(project, caplog):
    from helpers import free_port

    secret = "PG_query_SECRET_pw"
    down = f"postgresql://contexis@127.0.0.1:{free_port()}/usage?password={secret}&connect_timeout=1"
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_USAGE_URL=down, CMP_USAGE_TIMEOUT="0.5")
        assert chat(app, tenant_id="acme").status_code == 200
        report = app.test_client().get("/api/v1/usage")
        ledger = app.extensions["contexis"].meter.ledger
        assert ledger.flush() is False
    ledger._rows.clear()  # nothing left for this process's exit to try again
    assert report.status_code == 503 and "127.0.0.1" in report.json["error"]["message"]
    assert secret not in report.get_data(as_text=True) and secret not in caplog.text
    env = {"CMP_USAGE_URL": down, "CMP_USAGE_TIMEOUT": "0.5"}
    for argv in (("usage", "report"), ("usage", "migrate")):
        result = run(*argv, "--root", str(project), env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "127.0.0.1" in result.stderr and secret not in result.stderr + result.stdout


def test_an_unmigrated_postgresql_ledger_is_named_by_readyz(project, postgres):
    url = postgres.database("usage_unmigrated")
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url, CMP_USAGE_URL=url)
        ready = app.test_client().get("/readyz")
    assert ready.status_code == 503
    assert "run `ctx usage migrate`" in ready.json["reason"]
    report = run("usage", "report", env={"CMP_USAGE_URL": url})
    assert report.returncode == 1
    assert "usage_unavailable: usage ledger schema missing" in report.stderr and "Traceback" not in report.stderr
    assert "contexis@" not in report.stderr


def test_a_postgresql_ledger_of_the_previous_release_is_migrated_then_records_what_hits_saved(project, postgres):
    import psycopg

    from app.usage.postgres import MIGRATIONS

    url = postgres.database("usage_first_release")
    with psycopg.connect(url, autocommit=True) as conn:  # what the first release's `ctx usage migrate` made
        conn.execute("CREATE TABLE usage_schema (version integer NOT NULL)")
        conn.execute(MIGRATIONS[0])
        conn.execute("INSERT INTO usage_schema (version) VALUES (1)")
        conn.execute(
            "INSERT INTO usage_calls (ts, request_id, tenant, context, route, model, endpoint, stream,"
            " prompt_tokens, completion_tokens, estimated, cost_usd, latency_ms, outcome) VALUES"
            " (%s, 'r-old', 'acme', 'SupportBot', '/api/v1/chat', 'm', 'e', false, 12, 5, false, 0.001, 3, 'ok')",
            (time.time() - 60,),
        )
    enable_cache(project)
    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        behind = usage_app(project, fake.url, CMP_USAGE_URL=url).test_client().get("/readyz")
        assert behind.status_code == 503
        assert "is version 1, expected 2: run `ctx usage migrate`" in behind.json["reason"]
        migrated = run("usage", "migrate", env={"CMP_USAGE_URL": url})
        assert "usage schema version 2 (migrated from version 1)" in migrated.stdout, migrated.stderr
        app = usage_app(project, fake.url, CMP_USAGE_URL=url)
        assert app.test_client().get("/readyz").status_code == 200
        assert [chat(app, tenant_id="acme").headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
        assert app.extensions["contexis"].meter.ledger.flush()
        report = app.test_client().get("/api/v1/usage?by=tenant").json
        # A later release's migration, while this release's pods still serve: they stay ready.
        postgres.admin("INSERT INTO usage_schema (version) VALUES (3)", database="usage_first_release")
        assert usage_app(project, fake.url, CMP_USAGE_URL=url).test_client().get("/readyz").status_code == 200
    found = postgres.admin(
        "SELECT request_id, outcome, cost_usd, saved_tokens, saved_usd FROM usage_calls ORDER BY id",
        database="usage_first_release",
    )
    assert [row[:2] for row in found] == [("r-old", "ok"), (found[1][0], "ok"), (found[2][0], "cache_hit")]
    assert found[0][3:] == (None, None) and found[1][3:] == (None, None)
    assert found[2][2:4] == (0.0, 17) and found[2][4] == pytest.approx(COST)
    (group,) = report["groups"]
    assert (group["calls"], group["cache_hits"], group["errors"], group["saved_tokens"]) == (3, 1, 0, 17)
    assert group["saved_usd"] == pytest.approx(COST) and group["cost_usd"] == pytest.approx(0.001 + COST)


def test_ctx_usage_leaves_prometheus_unimported_until_serve_sets_it_up():
    # `ctx serve` builds the whole parser before gunicorn's config picks the multiprocess directory;
    # prometheus_client imported earlier would keep each worker's metrics in memory, out of /metrics.
    code = "from app.cli import build_parser; build_parser(); import sys; print('prometheus_client' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert found.stdout.strip() == "False"


def test_each_serving_worker_reads_the_router_catalog_for_prices(project, tmp_path, monkeypatch):
    from types import SimpleNamespace

    # Importing gunicorn's settings picks a multiprocess directory unless one is set: keep it to this test.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    from app import gunicorn_conf

    with FakeHF(Reply(body=completion("Hi", usage=USAGE))) as fake:
        app = usage_app(project, fake.url)
        prices = app.extensions["contexis"].meter.prices
        gunicorn_conf.post_worker_init(SimpleNamespace(wsgi=app))
        assert fake.catalog_reads == 0  # not the router: its /models lists no prices
        prices.read = True  # as for HF_ENDPOINT on router.huggingface.co
        gunicorn_conf.post_worker_init(SimpleNamespace(wsgi=app))
        deadline = time.monotonic() + 5
        while fake.catalog_reads == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        prices.catalog.close()
    assert fake.catalog_reads == 1


def _row(n: int, outcome: str = "ok", tokens: int = 3) -> Row:
    return Row(
        ts=1_700_000_000.0 + n,
        request_id=f"req-{n}",
        tenant="acme",
        key_id=None if n % 2 else "key-1",
        context="SupportBot",
        route="/api/v1/chat",
        model=MODEL,
        served_model=None,
        endpoint="cache" if outcome == "cache_hit" else "https://router.huggingface.co/v1",
        stream=bool(n % 3),
        prompt_tokens=tokens,
        completion_tokens=0 if outcome == "cache_hit" else n,
        cached_tokens=None,
        reasoning_tokens=None,
        estimated=n % 5 == 0,
        cost_usd=0.0 if outcome == "cache_hit" else n / 1e6,
        latency_ms=n / 10,
        outcome=outcome,
    )


def test_a_batch_of_any_size_is_written_whole_within_sqlites_parameter_limit(tmp_path):
    ledger = SQLiteLedger(tmp_path, 2.0)
    assert ledger._writer_conn is not None
    ledger._writer_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # SQLite's before 3.32
    rows, n = [], 0
    for size in (1, 255, 256, 257, 1000):
        batch = [_row(n + i) for i in range(size)]
        n += size
        ledger._write(batch)
        rows += batch
    with sqlite3.connect(tmp_path / "usage.db") as conn:
        stored = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM usage_calls ORDER BY id").fetchall()  # noqa: S608
    assert stored == rows  # bools as 1/0, None as NULL, as they were bound


def test_a_row_that_adds_nothing_keeps_no_owner_and_a_written_one_waits_for_nothing(tmp_path):
    ledger = SQLiteLedger(tmp_path, 2.0)
    ledger.record(_row(1, "cache_hit", tokens=0)._replace(tenant="cached-only"))
    ledger.record(_row(2))
    assert ledger.flush()
    assert ledger.own("tenant", "cached-only") is None
    own = ledger.own("tenant", "acme")
    assert own is not None and own.queued == 0 and own.flushed_tokens == 5

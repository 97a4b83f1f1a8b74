"""The response cache through both APIs and their streams: hits, misses by construction (a template edit, another
tenant, another history), what is never cached, semantic hits with the embedder stand-in, every backend (SQLite
shared by default, memory://, a real Redis shared by two gunicorn workers, a Redis that is down)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fake_hf import FakeHF, Reply, Stream, ToolModel, chat_events, completion
from helpers import GUIDE_BODY, MODEL, TOKEN, Server, ToolBackend, free_port, metric, run, sse_events
from helpers_cache import CONTEXT, USAGE, ask, enable_cache, include_tone, numbered, openai

from app import create_app
from app.cache.memory import MemoryCache
from app.cache.sqlite import TOUCH_SECONDS, SqliteCache
from app.cache.store import Entry, pack
from app.web.runtime import RUNTIME_KEY


def test_a_second_identical_request_is_a_hit_on_both_apis(cached):
    model, app = cached()
    client = app.test_client()
    first, second = ask(client), ask(client)
    assert first.headers["X-Contexis-Cache"] == "miss" and second.headers["X-Contexis-Cache"] == "hit"
    assert first.json["rendered"] == second.json["rendered"] == "answer 1"
    assert second.json["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}  # nothing generated
    assert second.json["sources"] == first.json["sources"]
    # The same question through the OpenAI surface is the same pipeline input: the same entry.
    same = openai(client)
    assert (same.headers["X-Contexis-Cache"], same.json["choices"][0]["message"]["content"]) == ("hit", "answer 1")
    one, two = openai(client, "where is my parcel"), openai(client, "where is my parcel")
    assert (one.headers["X-Contexis-Cache"], two.headers["X-Contexis-Cache"]) == ("miss", "hit")
    assert two.json["choices"][0]["message"]["content"] == one.json["choices"][0]["message"]["content"] == "answer 2"
    assert two.json["usage"]["total_tokens"] == 0
    assert len(model.seen) == 2
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="hit") == 3
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="miss") == 2
    assert metric(app, "cmp_cache_saved_tokens_total", context=CONTEXT) == 3 * 50


def test_a_cached_answer_replays_as_a_stream_with_the_same_event_shapes(cached):
    streamed = Stream(chat_events(["Hel", "lo", " there"], USAGE))
    model, app = cached(streamed, Reply(body=completion("whole", USAGE)))
    client = app.test_client()
    miss = ask(client, stream=True)
    missed = sse_events(miss)  # kept once the stream has ended whole
    hit = ask(client, stream=True)
    assert (miss.headers["X-Contexis-Cache"], hit.headers["X-Contexis-Cache"]) == ("miss", "hit")
    replayed = sse_events(hit)
    text = lambda events: "".join(data.get("delta", "") for _, data in events)  # noqa: E731
    assert text(missed) == text(replayed) == "Hello there"
    assert [set(data) for _, data in replayed] == [{"delta"}, set(missed[-1][1])]
    assert replayed[-1][1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert replayed[-1][1]["sources"] == missed[-1][1]["sources"]
    # A streamed answer serves a whole one, and the other way round: one entry per question.
    assert ask(client).json["rendered"] == "Hello there"
    assert len(model.seen) == 1


def test_openai_streams_replay_as_chunks(cached):
    model, app = cached()
    client = app.test_client()
    openai(client, "where is my parcel")  # whole, then as a stream from the cache
    hit = openai(client, "where is my parcel", stream=True, stream_options={"include_usage": True})
    assert hit.headers["X-Contexis-Cache"] == "hit"
    events = [data for _, data in sse_events(hit.get_data(as_text=True).replace("data: [DONE]\n\n", ""))]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "answer 1"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len(model.seen) == 1


def test_a_template_edit_is_a_miss(cached, project):
    _, app = cached()
    client = app.test_client()
    assert ask(client).json["rendered"] == "answer 1"
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text(template.read_text() + "\nAnswer in one sentence.\n")
    after = ask(client)
    assert (after.headers["X-Contexis-Cache"], after.json["rendered"]) == ("miss", "answer 2")
    assert ask(client).headers["X-Contexis-Cache"] == "hit"


def renders(app) -> float:
    return metric(app, "cmp_prompt_render_duration_seconds_count", component=CONTEXT)


def test_a_hit_renders_nothing_and_an_edit_of_what_the_template_includes_is_a_miss(cached, project):
    _, app = cached()
    client = app.test_client()
    tone = include_tone(project)
    assert ask(client).headers["X-Contexis-Cache"] == "miss"
    assert ask(client).headers["X-Contexis-Cache"] == "hit"
    assert renders(app) == 1  # the template's version and variables told the prompt: the hit rendered nothing
    tone.write_text("Be brief and warm.\n")
    os.utime(tone, (time.time() + 5, time.time() + 5))  # a new mtime, however coarse the clock
    after = ask(client)
    assert (after.headers["X-Contexis-Cache"], after.json["rendered"]) == ("miss", "answer 2")
    assert ask(client).headers["X-Contexis-Cache"] == "hit"


def test_what_the_template_reads_of_the_request_is_in_the_key_and_what_it_does_not_is_not(cached, project):
    _, app = cached()
    client = app.test_client()
    # SupportBot's template does not show `query`: two queries finding nothing in memory are the same prompt.
    assert ask(client, query="zzz", top_k=1).headers["X-Contexis-Cache"] == "miss"
    assert ask(client, query="qqq", top_k=1).headers["X-Contexis-Cache"] == "hit"
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text("Searched for: {{ query }}\n" + template.read_text())
    assert ask(client, query="zzz", top_k=1).headers["X-Contexis-Cache"] == "miss"
    assert ask(client, query="qqq", top_k=1).headers["X-Contexis-Cache"] == "miss"
    assert ask(client, query="qqq", top_k=1).headers["X-Contexis-Cache"] == "hit"


def test_a_template_that_only_its_text_tells_is_rendered_and_keyed_on_the_text(cached, project):
    _, app = cached()
    client = app.test_client()
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text('Greeting: {{ ["Hello"] | random }}\n' + template.read_text())  # one choice: one text
    assert [ask(client).headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
    assert renders(app) == 2


def test_a_mapping_in_another_order_is_another_prompt(cached, project):
    _, app = cached()
    client = app.test_client()
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text("{% for k, v in profile.items() %}{{ k }}={{ v }} {% endfor %}\n" + template.read_text())
    one, two = ({"plan": "free", "tier": "gold"}, {"tier": "gold", "plan": "free"})
    answers = [ask(client, data={"user_input": "hello", "profile": profile}) for profile in (one, two, one)]
    assert [a.headers["X-Contexis-Cache"] for a in answers] == ["miss", "miss", "hit"]


@pytest.mark.parametrize("section", [{}, {"semantic": 0.9}])
def test_a_template_changed_between_key_and_render_is_answered_but_not_kept(cached, project, monkeypatch, section):
    _, app = cached(embed=bool(section), section=section)
    client = app.test_client()
    tone = include_tone(project)
    renderer = app.extensions[RUNTIME_KEY].prompts
    render_file = renderer.render_file

    def edited_first(prompt, variables):
        tone.write_text("Be warm.\n")  # the key was made of "Be brief."; the render reads "Be warm."
        os.utime(tone, (time.time() + 10, time.time() + 10))
        return render_file(prompt, variables)

    monkeypatch.setattr(renderer, "render_file", edited_first)
    assert ask(client).json["rendered"] == "answer 1"
    monkeypatch.undo()
    tone.write_text("Be brief.\n")  # back to what the first key was made of
    os.utime(tone, (time.time() + 60, time.time() + 60))
    again = ask(client)  # the first answer came from "Be warm." and must not be served under "Be brief."'s key
    assert (again.headers["X-Contexis-Cache"], again.json["rendered"]) == ("miss", "answer 2")
    assert ask(client).headers["X-Contexis-Cache"] == "hit"


def test_a_template_edit_is_a_miss_for_similar_questions_too(cached, project):
    _, app = cached(embed=True, section={"semantic": 0.9})
    client = app.test_client()
    assert openai(client, "How do I get a refund?").headers["X-Contexis-Cache"] == "miss"
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text(template.read_text() + "\nAnswer in one sentence.\n")
    similar = openai(client, "Can I get my money back?")
    assert (similar.headers["X-Contexis-Cache"], similar.json["choices"][0]["message"]["content"]) == (
        "miss",
        "answer 2",
    )


def test_no_hit_across_tenants_or_histories(cached):
    _, app = cached()
    client = app.test_client()
    assert ask(client, tenant_id="acme").json["rendered"] == "answer 1"
    other = ask(client, tenant_id="globex")
    assert (other.headers["X-Contexis-Cache"], other.json["rendered"]) == ("miss", "answer 2")
    history = [{"role": "user", "content": "I ordered a lamp"}, {"role": "assistant", "content": "Noted."}]
    with_history = ask(client, tenant_id="acme", messages=history)
    assert (with_history.headers["X-Contexis-Cache"], with_history.json["rendered"]) == ("miss", "answer 3")
    other_history = [history[0], {"role": "assistant", "content": "Which lamp?"}]
    assert ask(client, tenant_id="acme", messages=other_history).json["rendered"] == "answer 4"
    assert ask(client, tenant_id="acme", messages=history).json["rendered"] == "answer 3"
    assert ask(client, tenant_id="acme").json["rendered"] == "answer 1"


def test_what_is_never_cached_and_cache_control(cached):
    _, app = cached()
    client = app.test_client()
    hot = openai(client, temperature=0.9)  # above max_temperature (0.5 by default)
    assert hot.headers["X-Contexis-Cache"] == "bypass"
    assert openai(client, temperature=0.9).json["choices"][0]["message"]["content"] == "answer 2"
    assert ask(client, headers={"Cache-Control": "no-store"}).headers["X-Contexis-Cache"] == "bypass"
    assert ask(client).headers["X-Contexis-Cache"] == "miss"  # no-store kept nothing
    assert ask(client).json["rendered"] == "answer 4"
    refreshed = ask(client, headers={"Cache-Control": "no-cache"})
    assert (refreshed.headers["X-Contexis-Cache"], refreshed.json["rendered"]) == ("miss", "answer 5")
    assert ask(client).json["rendered"] == "answer 5"  # the refreshed answer replaced the old one
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="bypass") == 3


def test_errors_and_tool_calls_are_not_cached(cached):
    calls = completion(None, USAGE, finish_reason="tool_calls")
    calls["choices"][0]["message"]["tool_calls"] = [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ]
    model, app = cached(Reply(503, {"error": "overloaded"}), Reply(body=calls), numbered(), hf_max_retries=0)
    client = app.test_client()
    assert ask(client).status_code == 502
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    asked = openai(client, tools=tools)
    assert asked.json["choices"][0]["finish_reason"] == "tool_calls"
    assert asked.headers["X-Contexis-Cache"] == "miss"
    again = openai(client, tools=tools)  # the client's tool calls were not kept: the model answers anew
    assert (again.headers["X-Contexis-Cache"], again.json["choices"][0]["message"]["content"]) == ("miss", "answer 1")
    assert openai(client, tools=tools).headers["X-Contexis-Cache"] == "hit"
    assert ask(client).headers["X-Contexis-Cache"] == "miss"  # the error was not kept
    assert len(model.seen) == 4


def test_a_context_with_side_effect_tools_is_not_cached(cached, project):
    model, app = cached()
    path = project / "contexts" / CONTEXT / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    context["tools"] = [{"name": "refund", "http": {"method": "POST", "url": "https://shop.test/refund"}}]
    path.write_text(yaml.safe_dump(context))
    client = app.test_client()
    assert [ask(client).headers["X-Contexis-Cache"] for _ in range(2)] == ["bypass", "bypass"]
    context["tools"][0]["http"]["method"] = "GET"  # reads only: cached
    path.write_text(yaml.safe_dump(context))
    assert [ask(client).headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
    assert len(model.seen) == 3


def test_a_context_without_cache_pays_nothing(hf_settings, project):
    with FakeHF(numbered()) as model:
        app = create_app(hf_settings.replace(hf_endpoint=f"{model.url}/v1"))
        client = app.test_client()
        first, second = ask(client), ask(client)
    assert "X-Contexis-Cache" not in first.headers and second.json["rendered"] == "answer 2"
    assert not (project / ".contexis" / "cache.sqlite3").exists()  # no store was even opened


def test_semantic_hit_and_near_miss(cached):
    _, app = cached(embed=True, section={"semantic": 0.9})
    client = app.test_client()
    assert openai(client, "How do I get a refund?").json["choices"][0]["message"]["content"] == "answer 1"
    similar = openai(client, "Can I get my money back?")
    assert similar.headers["X-Contexis-Cache"] == "semantic-hit"
    assert similar.json["choices"][0]["message"]["content"] == "answer 1"
    near_miss = openai(client, "How do I reset my password?")
    assert near_miss.headers["X-Contexis-Cache"] == "miss"
    assert near_miss.json["choices"][0]["message"]["content"] == "answer 2"
    # Only single-turn requests: the same question after a history is asked anew.
    body = {"data": {"user_input": "Can I get my money back?"}, "messages": [{"role": "user", "content": "hi"}]}
    assert ask(client, {**GUIDE_BODY, **body}).headers["X-Contexis-Cache"] == "miss"
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="semantic-hit") == 1


def test_a_request_whose_render_fails_gets_its_error_not_a_similar_question_s_answer(cached, project):
    _, app = cached(embed=True, section={"semantic": 0.9})
    client = app.test_client()
    template = project / "prompts" / "SupportBot" / "agent_response.md"
    template.write_text("Customer: {{ name }}\n" + template.read_text())
    body = {**GUIDE_BODY, "data": {"user_input": "How do I get a refund?", "name": "Ann"}}
    assert ask(client, body).headers["X-Contexis-Cache"] == "miss"
    similar = {**GUIDE_BODY, "data": {"user_input": "Can I get my money back?"}}  # no `name`: a 422 before the cache
    refused = ask(client, similar)
    assert refused.status_code == 422 and "name" in refused.json["error"]["message"]
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="semantic-hit") == 0


def test_semantic_degrades_to_exact_when_the_embedder_fails(cached, hf_settings):
    _, app = cached(embed=True, section={"semantic": 0.9})
    broken = create_app(
        app.extensions["contexis"].settings.replace(hf_embed_endpoint=f"http://127.0.0.1:{free_port()}")
    )
    client = broken.test_client()
    assert openai(client, "How do I get a refund?").headers["X-Contexis-Cache"] == "miss"
    assert openai(client, "Can I get my money back?").headers["X-Contexis-Cache"] == "miss"
    assert openai(client, "How do I get a refund?").headers["X-Contexis-Cache"] == "hit"


def test_sqlite_is_shared_by_runtimes_of_one_project(cached, project):
    _, app = cached()
    assert ask(app.test_client()).headers["X-Contexis-Cache"] == "miss"
    other = create_app(app.extensions["contexis"].settings)  # another worker of the pod
    assert ask(other.test_client()).headers["X-Contexis-Cache"] == "hit"
    assert (project / ".contexis" / "cache.sqlite3").is_file()


def test_memory_url_keeps_answers_per_process(cached):
    _, app = cached(cache_url="memory://")
    client = app.test_client()
    assert [ask(client).headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
    other = create_app(app.extensions["contexis"].settings)
    assert ask(other.test_client()).headers["X-Contexis-Cache"] == "miss"


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_stores_are_bounded_least_recently_used_first(tmp_path, store):
    cache = SqliteCache(tmp_path / "cache.sqlite3", 3000) if store == "sqlite" else MemoryCache(3000)
    for name in "abc":
        cache.put(Entry("", CONTEXT, name, b"x" * 1000, 60))
        time.sleep(0.01)
    time.sleep(TOUCH_SECONDS)  # SQLite moves an answer up the LRU at most once a second
    assert cache.get("", CONTEXT, "a") is not None  # a is now the most recently used
    time.sleep(0.01)
    cache.put(Entry("", CONTEXT, "d", b"x" * 1000, 60))
    assert [cache.get("", CONTEXT, name) is not None for name in "abcd"] == [True, False, True, True]
    assert cache.get("acme", CONTEXT, "a") is None  # another tenant's digest is not found
    cache.put(Entry("", CONTEXT, "e", b"x" * 10, 0.05))
    time.sleep(0.1)
    assert cache.get("", CONTEXT, "e") is None  # expired
    near = pack([1.0, 0.0, 0.1])
    cache.put(Entry("", CONTEXT, "f", b"found", 60, "scope", pack([1.0, 0.0, 0.0])))
    assert cache.nearest("", CONTEXT, "scope", near, 0.99) == b"found"
    assert cache.nearest("", CONTEXT, "scope", pack([0.0, 1.0, 0.0]), 0.5) is None
    assert cache.nearest("", CONTEXT, "other", near, 0.5) is None


def test_ctx_cache_stats_and_clear(cached, project):
    _, app = cached()
    client = app.test_client()
    ask(client, tenant_id="acme")
    time.sleep(TOUCH_SECONDS)  # hits are written at most once a second per answer
    ask(client, tenant_id="acme")
    ask(client, tenant_id="globex")
    stats = run("cache", "stats", "--root", str(project))
    assert stats.returncode == 0, stats.stderr
    rows = [line.split() for line in stats.stdout.splitlines()[1:-1]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("acme", CONTEXT, "1", "1"), ("globex", CONTEXT, "1", "0")]
    cleared = run("cache", "clear", "--root", str(project), "--tenant", "acme")
    assert cleared.returncode == 0 and "removed 1 cached answers" in cleared.stdout
    assert ask(client, tenant_id="acme").headers["X-Contexis-Cache"] == "miss"
    assert ask(client, tenant_id="globex").headers["X-Contexis-Cache"] == "hit"
    refused = run("cache", "clear", "--root", str(project), "--context", "../etc")
    assert refused.returncode == 2 and "not a valid name" in refused.stderr


def test_redis_is_shared_by_two_gunicorn_workers(project, redis_server):
    enable_cache(project)
    with FakeHF(numbered()) as model:
        env = {
            "HF_TOKEN": TOKEN,
            "HF_MODEL_ID": MODEL,
            "HF_ENDPOINT": f"{model.url}/v1",
            "CMP_CACHE_URL": redis_server.url,
        }
        server = Server("--root", str(project), "--workers", "2", "--threads", "4", env=env)
        try:

            def post(_: int) -> tuple[int, str, str]:
                response = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
                return response.status_code, response.headers.get("X-Contexis-Cache", ""), response.json()["rendered"]

            first = post(0)
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(post, range(40)))
            scraped = requests.get(f"{server.url}/metrics", timeout=10).text
        finally:
            _, output = server.stop()
    assert first == (200, "miss", "answer 1"), output[-2000:]
    assert answers == [(200, "hit", "answer 1")] * 40
    assert len(model.seen) == 1  # not once per worker
    assert f'cmp_cache_requests_total{{context="{CONTEXT}",result="hit"}} 40.0' in scraped
    assert not (project / ".contexis" / "cache.sqlite3").exists()  # Redis holds the answers


def test_redis_down_is_a_counted_miss_and_requests_are_answered(cached):
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    _, app = cached(cache_url=url)
    client = app.test_client()
    started = time.monotonic()
    answers = [ask(client) for _ in range(3)]
    assert time.monotonic() - started < 3  # one connect timeout (0.5 s), then not asked again for a while
    assert [(a.status_code, a.headers["X-Contexis-Cache"]) for a in answers] == [(200, "miss")] * 3
    assert [a.json["rendered"] for a in answers] == ["answer 1", "answer 2", "answer 3"]
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="miss") == 3
    assert metric(app, "cmp_cache_storage_errors_total") >= 1
    scraped = client.get("/metrics").get_data(as_text=True)
    assert "hunter2secret" not in scraped and "hunter2secret" not in json.dumps([a.json for a in answers])


@pytest.mark.parametrize("section", [{"ttl": -1}, {"ttl": 60, "semantic": 1.5}, {"ttl": 60, "size": 3}])
def test_an_invalid_cache_section_is_refused(project, settings, section):
    path = project / "contexts" / CONTEXT / "supportbot.ctx"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "cache": section}))
    answer = ask(create_app(settings).test_client())
    assert (answer.status_code, answer.json["error"]["code"]) == (500, "invalid_context")
    assert "Traceback" not in answer.get_data(as_text=True)


def test_the_responses_api_is_cached_too(cached):
    model, app = cached()
    client = app.test_client()
    body = {"model": CONTEXT, "input": "where is my parcel"}
    first, second = (client.post("/v1/responses", json=body) for _ in range(2))
    assert (first.headers["X-Contexis-Cache"], second.headers["X-Contexis-Cache"]) == ("miss", "hit")
    text = lambda answer: answer.json["output"][0]["content"][0]["text"]  # noqa: E731
    assert text(first) == text(second) == "answer 1"
    assert second.json["usage"]["output_tokens"] == 0
    streamed = client.post("/v1/responses", json={**body, "stream": True})
    assert streamed.headers["X-Contexis-Cache"] == "hit"
    events = [data for _, data in sse_events(streamed)]
    assert "".join(e.get("delta", "") for e in events if e["type"] == "response.output_text.delta") == "answer 1"
    assert events[-1]["type"] == "response.completed"
    assert len(model.seen) == 1


def tool_desk(project: Path, tool_url: str, method: str, model_url: str, hf_settings) -> Any:
    """A context whose one http tool is `method` `tool_url`, caching, in front of fake_hf's ToolModel."""
    path = project / "contexts" / "Desk" / "desk.ctx"
    path.parent.mkdir(parents=True)
    tool = {"name": "order", "parameters": {"type": "object"}, "http": {"method": method, "url": tool_url}}
    context = {"name": "Desk", "tools": [tool], "cache": {"ttl": 3600}, "guardrails": {"temperature": 0.2}}
    path.write_text(yaml.safe_dump(context))
    prompt = project / "prompts" / "Desk" / "agent_response.md"
    prompt.parent.mkdir(parents=True)
    prompt.write_text("User: {{ user_input }}\n")
    return create_app(hf_settings.replace(hf_endpoint=model_url, hf_api="chat-completion"))


@pytest.mark.parametrize(("method", "results"), [("GET", ["miss", "hit"]), ("POST", ["bypass", "bypass"])])
def test_answers_of_context_tools_are_cached_only_without_side_effects(project, hf_settings, method, results):
    with ToolModel() as model, ToolBackend() as backend:
        app = tool_desk(project, f"{backend.url}/orders/A-1", method, model.url, hf_settings)
        body = {"context": "Desk", "data": {"user_input": "use:order"}}
        answers = [app.test_client().post("/api/v1/chat", json=body) for _ in range(2)]
    assert [a.headers["X-Contexis-Cache"] for a in answers] == results
    assert (
        answers[0].json["rendered"]
        == answers[1].json["rendered"]
        == 'Tool results: {"order": "A-1", "status": "shipped"}'
    )
    # A hit runs no tool and calls no model; a tool with side effects runs for every request.
    assert len(backend.seen) == (1 if method == "GET" else 2)
    assert len(model.seen) == (2 if method == "GET" else 4)


def test_a_hit_is_a_ledger_row_with_cost_zero_and_the_saving_which_the_reports_show(cached, project):
    prices = project / "prices.yaml"
    prices.write_text(yaml.safe_dump({MODEL: {"input": 1.0, "output": 2.0}}))  # USD per million tokens
    _, app = cached(model_prices_file=str(prices))
    client = app.test_client()
    ask(client)
    assert ask(client).headers["X-Contexis-Cache"] == "hit"
    ledger = app.extensions["contexis"].meter.ledger
    assert ledger.flush()
    with sqlite3.connect(ledger.path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(row) for row in conn.execute("SELECT * FROM usage_calls ORDER BY id")]
        daily = [tuple(row) for row in conn.execute("SELECT kind, tokens, usd FROM usage_daily WHERE kind = 'tenant'")]
    assert [(r["outcome"], r["completion_tokens"]) for r in rows] == [("ok", 10), ("cache_hit", 0)]
    assert rows[0]["cost_usd"] == pytest.approx(60e-6) and rows[1]["cost_usd"] == 0.0
    assert rows[1]["model"] == MODEL and rows[1]["endpoint"] == "cache"
    # What the hit saved: the original answer's 40 + 10 tokens and its price, in the hit's row only.
    assert (rows[1]["saved_tokens"], rows[1]["saved_usd"]) == (50, pytest.approx(40e-6 + 20e-6))
    assert (rows[0]["saved_tokens"], rows[0]["saved_usd"]) == (None, None)
    assert daily == [("tenant", 50, pytest.approx(60e-6))]  # budgets count the generated answer, nothing for the hit
    assert metric(app, "cmp_cache_saved_usd_total", context=CONTEXT) == pytest.approx(40e-6 + 20e-6)

    report = client.get("/api/v1/usage?by=context").json
    (group,) = report["groups"]
    assert (group["calls"], group["cache_hits"], group["errors"], group["total_tokens"]) == (2, 1, 0, 50)
    assert (group["saved_tokens"], group["saved_usd"]) == (50, pytest.approx(60e-6))
    assert report["total"]["saved_usd"] == pytest.approx(60e-6) and report["total"]["cache_hits"] == 1
    table = run("usage", "report", "--by", "context", "--root", str(project)).stdout.splitlines()
    line = dict(zip(table[1].split(), table[2].split(), strict=True))
    assert line | {"saved_usd": "0.000060", "cache_hits": "1", "errors": "0"} == line
    csv_out = run("usage", "report", "--by", "context", "--csv", "--root", str(project)).stdout.splitlines()
    assert csv_out[0].endswith(",errors,cache_hits,saved_tokens,saved_usd")
    assert csv_out[1].endswith(",0,1,50,0.000060")


def test_an_answer_orjson_cannot_write_is_kept_and_read_back():
    from app.cache import CachedAnswer

    answer = CachedAnswer("half a pair: \ud83d", MODEL, None, "stop", [{"id": "a", "source": "s", "score": 1.0}], 3, 4)
    assert CachedAnswer.decode(answer.encode()) == answer


def test_the_lock_hash_is_part_of_the_version(cached, project):
    from app.lock import ProjectLock

    _, app = cached()
    ProjectLock(project).write()
    locked = create_app(app.extensions["contexis"].settings)  # a process started on the locked project
    assert [ask(locked.test_client()).headers["X-Contexis-Cache"] for _ in range(2)] == ["miss", "hit"]
    (project / "docs" / "CustomerDocs" / "new.md").write_text("A new document memory is built from.\n")
    ProjectLock(project).write()  # another lock: another version, though the context did not change
    relocked = create_app(app.extensions["contexis"].settings)
    assert ask(relocked.test_client()).headers["X-Contexis-Cache"] == "miss"


def test_an_answer_kept_before_the_guardrails_changed_is_not_served_after(cached, project):
    # The environment's guardrails are every context's default (CMP_PII_MODE): an operator turning redaction on
    # must not see the answers kept while it was off served as they were.
    path = project / "contexts" / CONTEXT / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    context["guardrails"].pop("pii")
    path.write_text(yaml.safe_dump(context))
    card = "4111 1111 1111 1111"
    model, app = cached(Reply(body=completion(f"card {card}", USAGE)))
    assert ask(app.test_client()).json["rendered"] == f"card {card}"  # pii off: kept as it is
    redacting = create_app(app.extensions["contexis"].settings.replace(pii_mode="redact"))
    again = ask(redacting.test_client())
    assert again.headers["X-Contexis-Cache"] == "miss"
    assert again.json["rendered"] == "card <CREDIT_CARD>"
    assert len(model.seen) == 2


def test_a_cache_url_redis_py_cannot_use_stops_ctx_serve_before_it_starts(project):
    enable_cache(project)
    env = {"CMP_CACHE_URL": "redis://:hunter2secret@cache:notaport/0"}
    result = run("serve", "--root", str(project), "--addr", f"127.0.0.1:{free_port()}", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("ctx: CMP_CACHE_URL: the port after the host must be a number")
    assert "hunter2secret" not in result.stdout + result.stderr
    assert "Starting gunicorn" not in result.stdout + result.stderr


def test_cache_url_off_bypasses_every_caching_context(cached, project):
    model, app = cached(cache_url="off")
    client = app.test_client()
    answers = [ask(client), ask(client), openai(client, stream=True)]
    assert [a.headers["X-Contexis-Cache"] for a in answers] == ["bypass"] * 3
    assert [a.json["rendered"] for a in answers[:2]] == ["answer 1", "answer 2"]
    assert len(model.seen) == 3
    assert metric(app, "cmp_cache_requests_total", context=CONTEXT, result="bypass") == 3
    assert not (project / ".contexis" / "cache.sqlite3").exists()  # no store opened
    for command in ("stats", "clear"):
        said = run("cache", command, "--root", str(project), env={"CMP_CACHE_URL": "off"})
        assert said.returncode == 0
        assert said.stdout == "the response cache is off (CMP_CACHE_URL=off): no answers are kept\n"


@pytest.mark.parametrize("value", [b'{"text": "hi", "tone": "warm"}', b"\x00\xff not json"])
def test_a_cached_answer_that_cannot_be_read_is_answered_anew_and_replaced(cached, project, value):
    # Written by a version whose answers had other fields (a rolling deploy sharing one store), or damaged.
    _, app = cached()
    client = app.test_client()
    assert ask(client).json["rendered"] == "answer 1"
    with sqlite3.connect(project / ".contexis" / "cache.sqlite3") as conn:
        conn.execute("UPDATE answers SET value = ?", (value,))
    again = ask(client)
    assert (again.status_code, again.headers["X-Contexis-Cache"], again.json["rendered"]) == (200, "miss", "answer 2")
    assert metric(app, "cmp_cache_storage_errors_total") == 1
    assert (ask(client).headers["X-Contexis-Cache"], ask(client).json["rendered"]) == ("hit", "answer 2")

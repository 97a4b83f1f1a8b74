"""Hardening, third pass (issue 24): what a fault and abuse probe broke, on real parts.

SQLite memory under a low open-file limit in a real gunicorn, an upstream on a bare socket that drips its
head or a stream inside one HTTP chunk, gzips a stream, sends huge chunks or bytes that are not UTF-8.
(PostgreSQL stopped with SIGSTOP is in test_memory_postgres.py.)
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
from fake_hf import STREAM_HEAD, FakeHF, RawHF, Reply, chat_events, http_chunk, raw
from helpers import EXAMPLE, GUIDE_BODY, KEYS_JSON, METRICS_KEY, MODEL, SEARCH_BODY, TOKEN, Server, bearer, metric, sdk

from app import create_app
from app.config import Settings
from app.memory.sqlite import SqliteStore

OPENAI_BODY = {"model": "SupportBot", "messages": [{"role": "user", "content": "hello"}]}
ROUTES = {"native": ("/api/v1/chat", GUIDE_BODY), "openai": ("/v1/chat/completions", OPENAI_BODY)}
FIRST_DELTA = "".join(chat_events(["Hel"])[:2]).encode()


def ask(app, route: str, stream: bool) -> tuple[int, str, float]:
    """(status, body, seconds) of one chat on `route` ("native" or "openai")."""
    path, body = ROUTES[route]
    started = time.monotonic()
    response = app.test_client().post(path, json={**body, "stream": stream}, buffered=False)
    text = b"".join(response.response).decode()
    response.close()
    return response.status_code, text, time.monotonic() - started


def upstream_app(hf_settings, upstream: RawHF, **changes):
    return create_app(hf_settings.replace(hf_endpoint=f"{upstream.url}/v1", **changes))

# -- 2. SQLite connections are bounded per process -----------------------------------------------------------


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_many_tenant_stores_under_a_low_open_file_limit_all_answer(tmp_path: Path) -> None:
    """16 threads x 40 tenant stores under `ulimit -n 512`: a connection kept per (thread, store) needed
    ~3 descriptors each (database, WAL, shared memory) and ran out; bounded connections all answer, and the
    worker's descriptors come back down."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    tenants = [f"t{number:02d}" for number in range(40)]
    for tenant in tenants:
        note = tmp_path / f"{tenant}.md"
        note.write_text(f"# {tenant}\n\nThe refund code of {tenant} is R-{tenant}.\n")
        SqliteStore(root, "CustomerDocs", tenant).ingest([note])
    server = Server("--root", str(root), "--workers", "1", "--threads", "16", open_files=512)
    try:
        (worker,) = server.workers()
        before = open_files(worker)

        def ask(number: int) -> tuple[int, str]:
            tenant = tenants[number % len(tenants)]
            body = {**SEARCH_BODY, "tenant_id": tenant, "query": f"refund code {tenant}"}
            response = requests.post(f"{server.url}/api/v1/chat", json=body, timeout=30)
            return response.status_code, response.text

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(640)))
        failed = [text for status, text in answers if status != 200]
        assert not failed, f"{len(failed)} of 640 failed, first: {failed[0][:300]}"
        assert all("R-t" in text for _, text in answers)  # each tenant's own document was found
        assert open_files(worker) - before < 150, "connections are not bounded"
    finally:
        server.stop()


# -- 3. a gzip-encoded stream is inflated a piece at a time ---------------------------------------------------


def test_a_gzipped_stream_is_inflated_in_pieces_within_the_response_cap(hf_settings) -> None:
    """~64 KB of gzip holding 64 MB of keepalive comments, sent as one HTTP chunk: inflated whole it adds
    64 MB to the worker; in pieces the cap stops it at HF_MAX_RESPONSE_BYTES."""
    bomb = gzip.compress(FIRST_DELTA + b": keepalive\n\n" * (64 * 1024 * 1024 // 13), compresslevel=9)
    head = STREAM_HEAD + b"Content-Encoding: gzip\r\n\r\n"
    with RawHF(raw(head, http_chunk(bomb), b"0\r\n\r\n")) as upstream:
        app = upstream_app(hf_settings, upstream, hf_max_response_bytes=1_000_000)
        ask(app, "native", stream=True)  # warm: imports and first-use allocations are not the stream's
        tracemalloc.start()
        try:
            status, text, _ = ask(app, "native", stream=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert status == 200 and '"delta": "Hel"' in text.replace('":"', '": "')
    assert "hf_bad_response" in text and "HF_MAX_RESPONSE_BYTES=1000000" in text
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


# -- 4. HF_DEADLINE holds while the upstream drips its response head ----------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_dripping_response_head_ends_at_the_deadline(hf_settings, stream: bool) -> None:
    """Two bytes a second of header, each read well within HF_TIMEOUT: only the deadline can end it."""
    drip = [b"HTTP/1.1 200 OK\r\nX-Drip: "] + [b"ab", 0.5] * 16
    with RawHF(raw(drip)) as upstream:
        app = upstream_app(hf_settings, upstream, hf_deadline=1.5, hf_timeout=2.0, hf_max_retries=0)
        status, text, seconds = ask(app, "native", stream)
    assert seconds < 4, f"held {seconds:.1f}s past HF_DEADLINE=1.5s"
    assert status == 504 and json.loads(text)["error"]["code"] == "hf_timeout"
    assert "HF_DEADLINE=1.5s" in json.loads(text)["error"]["message"]
    assert metric(app, "cmp_hf_inference_errors_total", code="timeout") == 1


# -- 5. a stream that drips inside one HTTP chunk ends at the deadline ----------------------------------------


@pytest.mark.parametrize("route", ["native", "openai"])
def test_a_stream_dripping_inside_one_chunk_ends_at_the_deadline(hf_settings, route: str) -> None:
    """One chunk declared 1 MB long: the first event, then a byte every 0.1 s (each read within HF_TIMEOUT)."""
    parts = [STREAM_HEAD, b"\r\n", b"%x\r\n" % 1_000_000, FIRST_DELTA] + [b":", 0.1] * 60
    with RawHF(raw(parts)) as upstream:
        app = upstream_app(hf_settings, upstream, hf_deadline=1.5, hf_timeout=2.0)
        status, text, seconds = ask(app, route, stream=True)
    assert status == 200 and "Hel" in text
    assert "hf_timeout" in text and "HF_DEADLINE=1.5s" in text
    assert seconds < 4, f"held {seconds:.1f}s past HF_DEADLINE=1.5s"


# -- 6. a stream's cap holds inside a huge chunk --------------------------------------------------------------


def test_a_huge_chunk_is_read_in_pieces_and_stopped_at_the_cap(hf_settings) -> None:
    """A chunk of 24 MB of comments: read whole before the cap was checked; now a piece at a time."""
    comments = b": " + b"x" * (24 * 1024 * 1024) + b"\n\n"
    with RawHF(raw(STREAM_HEAD, b"\r\n", http_chunk(FIRST_DELTA + comments), b"0\r\n\r\n")) as upstream:
        app = upstream_app(hf_settings, upstream, hf_max_response_bytes=1_000_000)
        ask(app, "native", stream=True)
        tracemalloc.start()
        try:
            status, text, _ = ask(app, "native", stream=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert status == 200 and "hf_bad_response" in text and "HF_MAX_RESPONSE_BYTES=1000000" in text
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


def test_a_chunk_declaring_32_gb_is_the_cap_not_a_memory_error(hf_settings) -> None:
    endless = [b": "] + [b"x" * 65536] * 64  # 4 MB of a chunk that says it holds 32 GB
    with RawHF(raw(STREAM_HEAD, b"\r\n", b"%x\r\n" % (32 * 1024**3), FIRST_DELTA, endless)) as upstream:
        app = upstream_app(hf_settings, upstream, hf_max_response_bytes=1_000_000)
        status, text, _ = ask(app, "native", stream=True)
    assert status == 200 and "hf_bad_response" in text and "internal_error" not in text


# -- 9. bytes that are not UTF-8 in a stream event ------------------------------------------------------------


def test_invalid_utf8_in_a_stream_event_is_a_bad_response(hf_settings, caplog) -> None:
    broken = b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n'
    with RawHF(raw(STREAM_HEAD, b"\r\n", http_chunk(FIRST_DELTA), http_chunk(broken), b"0\r\n\r\n")) as upstream:
        app = upstream_app(hf_settings, upstream)
        status, text, _ = ask(app, "native", stream=True)
    assert status == 200 and "Hel" in text
    assert "hf_bad_response" in text and "UTF-8" in text and "internal_error" not in text
    assert "Traceback" not in caplog.text
    assert metric(app, "cmp_hf_inference_errors_total", code="invalid_response") == 1


# -- 7. templates and contexts edited in place -------------------------------------------------------------


def rewrite_in_place(path: Path, versions: list[str], stop: threading.Event) -> int:
    """Rewrite `path` in place (truncate, then write, as an editor without atomic saves does), alternating
    `versions` until `stop`; how many rewrites were made."""
    count = 0
    while not stop.is_set():
        with path.open("w", encoding="utf-8") as file:
            file.flush()
            time.sleep(0.002)  # the moment the file is empty, made long enough to be met
            file.write(versions[count % len(versions)])
        count += 1
        time.sleep(0.001)
    return count


def test_a_template_rewritten_in_place_never_gives_an_empty_or_broken_prompt(project: Path, settings) -> None:
    template = project / "prompts" / "SupportBot" / "edited.md"
    versions = ["Version one: {{ user_input }}", "Version two: {{ user_input }}"]
    template.write_text(versions[0])
    client = create_app(settings).test_client()
    assert client.post("/api/v1/chat", json={**GUIDE_BODY, "prompt_file": "edited.md"}).status_code == 200
    stop = threading.Event()
    writer = threading.Thread(target=rewrite_in_place, args=(template, versions, stop))
    writer.start()
    rendered: list[tuple[int, str]] = []
    try:
        # At least 400 requests, and on until both versions were served (the writer's pace is the scheduler's).
        while len(rendered) < 400 or (len({prompt for _, prompt in rendered}) < 2 and len(rendered) < 10_000):
            answer = client.post("/api/v1/chat", json={**GUIDE_BODY, "prompt_file": "edited.md"})
            rendered.append((answer.status_code, answer.get_json().get("rendered", str(answer.get_json()))))
    finally:
        stop.set()
        writer.join()
    assert all(status == 200 for status, _ in rendered), [r for r in rendered if r[0] != 200][:3]
    assert {prompt for _, prompt in rendered} <= {"Version one: hello", "Version two: hello"}
    assert len({prompt for _, prompt in rendered}) == 2  # edits are still picked up


def test_a_context_rewritten_in_place_keeps_answering_with_a_whole_version(project: Path, settings) -> None:
    context = project / "contexts" / "SupportBot" / "supportbot.ctx"
    original = context.read_text()
    versions = [original, original.replace("Tone: warm", "Tone: brisk").replace("warm and professional", "brisk")]
    client = create_app(settings).test_client()
    assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
    stop = threading.Event()
    writer = threading.Thread(target=rewrite_in_place, args=(context, versions, stop))
    writer.start()
    try:
        answers = [client.post("/api/v1/chat", json=GUIDE_BODY) for _ in range(400)]
    finally:
        stop.set()
        writer.join()
    failed = [answer.get_json() for answer in answers if answer.status_code != 200]
    assert not failed, failed[:3]
    assert all("SupportBot" in answer.get_json()["rendered"] for answer in answers)
    context.write_text("name: [unclosed\n")  # broken for good: requests keep the last version, /readyz names it
    assert client.post("/api/v1/chat", json=GUIDE_BODY).status_code == 200
    assert client.get("/readyz").status_code == 503


# -- 8. a JSON-escaped lone surrogate ------------------------------------------------------------------------

LONE = "\\ud800"  # as a client writes it in JSON: six characters, an escape of half a pair


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/chat", '{"context": "SupportBot", "data": {"user_input": "%s"}}'),
        ("/api/v1/chat", '{"context": "SupportBot", "data": {"user_input": "hi"}, "stop": ["%s"]}'),
        ("/api/v1/chat", '{"context": "SupportBot", "data": {"user_input": "hi"},'
         ' "messages": [{"role": "user", "content": "%s"}]}'),
        ("/api/v1/chat", '{"context": "SupportBot", "data": {"user_input": "hi"}, "query": "x%s"}'),
        ("/v1/chat/completions", '{"model": "SupportBot", "messages": [{"role": "user", "content": "%s"}]}'),
        ("/v1/chat/completions", '{"model": "SupportBot", "messages": [{"role": "user", "content": "hi"}],'
         ' "stop": "%s"}'),
        ("/v1/chat/completions", '{"model": "SupportBot", "messages": [{"role": "user", "content": "hi"}],'
         ' "user": "%s"}'),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_a_400_invalid_json_on_both_apis(hf_app, path: str, body: str, caplog) -> None:
    for text in (LONE, "\\udfff tail", "a\\uDBFFb"):
        response = hf_app.test_client().post(path, data=body % text, content_type="application/json")
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    assert "Traceback" not in caplog.text


def test_a_surrogate_pair_is_text_and_passes(client) -> None:
    body = '{"context": "SupportBot", "data": {"user_input": "smile \\ud83d\\ude00"}}'
    response = client.post("/api/v1/chat", data=body, content_type="application/json")
    assert response.status_code == 200 and "smile \U0001f600" in response.get_json()["rendered"]


# -- risks: busy is not dead; /readyz in public; contract nits -----------------------------------------------


def test_with_every_thread_busy_probes_answer_and_a_queued_request_gets_a_503_with_retry_after() -> None:
    """Two threads, both waiting on a 6 s model: /healthz and /readyz are answered by the poller at once,
    and a third chat waits GUNICORN_QUEUE_TIMEOUT, not for a thread."""
    with FakeHF(*[Reply(delay=6)] * 4) as fake:
        env = {"HF_TOKEN": TOKEN, "HF_MODEL_ID": MODEL, "HF_ENDPOINT": fake.url, "GUNICORN_QUEUE_TIMEOUT": "1"}
        server = Server("--root", str(EXAMPLE), "--workers", "1", "--threads", "2", env=env)
        try:
            with ThreadPoolExecutor(2) as pool:
                slow = [pool.submit(requests.post, f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=20)]
                slow.append(pool.submit(requests.post, f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=20))
                time.sleep(0.5)  # both threads are waiting on the model now
                for path, status in (("/healthz", 200), ("/readyz", 200)):
                    started = time.monotonic()
                    probe = requests.get(f"{server.url}{path}", timeout=10)
                    assert (probe.status_code, time.monotonic() - started < 2) == (status, True), path
                    assert probe.json() == {"status": "ok"}
                started = time.monotonic()
                queued = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
                waited = time.monotonic() - started
                assert queued.status_code == 503 and queued.headers["Retry-After"] == "1"
                assert queued.json()["error"]["code"] == "service_unavailable"
                assert "GUNICORN_QUEUE_TIMEOUT=1s" in queued.json()["error"]["message"]
                assert 0.9 < waited < 3
                with pytest.raises(openai.APIStatusError) as queued_v1:  # OpenAI's frontends read their own shape
                    hi = [{"role": "user", "content": "hi"}]
                    sdk(server).chat.completions.create(model="SupportBot", messages=hi)
                assert (queued_v1.value.status_code, queued_v1.value.type) == (503, "server_error")
                assert queued_v1.value.code == "service_unavailable" and queued_v1.value.param is None
                assert [future.result().status_code for future in slow] == [200, 200]
            assert requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=20).status_code == 200
        finally:
            _, output = server.stop()
    assert "503 to 1 request(s): every request thread stayed busy for GUNICORN_QUEUE_TIMEOUT=1s" in output


def test_readyz_tells_why_only_to_a_key_with_metrics_read(project: Path, caplog) -> None:
    (project / "contexts" / "tenants" / "acme").mkdir(parents=True)
    (project / "contexts" / "tenants" / "acme" / "SupportBot.ctx").write_text("name: [unclosed\n")
    env = {"CMP_PROJECT_ROOT": str(project), "CMP_AUTH_ENABLED": "true", "CMP_API_KEYS": KEYS_JSON}
    app = create_app(Settings.from_env(env, dotenv_path=None))
    anonymous = app.test_client().get("/readyz")
    assert anonymous.status_code == 503 and anonymous.get_json() == {"status": "unavailable"}
    logged = [getattr(record, "fields", {}).get("reason", "") for record in caplog.records]
    assert any("contexts/tenants/acme" in reason for reason in logged)  # the operator finds it in the logs
    told = app.test_client().get("/readyz", headers=bearer(METRICS_KEY))
    assert told.status_code == 503 and "contexts/tenants/acme/SupportBot.ctx" in told.get_json()["reason"]


def test_an_empty_tenant_id_in_the_query_is_refused(client) -> None:
    response = client.get("/v1/models?tenant_id=")
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert response.get_json()["error"]["code"]


def test_an_over_long_query_breaks_the_schema_and_is_a_400(client) -> None:
    """The contract gives `query` a maxLength: schemathesis (and any client) reads a longer one as invalid
    input, which is 400 or 422, not 413 (that is for a body past CMP_MAX_BODY_BYTES)."""
    contract = client.get("/openapi.json").get_json()
    limit = contract["components"]["schemas"]["ChatRequest"]["properties"]["query"]["maxLength"]
    response = client.post("/api/v1/chat", json={**SEARCH_BODY, "query": "q" * (limit + 1)})
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request" and "query" in error["message"]


SHORTAGE_SCRIPT = r"""
import json, os, resource, sys
from pathlib import Path
from app import create_app
from app.config import Settings

root = Path(sys.argv[1])
tenants = [f"t{n:02d}" for n in range(24)]
client = create_app(Settings.from_env({"CMP_PROJECT_ROOT": str(root)}, dotenv_path=None)).test_client()

def ask(tenant):
    body = {"context": "SupportBot", "component": "CustomerDocs", "prompt_file": "search_response.md",
            "query": f"refund code {tenant}", "tenant_id": tenant, "data": {"user_input": "refund?"}}
    response = client.post("/api/v1/chat", json=body)
    return response.status_code, (response.get_json().get("error") or {}).get("code")

for tenant in tenants[:-1]:
    assert ask(tenant)[0] == 200  # idle connections of many stores are now open
hog = []
try:
    while True:  # every descriptor left, taken
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
short = ask(tenants[-1])  # a store not open yet: room is made by closing idle connections
for fd in hog:
    os.close(fd)
print(json.dumps({"short": short, "after": ask(tenants[0]), "hogged": len(hog)}))
"""


def test_a_file_descriptor_shortage_closes_idle_connections_and_memory_recovers(project: Path) -> None:
    import resource
    import subprocess
    import sys

    from helpers import REPO, clean_env

    for tenant in [f"t{n:02d}" for n in range(24)]:  # stored here: the served process holds no connection yet
        note = project / f"{tenant}.md"
        note.write_text(f"The refund code of {tenant} is R-{tenant}.\n")
        SqliteStore(project, "CustomerDocs", tenant).ingest([note])

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    done = subprocess.run(
        [sys.executable, "-c", SHORTAGE_SCRIPT, str(project)],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["hogged"] > 0
    assert result["short"] == [200, None], result
    assert result["after"] == [200, None], result

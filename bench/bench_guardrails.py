"""Guardrails benchmark: what each guardrail costs a request when a context turns it on, and what the guardrails
cost a request when it turns none on.

In-process and deterministic: the quick start (its documents ingested, keywords only) with SupportBot's
guardrails set to each variant, a typical request (a 300-character question without personal data, and with
it), a typical answer (about 250 characters), a 200-token stream and a context tool's JSON result (an order
record). Per variant it times, as the fastest of `--rounds` rounds of `--iterations` calls on one thread:
`Runtime.render` (context, guardrails in, memory, prompt), the whole answer's check, the stream's (a stream relayed
unchecked is the baseline) and the tool result's (0 where the policy leaves tool results alone). "off" adds
`Guardrails.guard` itself, which is all a request of a context without guardrails pays. Run from the repository
root:

    python bench/bench_guardrails.py [bench/out/guardrails.json] [--iterations 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402 - run as a script from the repository root
from app.memory import open_memory  # noqa: E402
from app.providers.base import TokenStream  # noqa: E402
from app.runtime import Runtime  # noqa: E402
from app.validation import parse_chat_request  # noqa: E402

QUESTION = (
    "Hello, I ordered a router last week (order 20240315) and it still has not arrived. The tracking page says "
    "it left the warehouse on Monday. Can you tell me how long delivery usually takes, and whether I can get a "
    "refund if it does not arrive by Friday? I would also like to know the warranty terms for the device."
)
WITH_PII = QUESTION + " My card is 4111 1111 1111 1111 and my e-mail jane.roe@example.com."
ANSWER = (
    "Thanks for your patience! Standard delivery takes 3 to 5 business days [1]. If your parcel has not arrived "
    "by Friday, you can ask for a full refund from your account page [2]. Devices carry a two-year warranty "
    "against defects [3]. Anything else I can help with?"
)
# What an HTTP tool answers: an order record, as the model reads it back.
TOOL_RESULT = json.dumps(
    {
        "order": "20240315",
        "status": "in transit",
        "carrier": "DHL",
        "left_warehouse": "2026-03-16",
        "eta": "Friday",
        "items": [{"sku": "RT-2000", "name": "Wi-Fi router", "quantity": 1, "price": 129.0}],
        "note": "Delayed at the regional hub.\nThe customer was told on Monday.",
    }
)
# The answer as a model streams it, a word (and its space) a delta, to 200 deltas.
_WORDS = [f" {word}" for word in ANSWER.split()]
STREAM = (_WORDS * (200 // len(_WORDS) + 1))[:200]
CONTEXT = Path("contexts") / "SupportBot" / "supportbot.ctx"
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"pii": "off", "prompt_injection": "off"},
    "pii redact": {"pii": "redact", "prompt_injection": "off"},
    "prompt_injection block": {"pii": "off", "prompt_injection": "block"},
    "require_citation": {"pii": "off", "prompt_injection": "off", "require_citation": True},
    "deny_output": {"pii": "off", "prompt_injection": "off", "deny_output": ["(?i)internal use only"]},
    "quick start (pii redact, prompt_injection block)": {"pii": "redact", "prompt_injection": "block"},
}


def best_us(call: Callable[[], object], iterations: int, rounds: int) -> float:
    """Microseconds per call: the fastest round of `iterations` calls (the least disturbed by the machine's
    other work: the cores are shared)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            call()
        times.append((time.perf_counter() - started) / iterations * 1e6)
    return round(min(times), 2)


def relay(stream: TokenStream) -> None:
    for _ in stream:
        pass


def measure(root: Path, original: dict[str, Any], guardrails: dict[str, Any], iterations: int, rounds: int) -> dict:
    """The figures of one variant: SupportBot's own guardrail fields replaced by `guardrails`."""
    context = {**original, "guardrails": {**original["guardrails"], **guardrails}}
    (root / CONTEXT).write_text(yaml.safe_dump(context))
    runtime = Runtime(Settings(project_root=root))
    body = {"context": "SupportBot", "component": "CustomerDocs", "prompt_file": "search_response.md", "top_k": 3}
    clean = parse_chat_request({**body, "query": "delivery refund warranty", "data": {"user_input": QUESTION}})
    personal = parse_chat_request({**body, "query": "delivery refund warranty", "data": {"user_input": WITH_PII}})
    resolved = runtime.contexts.resolve("SupportBot")
    chunks = runtime.render(clean).results
    results: dict[str, Any] = {
        "guard_us": best_us(lambda: runtime.guardrails.guard(resolved, clean), iterations * 10, rounds),
        "render_us": best_us(lambda: runtime.render(clean), iterations, rounds),
    }
    guard = runtime.guardrails.guard(resolved, clean)
    if guard is None:
        results |= {"in_us": 0.0, "in_with_pii_us": 0.0, "answer_us": 0.0, "tool_result_us": 0.0}
        results["stream_us"] = best_us(lambda: relay(TokenStream(iter(STREAM), None)), iterations, rounds)
        return results

    def inbound(request: Any) -> Callable[[], object]:
        def check() -> object:
            fresh = runtime.guardrails.guard(resolved, request)
            return fresh.check_results(chunks) if fresh and fresh.check_request(request) else None

        return check

    results["in_us"] = best_us(inbound(clean), iterations, rounds)
    results["in_with_pii_us"] = best_us(inbound(personal), iterations, rounds) if guard.policy.pii == "redact" else None
    guard.check_results(chunks)  # the sources an answer cites
    results["answer_us"] = best_us(lambda: guard.check_answer(ANSWER), iterations, rounds)
    results["stream_us"] = best_us(
        lambda: relay(guard.check_stream(TokenStream(iter(STREAM), None))), iterations, rounds
    )
    screens = guard.policy.checks_tool_results
    results["tool_result_us"] = (
        best_us(lambda: guard.check_tool_results([TOOL_RESULT]), iterations, rounds) if screens else 0.0
    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(REPO / "bench" / "out" / "guardrails.json"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO / "examples" / "quickstart", root, ignore=shutil.ignore_patterns("*.db", "*.db-*"))
        open_memory(Settings(project_root=root)).store("CustomerDocs").ingest([root / "docs" / "CustomerDocs"])
        original = yaml.safe_load((root / CONTEXT).read_text())
        figures = {
            name: measure(root, original, fields, args.iterations, args.rounds) for name, fields in VARIANTS.items()
        }
    relayed = figures["off"]["stream_us"]
    for found in figures.values():
        found["stream_added_us"] = round(found["stream_us"] - relayed, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    for name, found in figures.items():
        print(f"{name:50} {json.dumps(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

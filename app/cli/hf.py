"""`ctx hf`: Hugging Face utilities (`test-model`: one prompt to HF_MODEL_ID, and what the router made of it)."""

from __future__ import annotations

import argparse
import sys
import time

from app.cli.common import fail
from app.config import Settings, public_url


def cmd_hf_test_model(args: argparse.Namespace, settings: Settings) -> int:
    """Send one prompt to the configured model and print its text (`--stream`: piece by piece, as it arrives).

    stderr says where the call went, in which wire format, how long it took and which model the endpoint
    says answered, so a user sees what the router made of HF_MODEL_ID.
    """
    if not settings.hf_enabled:
        return fail(f"set {' and '.join(settings.hf_missing)} to test the model", 2)
    from app.providers.base import GenerationParams
    from app.providers.huggingface import HFError, HuggingFaceClient

    client = HuggingFaceClient(settings, pool_size=1)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    where = public_url(client.url)
    print(f"ctx: POST {where} ({settings.hf_wire_api}, model {settings.hf_model_id})", file=sys.stderr)
    started = time.perf_counter()
    printed = False
    try:
        if not args.stream:
            generation = client.generate(args.prompt, params)
            _answered(started, generation.model)
            print(generation.text)
            return 0
        stream = client.stream(args.prompt, params)
        try:
            for delta in stream:
                print(delta, end="", flush=True)
                printed = True
        finally:
            stream.close()
        print()
        _answered(started, stream.response_model)
        return 0
    except HFError as exc:
        if printed:
            print()  # end the partial answer's line before the error
        fail(f"{exc.code}: {exc.message}", 1)
        if exc.upstream_status in (400, 404):
            _suggest_providers(settings)
        return 1
    finally:
        client.close()


def _answered(started: float, model: str | None) -> None:
    print(f"ctx: answered in {time.perf_counter() - started:.2f}s by model {model or 'not reported'}", file=sys.stderr)


def _suggest_providers(settings: Settings) -> None:
    """After the router refused the model: which live providers serve it, from the Hub (best effort)."""
    from app.providers.huggingface.hub import HubLookupError, is_router, live_providers

    if not is_router(settings):
        return
    model = settings.hf_model_id.partition(":")[0]
    try:
        found = live_providers(settings)
    except HubLookupError as exc:
        print(f"ctx: could not look up which Inference Providers serve {model}: {exc}", file=sys.stderr)
        return
    if found.id != model:
        print(f"ctx: the Hub knows {model} as {found.id}", file=sys.stderr)
    if not found.providers:
        print(f"ctx: no Inference Provider serves {found.id} right now: pick another model", file=sys.stderr)
        return
    print(f"ctx: Inference Providers serving {found.id}:", file=sys.stderr)
    for entry in found.providers:
        served = f"{entry.task}, as {entry.provider_id}" if entry.provider_id else entry.task
        print(f"ctx:   {entry.provider} ({served}): try HF_MODEL_ID={found.id}:{entry.provider}", file=sys.stderr)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    hf = commands.add_parser("hf", help="Hugging Face utilities").add_subparsers(dest="hf_command", required=True)
    test_model = hf.add_parser("test-model", parents=[common], help="send a prompt to HF_MODEL_ID and print the text")
    test_model.add_argument("prompt")
    test_model.add_argument("--max-new-tokens", type=int, default=128)
    test_model.add_argument("--stream", action="store_true", help="print the text as the model generates it")
    test_model.set_defaults(handler=cmd_hf_test_model)

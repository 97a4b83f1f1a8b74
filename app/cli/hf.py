"""`ctx hf`: Hugging Face utilities (`test-model`: one prompt to HF_MODEL_ID or a context's model chain, and what
the router made of it; `models`: the router's providers for a model)."""

from __future__ import annotations

import argparse
import sys
import time

from app.cli.common import fail
from app.config import Settings, public_url
from app.errors import ContexisError


def cmd_hf_test_model(args: argparse.Namespace, settings: Settings) -> int:
    """Send one prompt to the configured model and print its text (`--stream`: piece by piece, as it arrives).

    stderr says where the call went, in which wire format, how long it took and which model the endpoint
    says answered, so a user sees what the router made of HF_MODEL_ID.
    """
    if args.context:
        return _test_chain(args, settings)
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
                if isinstance(delta, str):
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


def _test_chain(args: argparse.Namespace, settings: Settings) -> int:
    """`test-model --context NAME`: try the context's chain as a request would, and say on stderr which entry
    answered and why each one before it did not."""
    from dataclasses import replace

    from app.contexts import ContextStore
    from app.providers.base import GenerationParams
    from app.routing import Attempt, ModelRouter, chain_of

    if not settings.hf_token:
        return fail("set HF_TOKEN to test the context's models", 2)
    try:
        chain = chain_of(ContextStore(settings.project_root).resolve(args.context))
    except ContexisError as exc:
        return fail(exc.message, 2)
    if chain is None:
        return fail(f"context {args.context!r} names no models (model:); its requests go to HF_MODEL_ID", 2)
    router = ModelRouter(settings)
    problem = router.read_catalog()
    if problem:
        print(f"ctx: the router's catalog could not be read ({problem}): no provider is skipped", file=sys.stderr)
    params = replace(GenerationParams.from_guardrails(chain.params), max_new_tokens=args.max_new_tokens)
    attempts: list[Attempt] = []
    started = time.perf_counter()
    printed = False
    try:
        if args.stream:
            stream = router.stream(chain, args.prompt, params, attempts=attempts).result
            try:
                for delta in stream:
                    if isinstance(delta, str):
                        print(delta, end="", flush=True)
                        printed = True
            finally:
                stream.close()
            print()
        else:
            print(router.generate(chain, args.prompt, params, attempts=attempts).result.text)
        return 0
    except ContexisError as exc:
        if printed:
            print()
        fail(f"{exc.code}: {exc.message}", 1)
        return 1
    finally:
        elapsed = f"answered in {time.perf_counter() - started:.2f}s"
        for number, attempt in enumerate(attempts, start=1):
            outcome = elapsed if attempt.outcome == "served" else attempt.outcome
            detail = f": {attempt.detail}" if attempt.detail else ""
            print(f"ctx: {number}. {attempt.model} at {attempt.endpoint}: {outcome}{detail}", file=sys.stderr)
        router.close()


def cmd_hf_models(args: argparse.Namespace, settings: Settings) -> int:
    """The router's providers for a model, from its catalog (`GET /v1/models`): status, context length, price,
    capabilities, speed."""
    from app.config import ROUTER_CHAT_ENDPOINT
    from app.providers.huggingface.catalog import Catalog, CatalogError

    if settings.hf_wire_api != "chat-completion":
        settings = settings.replace(hf_endpoint=ROUTER_CHAT_ENDPOINT, hf_api="chat-completion")
    catalog = Catalog(settings)
    try:
        catalog.refresh()
    except CatalogError as exc:
        return fail(f"could not read the catalog at {public_url(catalog.url)}: {exc}", 1)
    offers = catalog.offers(args.model)
    if not offers:
        return fail(f"the catalog at {public_url(catalog.url)} lists no provider for {args.model}", 1)

    def shown(value: object, unit: str = "") -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"

    rows = [("PROVIDER", "STATUS", "CONTEXT", "IN $/M", "OUT $/M", "TOOLS", "JSON", "LATENCY", "TOKENS/S")]
    rows += [
        (
            offer.provider,
            offer.status or "-",
            shown(offer.context_length),
            shown(offer.input_price),
            shown(offer.output_price),
            shown(offer.supports_tools),
            shown(offer.supports_structured_output),
            shown(offer.latency, "s"),
            shown(offer.throughput),
        )
        for offer in offers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


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
    # --root is the project of --context; `hf models` asks the router only, so it has none.
    test_model = hf.add_parser("test-model", parents=[common], help="send a prompt to HF_MODEL_ID and print the text")
    test_model.add_argument("prompt", help="the text sent as it is (no context, no template)")
    test_model.add_argument("--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)")
    test_model.add_argument("--stream", action="store_true", help="print the text as the model generates it")
    test_model.add_argument("--context", help="try this context's model chain instead (which entry answers, and why)")
    test_model.set_defaults(handler=cmd_hf_test_model)
    models = hf.add_parser("models", help="the router's providers for a model, with prices")
    models.add_argument("model", help="a model id, e.g. meta-llama/Llama-3.3-70B-Instruct")
    models.set_defaults(handler=cmd_hf_models)

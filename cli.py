"""The `ctx` command line: serve the runtime, test the model, render prompts, check and test contexts.

It reads the same `Settings` as `wsgi.py`; `--root` overrides `CMP_PROJECT_ROOT`.
The app's modules are imported inside the commands, so `serve` can prepare the
environment (Prometheus multiprocess mode) before they load.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import MEMORY_URL_SCHEMES, Settings, public_url
from app.errors import ContexisError, SettingsError
from app.memory.config import SEARCH_MODES

if TYPE_CHECKING:
    from app.memory import Memory, Progress

# gunicorn's settings ship inside the package (not next to this file), so a source tree, an
# installed wheel and the image serve alike; CMP_GUNICORN_CONFIG names a file that replaces them.
DEFAULT_GUNICORN_CONFIG = "python:app.gunicorn_conf"


def parse_addr(addr: str) -> tuple[str, int]:
    """`:8000` → all interfaces; `127.0.0.1:9000` and `[::1]:9000` as written."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"invalid address {addr!r}: expected [HOST]:PORT")
    return host or "0.0.0.0", int(port)


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return int(raw)


def _postgres_url(value: str) -> str:
    """A `--to` URL; checked by the same rule as CMP_MEMORY_URL, and never echoed (it may hold a password)."""
    if not value.startswith(MEMORY_URL_SCHEMES):
        raise argparse.ArgumentTypeError("expected a postgresql:// URL")
    return value


def _fail(message: str, code: int) -> int:
    print(f"ctx: {message}", file=sys.stderr)
    return code


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or an empty name
        return False


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """gunicorn with gthread workers, in-process; `--dev` runs Flask's reloader instead."""
    host, port = args.addr
    if args.dev:
        from app import create_app

        create_app(settings).run(host=host.strip("[]"), port=port, debug=True, use_reloader=True)
        return 0

    from gunicorn.app.base import Application

    config = os.environ.get("CMP_GUNICORN_CONFIG") or DEFAULT_GUNICORN_CONFIG
    # Serving without the configured settings would be another server (sync workers, one of them).
    if config.startswith("python:"):
        if not _module_exists(config.removeprefix("python:")):
            return _fail(f"gunicorn config {config}: no such module", 2)
    elif not Path(config.removeprefix("file:")).is_file():
        return _fail(f"gunicorn config {config} (CMP_GUNICORN_CONFIG) does not exist", 2)
    overrides = {"bind": [f"{host}:{port}"], "workers": args.workers, "threads": args.threads}

    class Server(Application):
        def init(self, parser, opts, args):  # gunicorn's hook for its own argv, unused here
            return None

        def load_config(self) -> None:
            # Precedence, as with the gunicorn command: config file < GUNICORN_CMD_ARGS < flags.
            self.load_config_from_module_name_or_filename(config)
            env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
            for key, value in vars(env_args).items():
                if value is not None and key in self.cfg.settings and key != "config":
                    self.cfg.set(key, value)
            for key, value in overrides.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self):
            from app import create_app

            return create_app(settings.replace(threads=self.cfg.threads))

    Server().run()
    return 0


def cmd_hf_test_model(args: argparse.Namespace, settings: Settings) -> int:
    """Send one prompt to the configured model and print its text (`--stream`: piece by piece, as it arrives).

    stderr says where the call went, in which wire format, how long it took and which model the endpoint
    says answered, so a user sees what the router made of HF_MODEL_ID.
    """
    if not settings.hf_enabled:
        return _fail(f"set {' and '.join(settings.hf_missing)} to test the model", 2)
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
        _fail(f"{exc.code}: {exc.message}", 1)
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


def cmd_prompt_render(args: argparse.Namespace, settings: Settings) -> int:
    """Print the prompt the chat route would send, without calling the model."""
    from app.runtime import Runtime
    from app.validation import parse_chat_request

    try:
        data = json.loads(args.data)
    except ValueError as exc:
        return _fail(f"--data is not valid JSON: {exc}", 2)
    body = {"context": args.context, "component": args.component or args.context, "tenant_id": args.tenant}
    body.update(data=data, query=args.query, top_k=args.top_k)
    if args.prompt_file:
        body["prompt_file"] = args.prompt_file
    print(Runtime(settings).render(parse_chat_request(body)).prompt)
    return 0


def cmd_context_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check every context of the project; one `file: field: problem` line per fault."""
    from app.contexts import ContextStore

    store = ContextStore(settings.project_root)
    problems = store.problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{sum(1 for _ in store.iter_files())} contexts valid in {store.root}")
    return 0


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    """Run the contexts' test cases; exit 0 when all pass, 1 when one fails or errors, 2 when the run cannot start."""
    from app.evaluation import SetupError, json_report, junit_xml, run_tests, table
    from app.runtime import Runtime

    if args.concurrency:
        settings = settings.replace(test_concurrency=args.concurrency)
    baseline_mode = "update" if args.update_baseline else "drift" if args.drift else ""
    runtime = Runtime(settings)
    with _progress_bar("case") as progress:
        try:
            report = run_tests(
                runtime,
                contexts=args.context,
                tenant_id=args.tenant,
                baseline_mode=baseline_mode,
                # The embedding model of memory, when one is configured, backs `similar_to` and drift.
                embedder=runtime.embedder,
                progress=lambda done, total: progress(done, total, ""),
            )
        except SetupError as exc:
            return _fail(str(exc), 2)
    print(table(report))
    if args.junit:
        _write_report(args.junit, junit_xml(report))
    if args.json:
        _write_report(args.json, (json.dumps(json_report(report), indent=2, ensure_ascii=False) + "\n").encode())
    return 0 if report.ok else 1


def _write_report(path: Path, content: bytes) -> None:
    """CI systems collect reports from folders that may not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@contextlib.contextmanager
def _progress_bar(unit: str) -> Iterator[Progress]:
    """A `Progress` callback drawing a tqdm bar, only on a terminal (disable=None): logs and pipes get none."""
    from tqdm import tqdm

    with tqdm(unit=unit, disable=None, leave=False, file=sys.stderr) as bar:

        def progress(done: int, total: int, _label: str) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield progress


def _memory(settings: Settings) -> Memory:
    """The configured memory backend for a one-off command, with the embedder (one connection) if any."""
    from app.memory import open_memory
    from app.providers import build_embedder

    return open_memory(settings, build_embedder(settings.replace(threads=1)))


def cmd_memory_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Add documents to a component's memory (unchanged files skipped), then embed the chunks that need it."""
    store = _memory(settings).store(args.component, args.tenant or None)
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        return _fail(f"no such file or directory: {', '.join(missing)}", 2)
    with _progress_bar("file") as files, _progress_bar("chunk") as chunks:
        report = store.ingest(args.paths, progress=files, embed_progress=chunks)
    embedded = f", {report.chunks_embedded} chunks embedded" if store.embedder else ""
    print(
        f"ingested {report.ingested} files ({report.chunks_added} chunks added, {report.chunks_removed} replaced), "
        f"{report.unchanged} unchanged, {report.unsupported} unsupported, {len(report.failed)} failed{embedded} "
        f"in {report.seconds:.2f}s -> {store.location}"
    )
    for source, reason in report.failed:
        print(f"failed: {source}: {reason}", file=sys.stderr)
    if report.embed_error:
        print(f"embedding stopped (run ingest again to continue): {report.embed_error}", file=sys.stderr)
    return 1 if report.failed or report.embed_error else 0


def cmd_memory_search(args: argparse.Namespace, settings: Settings) -> int:
    """Ranked matches for a query, as a table or JSON."""

    store = _memory(settings).store(args.component, args.tenant or None)
    retrieval = store.retrieve(args.query, args.top_k, args.mode)
    if retrieval.degraded:
        print(f"ctx: the query could not be embedded: {retrieval.degraded}", file=sys.stderr)
    print(f"mode: {retrieval.mode}", file=sys.stderr)
    results = retrieval.results
    if args.json:
        print(json.dumps([result.as_dict() for result in results], indent=2))
        return 0
    print(f"{'score':>8}  {'id':<20}  {'source':<40}  content")
    for result in results:
        snippet = " ".join(result.content.split())[:60]
        print(f"{result.score:8.3f}  {result.id:<20}  {result.source:<40}  {snippet}")
    return 0


def cmd_memory_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Documents, chunks and sizes of every store under the root."""

    stores = [store.stats() for store in _memory(settings).stores()]
    print(
        f"{'component':<20} {'tenant':<16} {'documents':>9} {'chunks':>9} {'vectors':>9} {'db bytes':>12}  "
        "embedding model (dimension)"
    )
    for stats in stores:
        model = f"{stats.embed_model} ({stats.embed_dimension or '-'})" if stats.embed_model else "-"
        print(
            f"{stats.component:<20} {stats.tenant_id or '(shared)':<16} {stats.documents:>9} {stats.chunks:>9} "
            f"{stats.chunks_with_vectors:>9} {stats.db_bytes:>12}  {model}"
        )
    return 0


def cmd_memory_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Remove one source's chunks, or the whole store's."""
    from app.memory import open_memory

    removed = open_memory(settings).store(args.component, args.tenant or None).delete(args.source)
    print(f"deleted {removed} documents")
    return 0


def cmd_memory_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Create or upgrade the PostgreSQL schema of CMP_MEMORY_URL, and build any missing vector index; safe to
    repeat (the chart's hook Job)."""
    if not settings.memory_url:
        print("CMP_MEMORY_URL is not set: SQLite memory needs no migration")
        return 0
    from app.memory.postgres import LEAKPROOF_MATCH, PostgresMemory

    memory = PostgresMemory(settings)
    before, after = memory.migrate()
    memory.prepare_searches()  # the vector index of a dimension an ingest could not index (not the owner)
    state = "up to date" if before == after else f"migrated from version {before}"
    print(f"memory schema version {after} ({state}) in {memory.where}")
    if not memory.index_usable():
        print(
            f"warning: searches cannot use the full-text index; a superuser must run: {LEAKPROOF_MATCH}",
            file=sys.stderr,
        )
    return 0


def cmd_memory_copy(args: argparse.Namespace, settings: Settings) -> int:
    """Copy every SQLite store under a project root into PostgreSQL, chunks as they are (no re-chunking)."""
    from app.memory import copy_memory, open_memory
    from app.memory.postgres import PostgresMemory

    target = PostgresMemory(settings.replace(memory_url=args.to, project_root=args.source_root))
    problem = target.problem()
    if problem:
        return _fail(problem, 1)
    report = copy_memory(open_memory(settings.replace(memory_url="", project_root=args.source_root)), target)
    target.prepare_searches()
    print(
        f"copied {report.copied} documents ({report.chunks} chunks) of {report.stores} stores, "
        f"{report.unchanged} unchanged -> {target.where}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, help="project root (default: CMP_PROJECT_ROOT or the current directory)")

    parser = argparse.ArgumentParser(prog="ctx", description="Contexis runtime")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="serve the HTTP API with gunicorn")
    serve.add_argument("--addr", type=parse_addr, default=parse_addr(":8000"), help="[HOST]:PORT (default :8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: WEB_CONCURRENCY or the config)")
    serve.add_argument("--threads", type=int, help="threads per worker (default: GUNICORN_THREADS or the config)")
    serve.add_argument("--dev", action="store_true", help="Flask's development server with the reloader")
    serve.set_defaults(handler=cmd_serve)

    hf = commands.add_parser("hf", help="Hugging Face utilities").add_subparsers(dest="hf_command", required=True)
    test_model = hf.add_parser("test-model", parents=[common], help="send a prompt to HF_MODEL_ID and print the text")
    test_model.add_argument("prompt")
    test_model.add_argument("--max-new-tokens", type=int, default=128)
    test_model.add_argument("--stream", action="store_true", help="print the text as the model generates it")
    test_model.set_defaults(handler=cmd_hf_test_model)

    prompt = commands.add_parser("prompt", help="prompt templates").add_subparsers(dest="prompt_command", required=True)
    render = prompt.add_parser("render", parents=[common], help="print a rendered prompt")
    render.add_argument("--context", required=True)
    render.add_argument("--component")
    render.add_argument("--tenant", default="")
    render.add_argument("--prompt-file")
    render.add_argument("--data", default="{}", help="JSON object of template variables")
    render.add_argument("--query", default="", help="search the component's memory for the template's results")
    render.add_argument("--top-k", type=int, default=0)
    render.set_defaults(handler=cmd_prompt_render)

    context = commands.add_parser("context", help="contexts").add_subparsers(dest="context_command", required=True)
    validate = context.add_parser("validate", parents=[common], help="validate every context of the project")
    validate.set_defaults(handler=cmd_context_validate)

    test = commands.add_parser("test", parents=[common], help="run the contexts' testing.cases")
    test.add_argument("--context", action="append", help="only this context (repeatable; default: every context)")
    test.add_argument("--tenant", default="", help="run as this tenant (its contexts and baselines)")
    test.add_argument("--junit", type=Path, help="write a JUnit XML report to this file")
    test.add_argument("--json", type=Path, help="write a JSON report to this file")
    test.add_argument("--concurrency", type=_positive, help="cases in flight at once (default CMP_TEST_CONCURRENCY)")
    baseline = test.add_mutually_exclusive_group()
    baseline.add_argument("--update-baseline", action="store_true", help="record the answers as the baseline")
    baseline.add_argument("--drift", action="store_true", help="compare the answers with the baseline")
    test.set_defaults(handler=cmd_test)

    memory = commands.add_parser("memory", help="component memory").add_subparsers(dest="memory_command", required=True)
    owner = argparse.ArgumentParser(add_help=False, parents=[common])
    owner.add_argument("--component", required=True)
    owner.add_argument("--tenant", default="", help="a tenant's own store (default: the shared one)")
    ingest = memory.add_parser("ingest", parents=[owner], help="add .md .txt .rst .html .jsonl files or directories")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.set_defaults(handler=cmd_memory_ingest)
    search = memory.add_parser("search", parents=[owner], help="ranked matches for a query")
    search.add_argument("--query", required=True)
    search.add_argument("--top-k", type=int, default=0, help="0: the component's default")
    search.add_argument("--json", action="store_true")
    search.add_argument(
        "--mode",
        choices=SEARCH_MODES,
        help="default: the component's search_mode, else hybrid when HF_EMBED_MODEL_ID is set, keyword otherwise",
    )
    search.set_defaults(handler=cmd_memory_search)
    stats = memory.add_parser("stats", parents=[common], help="documents and chunks of every store")
    stats.set_defaults(handler=cmd_memory_stats)
    delete = memory.add_parser("delete", parents=[owner], help="remove a source, or every document")
    delete.add_argument("--source", help="the file to remove (default: everything in the store)")
    delete.set_defaults(handler=cmd_memory_delete)
    migrate = memory.add_parser("migrate", parents=[common], help="create or upgrade the schema of CMP_MEMORY_URL")
    migrate.set_defaults(handler=cmd_memory_migrate)
    copy = memory.add_parser("copy", parents=[common], help="copy SQLite memory into PostgreSQL as stored")
    copy.add_argument("--from", dest="source_root", type=Path, required=True, help="project root holding memory/")
    copy.add_argument("--to", type=_postgres_url, required=True, help="postgresql://... (migrated)")
    copy.set_defaults(handler=cmd_memory_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(str(exc), 2)
    if args.root:
        settings = settings.replace(project_root=args.root)
    if settings.hf_endpoint_warning and args.command in ("serve", "hf"):
        print(f"ctx: warning: {settings.hf_endpoint_warning}", file=sys.stderr)
    try:
        return args.handler(args, settings)
    except ContexisError as exc:
        return _fail(f"{exc.code}: {exc.message}", 1)


if __name__ == "__main__":
    sys.exit(main())

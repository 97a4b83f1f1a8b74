"""`ctx memory`: ingest, search, stats, delete, and PostgreSQL's migrate and copy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.common import fail, progress_bar, root_hint
from app.config import MEMORY_URL_SCHEMES, Settings
from app.memory.config import SEARCH_MODES
from app.memory.extract import SUPPORTED_SUFFIXES

SUPPORTED = " ".join(sorted(SUPPORTED_SUFFIXES))

if TYPE_CHECKING:
    from app.memory import Memory


def _postgres_url(value: str) -> str:
    """A `--to` URL; checked by the same rule as CMP_MEMORY_URL, and never echoed (it may hold a password)."""
    if not value.startswith(MEMORY_URL_SCHEMES):
        raise argparse.ArgumentTypeError("expected a postgresql:// URL")
    return value


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
        return fail(f"no such file or directory: {', '.join(missing)}", 2)
    with progress_bar("file") as files, progress_bar("chunk") as chunks:
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
    if not (report.ingested or report.unchanged or report.failed):
        return fail(f"nothing ingested: memory takes {SUPPORTED} files; {' '.join(map(str, args.paths))} has none", 1)
    return 1 if report.failed or report.embed_error else 0


def _known(memory: Memory, component: str, settings: Settings) -> str:
    """Why `component` has nothing to search or delete ("" when it has memory): a search of none is no answer."""
    components = sorted({store.component for store in memory.stores()})
    if component in components:
        return ""
    where = f"has: {', '.join(components)}" if components else f"has none; {root_hint(settings)}"
    return (
        f"component {component!r} has no memory: ingest documents with "
        f"`ctx memory ingest --component {component} PATH` (the project's memory {where})"
    )


def cmd_memory_search(args: argparse.Namespace, settings: Settings) -> int:
    """Ranked matches for a query, as a table or JSON."""
    memory = _memory(settings)
    store = memory.store(args.component, args.tenant or None)
    if args.mode in ("vector", "hybrid") and store.embedder is None:
        return fail(f"--mode {args.mode} needs an embedding model: set HF_EMBED_MODEL_ID and HF_TOKEN", 2)
    unknown = _known(memory, args.component, settings)
    if unknown:
        return fail(unknown, 1)
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
    if not stores:
        print(
            f"ctx: no memory yet: `ctx memory ingest --component NAME PATH` builds it; {root_hint(settings)}",
            file=sys.stderr,
        )
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

    memory = open_memory(settings)
    unknown = _known(memory, args.component, settings)
    if unknown:
        return fail(unknown, 1)
    removed = memory.store(args.component, args.tenant or None).delete(args.source)
    if not removed:
        what = f"no document {args.source!r}" if args.source else "no documents"
        return fail(f"nothing deleted: component {args.component!r} has {what} in this store", 1)
    print(f"deleted {removed} document{'' if removed == 1 else 's'}")
    return 0


def cmd_memory_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Create or upgrade the PostgreSQL schema of CMP_MEMORY_URL, and build any missing vector index; safe to
    repeat (the chart's hook Job)."""
    if not settings.memory_url:
        # Nothing to do is not success: a hook Job that runs this against the wrong environment must see it.
        return fail("set CMP_MEMORY_URL=postgresql://... to migrate its schema (SQLite memory needs no migration)", 2)
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
        return fail(problem, 1)
    report = copy_memory(open_memory(settings.replace(memory_url="", project_root=args.source_root)), target)
    target.prepare_searches()
    print(
        f"copied {report.copied} documents ({report.chunks} chunks) of {report.stores} stores, "
        f"{report.unchanged} unchanged -> {target.where}"
    )
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    memory = commands.add_parser("memory", help="component memory").add_subparsers(dest="memory_command", required=True)
    owner = argparse.ArgumentParser(add_help=False, parents=[common])
    owner.add_argument("--component", required=True, help="whose memory: a folder memory/COMPONENT/ under the root")
    owner.add_argument("--tenant", default="", help="a tenant's own store (default: the shared one)")
    ingest = memory.add_parser("ingest", parents=[owner], help="add .md .txt .rst .html .jsonl files or directories")
    ingest.add_argument("paths", nargs="+", type=Path, help="files or directories (walked) to add")
    ingest.set_defaults(handler=cmd_memory_ingest)
    search = memory.add_parser("search", parents=[owner], help="ranked matches for a query")
    search.add_argument("--query", required=True, help="the text to search for")
    search.add_argument("--top-k", type=int, default=0, help="0: the component's default")
    search.add_argument("--json", action="store_true", help="print the matches as a JSON array")
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
    # No --root for migrate and copy: the database is CMP_MEMORY_URL's (and --to's), the SQLite root --from's.
    migrate = memory.add_parser("migrate", help="create or upgrade the schema of CMP_MEMORY_URL")
    migrate.set_defaults(handler=cmd_memory_migrate)
    copy = memory.add_parser("copy", help="copy SQLite memory into PostgreSQL as stored")
    copy.add_argument("--from", dest="source_root", type=Path, required=True, help="project root holding memory/")
    copy.add_argument("--to", type=_postgres_url, required=True, help="postgresql://... (migrated)")
    copy.set_defaults(handler=cmd_memory_copy)

"""`ctx cache`: what the response cache holds (stats), and emptying it (clear), per context and tenant."""

from __future__ import annotations

import argparse

from app.cli.common import fail
from app.config import Settings
from app.names import is_safe_name


def _name(raw: str) -> str:
    """A `--context` or `--tenant` value: a name as requests use them ('' for `--tenant`: the shared answers)."""
    if raw and not is_safe_name(raw):
        raise argparse.ArgumentTypeError(f"{raw!r} is not a valid name")
    return raw


def _off(settings: Settings) -> bool:
    """Whether CMP_CACHE_URL=off, said once: there is no store to read or clear."""
    from app.cache import OFF

    if settings.cache_url != OFF:
        return False
    print("the response cache is off (CMP_CACHE_URL=off): no answers are kept")
    return True


def cmd_cache_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Answers, bytes and hits per tenant and context of the configured cache (CMP_CACHE_URL)."""
    from app.cache import open_store
    from app.cache.store import CacheUnavailable

    if _off(settings):
        return 0
    store = open_store(settings)
    try:
        rows = store.stats(args.tenant, args.context)
    except CacheUnavailable as exc:
        return fail(f"the response cache cannot be read ({exc})", 1)
    print(f"{'tenant':<16} {'context':<24} {'answers':>8} {'bytes':>12} {'hits':>8}")
    for row in rows:
        print(f"{row.tenant or '-':<16} {row.context:<24} {row.entries:>8} {row.bytes:>12} {row.hits:>8}")
    print(f"{sum(r.entries for r in rows)} answers in {store.location}")
    return 0


def cmd_cache_clear(args: argparse.Namespace, settings: Settings) -> int:
    """Remove the cached answers of a context, a tenant, both, or all of them."""
    from app.cache import open_store
    from app.cache.store import CacheUnavailable

    if _off(settings):
        return 0
    store = open_store(settings)
    try:
        removed = store.clear(args.tenant, args.context)
    except CacheUnavailable as exc:
        return fail(f"the response cache cannot be cleared ({exc})", 1)
    print(f"removed {removed} cached answers from {store.location}")
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cache = commands.add_parser("cache", help="the response cache").add_subparsers(dest="cache_command", required=True)
    owner = argparse.ArgumentParser(add_help=False, parents=[common])
    owner.add_argument("--context", type=_name, help="only this context's answers")
    owner.add_argument("--tenant", type=_name, help="only this tenant's answers ('' for those without a tenant)")
    stats = cache.add_parser("stats", parents=[owner], help="cached answers, bytes and hits per tenant and context")
    stats.set_defaults(handler=cmd_cache_stats)
    clear = cache.add_parser("clear", parents=[owner], help="remove cached answers")
    clear.set_defaults(handler=cmd_cache_clear)

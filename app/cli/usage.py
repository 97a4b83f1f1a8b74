"""`ctx usage`: reports from the usage ledger, and PostgreSQL's migrate."""

from __future__ import annotations

import argparse
import json

from app.cli.common import fail
from app.config import Settings


def cmd_usage_report(args: argparse.Namespace, settings: Settings) -> int:
    """Requests, calls, tokens, cost and errors per group, from the usage ledger (SQLite or CMP_USAGE_URL)."""
    from app.usage import open_ledger
    from app.usage.reports import build_report, render_csv, render_table

    ledger = open_ledger(settings)
    if ledger is None:
        return fail("CMP_USAGE_URL=off: there is no usage ledger to report on", 2)
    report = build_report(ledger, args.since, args.until or "", args.by, args.tenant or None)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        print(render_csv(report), end="")
    else:
        print(render_table(report), end="")
    return 0


def cmd_usage_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Create or upgrade the usage ledger's schema in CMP_USAGE_URL; safe to repeat (the chart's hook Job)."""
    if not settings.usage_url or settings.usage_url == "off":
        print("CMP_USAGE_URL is not a PostgreSQL URL: the SQLite ledger needs no migration")
        return 0
    from app.usage.postgres import PostgresLedger

    ledger = PostgresLedger(settings.usage_url, settings.usage_timeout)
    before, after = ledger.migrate()
    state = "up to date" if before == after else f"migrated from version {before}"
    print(f"usage schema version {after} ({state}) in {ledger.where}")
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from app.usage.reports import BY, DEFAULT_SINCE

    usage = commands.add_parser("usage", help="the usage ledger").add_subparsers(dest="usage_command", required=True)
    report = usage.add_parser("report", parents=[common], help="requests, tokens, cost and errors per group")
    report.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        help=f"7d, 12h, 30m ago, or a date such as 2026-12-01 (default {DEFAULT_SINCE})",
    )
    report.add_argument("--until", help="as --since (default now)")
    report.add_argument("--by", choices=BY, default="tenant", help="how to group the calls (default: tenant)")
    report.add_argument("--tenant", help="only this tenant")
    shape = report.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the report as JSON (as GET /api/v1/usage)")
    shape.add_argument("--csv", action="store_true", help="the groups as CSV")
    report.set_defaults(handler=cmd_usage_report)
    migrate = usage.add_parser("migrate", parents=[common], help="create or upgrade the schema of CMP_USAGE_URL")
    migrate.set_defaults(handler=cmd_usage_migrate)

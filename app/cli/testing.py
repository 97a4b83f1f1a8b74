"""`ctx test`: the contexts' `testing.cases` through the runtime, with JUnit/JSON reports and baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli.common import fail, positive, progress_bar, root_hint, write_report
from app.config import Settings


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    """Run the contexts' test cases; exit 0 when all pass, 1 when one fails or errors, 2 when the run cannot start."""
    from app.evaluation import SetupError, json_report, junit_xml, run_tests, table
    from app.runtime import Runtime

    if args.concurrency:
        settings = settings.replace(test_concurrency=args.concurrency)
    baseline_mode = "update" if args.update_baseline else "drift" if args.drift else ""
    runtime = Runtime(settings)
    with progress_bar("case") as progress:
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
            # A project without contexts is most often the wrong folder: say where ctx looked.
            lost = not runtime.contexts.names()
            return fail(f"{exc}; {root_hint(settings)}" if lost else str(exc), 2)
    print(table(report))
    if args.junit:
        write_report(args.junit, junit_xml(report))
    if args.json:
        write_report(args.json, (json.dumps(json_report(report), indent=2, ensure_ascii=False) + "\n").encode())
    return 0 if report.ok else 1


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    test = commands.add_parser("test", parents=[common], help="run the contexts' testing.cases")
    test.add_argument("--context", action="append", help="only this context (repeatable; default: every context)")
    test.add_argument("--tenant", default="", help="run as this tenant (its contexts and baselines)")
    test.add_argument("--junit", type=Path, help="write a JUnit XML report to this file")
    test.add_argument("--json", type=Path, help="write a JSON report to this file")
    test.add_argument("--concurrency", type=positive, help="cases in flight at once (default CMP_TEST_CONCURRENCY)")
    baseline = test.add_mutually_exclusive_group()
    baseline.add_argument("--update-baseline", action="store_true", help="record the answers as the baseline")
    baseline.add_argument("--drift", action="store_true", help="compare the answers with the baseline")
    test.set_defaults(handler=cmd_test)

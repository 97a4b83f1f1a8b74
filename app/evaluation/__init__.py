"""`ctx test`: contexts that test themselves — assertions on answers, baselines and drift, CI reports.

Cases go through `app.runtime` exactly as `/api/v1/chat` requests do; this package only judges what comes back.
"""

from app.evaluation.reports import json_report, junit_xml, table
from app.evaluation.runner import ERROR, FAILED, PASSED, SKIPPED, Report, SetupError, run_tests
from app.evaluation.similarity import Embedder

__all__ = [
    "ERROR",
    "FAILED",
    "PASSED",
    "SKIPPED",
    "Embedder",
    "Report",
    "SetupError",
    "json_report",
    "junit_xml",
    "run_tests",
    "table",
]

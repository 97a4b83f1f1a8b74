"""A run's report three ways: a table for the terminal, JUnit XML for CI systems to render, and JSON."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from app.evaluation.runner import ERROR, FAILED, PASSED, SKIPPED, CaseResult, Report

# Characters XML 1.0 cannot hold, even escaped; a model's answer may contain them.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def summary(report: Report) -> str:
    """`N cases: P passed, F failed, E errors, S skipped in T s`."""
    counts = f"{report.count(PASSED)} passed, {report.count(FAILED)} failed, {report.count(ERROR)} errors"
    cut = " (cut at the run's deadline)" if report.cut else ""
    return f"{len(report.results)} cases: {counts}, {report.count(SKIPPED)} skipped in {report.seconds:.2f}s{cut}"


def _details(result: CaseResult) -> list[str]:
    lines = [f"{name}: {message}" for name, message in result.failures]
    lines += [result.error] if result.error else []
    lines += [f"skipped {reason}" for reason in result.skipped]
    if result.drift and not result.drift.drifted:
        drift = result.drift
        lines.append(f"drift: similarity {drift.similarity:.3f} ({drift.method}, threshold {drift.threshold})")
    return lines


def table(report: Report) -> str:
    """One row per case (status, context/case, time), its failures and notes beneath, then the summary."""
    width = max(len(f"{r.case.context}/{r.case.name}") for r in report.results)
    rows = [f"{'STATUS':<8} {'CASE':<{width}} {'TIME':>8}"]
    for result in report.results:
        name = f"{result.case.context}/{result.case.name}"
        rows.append(f"{result.status.upper():<8} {name:<{width}} {result.seconds * 1000:>6.0f}ms")
        rows += [f"    {line}" for line in _details(result)]
    methods = sorted({(r.drift.method, r.drift.threshold) for r in report.results if r.drift})
    if methods:
        rows.append("drift by " + "; ".join(f"{method} (threshold {threshold})" for method, threshold in methods))
    rows += [f"baseline written: {path}" for path in report.baselines_written]
    rows += [f"sources changed since the baseline: {change}" for change in report.sources_changed]
    rows.append(summary(report))
    return "\n".join(rows)


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def junit_xml(report: Report) -> bytes:
    """JUnit XML: a `testsuite` per context, a `testcase` per case, the answer in its `system-out`."""
    root = ET.Element("testsuites", name="ctx test", time=f"{report.seconds:.3f}")
    suites: dict[str, ET.Element] = {}
    for result in report.results:
        context = result.case.context
        if context not in suites:
            suites[context] = ET.SubElement(root, "testsuite", name=context)
        case = ET.SubElement(
            suites[context], "testcase", classname=context, name=result.case.name, time=f"{result.seconds:.3f}"
        )
        if result.status == FAILED:
            first, message = result.failures[0]
            failure = ET.SubElement(case, "failure", type=first, message=_xml_text(f"{first}: {message}"))
            failure.text = _xml_text("\n".join(f"{name}: {text}" for name, text in result.failures))
        elif result.status == ERROR:
            ET.SubElement(case, "error", type="error", message=_xml_text(result.error))
        elif result.status == SKIPPED:
            ET.SubElement(case, "skipped", message="; ".join(result.skipped))
        if result.observation is not None:
            notes = [line for line in _details(result) if line.startswith(("skipped", "drift"))]
            ET.SubElement(case, "system-out").text = _xml_text("\n".join([*notes, result.observation.text]))
    for element in [root, *suites.values()]:
        members = [r for r in report.results if element is root or r.case.context == element.get("name")]
        element.set("tests", str(len(members)))
        for attribute, status in (("failures", FAILED), ("errors", ERROR), ("skipped", SKIPPED)):
            element.set(attribute, str(sum(1 for r in members if r.status == status)))
        if element is not root:
            element.set("time", f"{sum(r.seconds for r in members):.3f}")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _case_json(result: CaseResult) -> dict[str, Any]:
    seen = result.observation
    return {
        "context": result.case.context,
        "case": result.case.name,
        "tenant_id": result.case.tenant_id,
        "mode": result.case.mode,
        "status": result.status,
        "seconds": round(result.seconds, 4),
        "failures": [{"assertion": name, "message": message} for name, message in result.failures],
        "skipped": result.skipped,
        "error": result.error or None,
        "answer": seen.text if seen else None,
        "latency_ms": round(seen.latency_ms, 1) if seen else None,
        "model": seen.model if seen else None,
        "sources": seen.sources if seen else [],
        "usage": seen.usage.as_dict() if seen and seen.usage else None,
        "drift": (
            {"method": result.drift.method, "similarity": result.drift.similarity, "threshold": result.drift.threshold}
            if result.drift
            else None
        ),
    }


def json_report(report: Report) -> dict[str, Any]:
    """The whole run as a JSON document: a summary, then every case with its answer and verdicts."""
    return {
        "summary": {
            "cases": len(report.results),
            "passed": report.count(PASSED),
            "failed": report.count(FAILED),
            "errors": report.count(ERROR),
            "skipped": report.count(SKIPPED),
            "seconds": round(report.seconds, 3),
        },
        "cut": report.cut,
        "baseline": report.baseline_mode or None,
        "baselines_written": [str(path) for path in report.baselines_written],
        "sources_changed": report.sources_changed,
        "cases": [_case_json(result) for result in report.results],
    }

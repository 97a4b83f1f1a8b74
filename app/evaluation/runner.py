"""`ctx test`: run the cases of the project's contexts concurrently, judge them, record or compare baselines.

A case PASSES when every assertion holds, FAILS when one does not (or its answer drifted from the baseline),
is an ERROR when the pipeline could not answer (a model call that failed, a missing template variable), and is
SKIPPED when it needs a model and none is configured. Problems that stop the whole run (an unknown or invalid
context, a missing baseline) raise `SetupError`. A run given a deadline (`POST /api/v1/test`) ends by it: the
cases not judged by then are errors and the report is `cut`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.contexts import DEFAULT_DRIFT_THRESHOLD, DEFAULT_TEXT_DRIFT_THRESHOLD
from app.errors import ContexisError
from app.evaluation.assertions import ASSERTIONS, Skipped, excerpt
from app.evaluation.baselines import baseline_lock, baseline_path, read_baseline, write_baseline
from app.evaluation.cases import Case, Observation, cases_of, observe
from app.evaluation.similarity import Embedder, Embeddings, cosine, text_ratio
from app.names import is_safe_name
from app.providers.huggingface.transport import deadline as within
from app.runtime import Runtime

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"


class SetupError(Exception):
    """The run cannot start as asked: the CLI's exit status 2."""


@dataclass(frozen=True)
class Drift:
    """How alike a case's answer is to its baseline, by which method, against which threshold."""

    method: str
    similarity: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.similarity < self.threshold


@dataclass
class CaseResult:
    """The verdict on one case, with what it observed."""

    case: Case
    status: str
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (assertion, message)
    skipped: list[str] = field(default_factory=list)  # why an assertion or the case was not judged
    error: str = ""
    observation: Observation | None = None
    drift: Drift | None = None


@dataclass
class Report:
    """A whole run: every case's result in the order the contexts define them."""

    results: list[CaseResult]
    seconds: float
    baseline_mode: str = ""  # "", "update" or "drift"
    baselines_written: list[Path] = field(default_factory=list)
    # --drift: the contexts whose baseline was recorded from other sources (their lock hashes), so a drift
    # can be traced to a change of the project rather than of the model.
    sources_changed: list[str] = field(default_factory=list)
    cut: bool = False  # the run's deadline passed before every case was judged (those are errors)

    def count(self, status: str) -> int:
        return sum(1 for result in self.results if result.status == status)

    @property
    def ok(self) -> bool:
        """True when nothing failed or errored (skipped cases do not fail a run)."""
        return not any(result.status in (FAILED, ERROR) for result in self.results)


@dataclass(frozen=True)
class _Suite:
    """One context's cases, the thresholds of its `testing` section and, for `--drift`, its baseline."""

    context: str
    testing: dict[str, Any]
    cases: list[Case]
    baseline_file: Path
    baseline: dict[str, dict[str, Any]] | None


def run_tests(
    runtime: Runtime,
    *,
    contexts: list[str] | None = None,
    tenant_id: str = "",
    baseline_mode: str = "",
    embedder: Embedder | None = None,
    progress: Callable[[int, int], None] | None = None,
    deadline: float | None = None,
) -> Report:
    """Run the cases of `contexts` (default: every context) at most `test_concurrency` at a time.

    `baseline_mode` "update" records each answered case's text (and embedding) as its baseline; "drift"
    also compares each answer with the recorded one. Within `deadline` seconds, when given: every model call of
    a case ends by then (the transport's deadline block), the cases not judged by then are errors, and the
    caller waits no longer, whatever a case still does.
    """
    started = time.perf_counter()
    ends_at = math.inf if deadline is None else time.monotonic() + deadline
    suites = _suites(runtime, contexts, tenant_id, baseline_mode == "drift")
    cases = [(suite, case) for suite in suites for case in suite.cases]
    if not cases:
        raise SetupError(f"no test cases: add testing.cases to a context under {runtime.contexts.contexts_dir}")
    embeddings = Embeddings(embedder) if embedder else None
    results: dict[int, CaseResult] = {}
    pool = ThreadPoolExecutor(max_workers=runtime.settings.test_concurrency, thread_name_prefix="ctx-test")
    cut = False
    try:
        futures = {
            pool.submit(_run_case, runtime, suite, case, embeddings, ends_at): i
            for i, (suite, case) in enumerate(cases)
        }
        waiting = None if deadline is None else max(0.0, ends_at - time.monotonic())
        for done, future in enumerate(as_completed(futures, timeout=waiting), start=1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, len(cases))
    except TimeoutError:
        if time.monotonic() < ends_at:
            raise  # a case's own, not the run's deadline
        cut = True
    finally:
        pool.shutdown(wait=not cut, cancel_futures=True)
    late = f"deadline_exceeded: not judged within the run's deadline of {deadline:g}s" if cut else ""
    judged = [results.get(i) or CaseResult(case, ERROR, error=late) for i, (_, case) in enumerate(cases)]
    report = Report(judged, 0.0, baseline_mode, cut=cut)
    if baseline_mode == "drift":
        now = runtime.lock.current().hash
        for suite in suites:
            then = baseline_lock(suite.baseline_file)
            if then and then != now:
                report.sources_changed.append(f"{suite.context}: baseline recorded with sources {then}, now {now}")
    if baseline_mode == "update":
        model = runtime.provider.model_id if runtime.provider else None
        lock = runtime.lock.current().hash
        report.baselines_written = [_record(suite, report.results, model, embeddings, lock) for suite in suites]
    report.seconds = time.perf_counter() - started
    return report


def _suites(runtime: Runtime, names: list[str] | None, tenant_id: str, drift: bool) -> list[_Suite]:
    if tenant_id and not is_safe_name(tenant_id):
        raise SetupError(f"--tenant {tenant_id!r} is not a valid name (1-128 of A-Z a-z 0-9 _ . -)")
    known = runtime.contexts.names()
    unknown = [name for name in names or [] if name not in known]
    if unknown:
        raise SetupError(f"unknown context {', '.join(unknown)}; the project has {', '.join(known) or 'none'}")
    suites = []
    for name in names or known:
        try:
            context = runtime.contexts.resolve(name, tenant_id)
            cases = cases_of(name, context, tenant_id)
        except ContexisError as exc:
            raise SetupError(exc.message) from None
        if not cases:
            continue
        path = baseline_path(runtime.contexts.root, name, tenant_id)
        suites.append(_Suite(name, context.get("testing", {}), cases, path, _baseline(path) if drift else None))
    return suites


def _baseline(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise SetupError(f"no baseline at {path}: record one with `ctx test --update-baseline`")
    try:
        return read_baseline(path)
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read the baseline {path}: {exc}") from None


def _run_case(runtime: Runtime, suite: _Suite, case: Case, embeddings: Embeddings | None, ends_at: float) -> CaseResult:
    started = time.perf_counter()
    if time.monotonic() >= ends_at:  # taken up as the run was cut: its result is not waited for
        return CaseResult(case, ERROR, error="deadline_exceeded: not started before the run's deadline")
    with within(ends_at - time.monotonic()):  # model calls (chain, tool loop, embeddings) end by the deadline
        result = _judge(runtime, suite, case, embeddings)
    result.seconds = time.perf_counter() - started
    return result


def _judge(runtime: Runtime, suite: _Suite, case: Case, embeddings: Embeddings | None) -> CaseResult:
    if case.mode == "model" and not runtime.calls_model(runtime.contexts.resolve(suite.context)):
        return CaseResult(case, SKIPPED, skipped=["mode: model needs a model: set HF_TOKEN and HF_MODEL_ID"])
    result = CaseResult(case, PASSED)
    try:
        result.observation = seen = observe(runtime, case)
        for name, check in ASSERTIONS.items():
            if name not in case.spec:
                continue
            try:
                message = check(case.spec[name], case, seen, embeddings)
            except Skipped as exc:
                result.skipped.append(str(exc))
                continue
            if message:
                result.failures.append((name, message))
        if suite.baseline is not None:
            recorded = suite.baseline.get(case.name)
            if recorded is None:
                result.status, result.error = ERROR, "no baseline answer: record one with `ctx test --update-baseline`"
                return result
            result.drift = drift = _compare(seen.text, recorded, suite.testing, embeddings)
            if drift.drifted:
                message = (
                    f"similarity {drift.similarity:.3f} ({drift.method}) to the baseline is below {drift.threshold}; "
                    f"baseline {excerpt(recorded.get('answer', ''), 120)}, now {excerpt(seen.text, 120)}"
                )
                result.failures.append(("drift", message))
    except ContexisError as exc:
        result.status, result.error = ERROR, f"{exc.code}: {exc.message}"
        return result
    if result.failures:
        result.status = FAILED
    return result


def _compare(text: str, recorded: dict[str, Any], testing: dict[str, Any], embeddings: Embeddings | None) -> Drift:
    """Cosine of embeddings when both sides have one; difflib's ratio, with its own threshold, otherwise."""
    if embeddings is not None and "embedding" in recorded:
        similarity = cosine(embeddings.of(text), recorded["embedding"])
        return Drift("embedding cosine", similarity, testing.get("drift_threshold", DEFAULT_DRIFT_THRESHOLD))
    similarity = text_ratio(text, str(recorded.get("answer", "")))
    return Drift("difflib ratio", similarity, testing.get("text_drift_threshold", DEFAULT_TEXT_DRIFT_THRESHOLD))


def _record(
    suite: _Suite, results: list[CaseResult], model: str | None, embeddings: Embeddings | None, lock: str
) -> Path:
    """Write the suite's answered cases; a case that errored or was skipped keeps its previous entry."""
    previous: dict[str, dict[str, Any]] = {}
    if suite.baseline_file.is_file():
        try:
            previous = read_baseline(suite.baseline_file)
        except (OSError, ValueError):
            previous = {}  # unreadable: replaced by this run's answers
    entries: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.case.context != suite.context:
            continue
        name, seen = result.case.name, result.observation
        if seen is None or result.status == ERROR:
            if name in previous:
                entries[name] = previous[name]
            continue
        entries[name] = {"answer": seen.text}
        if embeddings is not None:
            entries[name]["embedding"] = embeddings.of(seen.text)
    write_baseline(suite.baseline_file, suite.context, model, entries, lock)
    return suite.baseline_file

"""The playground (`CMP_PLAYGROUND=true`): one page beside the API, and `POST /api/v1/test`.

The page is static HTML, CSS and JavaScript shipped in the package (`app/web/static/`), served under a strict
Content-Security-Policy: scripts and styles from this origin only, nothing inline, no frames, no forms posting
elsewhere. It holds no secret, so it needs no key; everything it shows comes from the API (`/v1/models`,
`/api/v1/render`, `/api/v1/chat`, `/api/v1/test`) with the key the user gives it, under the same scopes and
tenant rules as any client.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from flask import Blueprint, Response, g, jsonify

from app.errors import NotFound
from app.evaluation import SetupError, json_report, run_tests
from app.validation import parse_test_request
from app.web.auth import tenant_for
from app.web.chat import json_body
from app.web.runtime import get_runtime

bp = Blueprint("playground", __name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    """A file of the page, read once per process from the installed package."""
    return resources.files("app.web").joinpath("static", name).read_bytes()


def _static(name: str, mimetype: str) -> Response:
    return Response(_asset(name), mimetype=mimetype, headers=_HEADERS)


@bp.get("/playground")
def page() -> Response:
    """The playground's page."""
    return _static("playground.html", "text/html")


@bp.get("/playground/playground.js")
def script() -> Response:
    """The page's script (the CSP allows no inline one)."""
    return _static("playground.js", "text/javascript")


@bp.get("/playground/playground.css")
def style() -> Response:
    """The page's style sheet."""
    return _static("playground.css", "text/css")


@bp.post("/api/v1/test")
def run_context_tests() -> Response:
    """Run one context's `testing` cases as `ctx test --json` does (scope `test:run`): a verdict per case, each
    failure naming its assertion. The run ends by CMP_TEST_DEADLINE: then the report is `cut`, the cases not
    judged errors, and the thread is free for the next request."""
    runtime = get_runtime()
    context, requested = parse_test_request(json_body())
    tenant = tenant_for(requested)
    g.log_fields.update(tenant=tenant or None, context=context)
    runtime.contexts.resolve(context, tenant)  # an unknown context, or one the tenant may not use: 404 as on chat
    try:
        report = run_tests(
            runtime,
            contexts=[context],
            tenant_id=tenant,
            embedder=runtime.embedder,
            deadline=runtime.settings.test_deadline,
        )
    except SetupError as exc:
        raise NotFound(str(exc), code="no_test_cases") from None
    return jsonify(**json_report(report), request_id=g.request_id)

"""`GET /api/v1/usage`: the usage report (`app.usage.reports`) for keys with the `usage:read` scope.

A key bound to a tenant sees that tenant's usage only (naming another is 403); a key for any tenant, or
any caller when auth is off, sees every tenant's unless it names one.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from app.errors import BadRequest, SettingsError, UsageUnavailable
from app.usage import open_ledger
from app.usage.ledger import Ledger
from app.usage.reports import DEFAULT_SINCE, build_report
from app.web.auth import tenant_param
from app.web.runtime import get_runtime

bp = Blueprint("usage", __name__, url_prefix="/api/v1")
_LEDGER = "contexis_usage_ledger"


def _ledger() -> Ledger | None:
    """The runtime's ledger; without a model it records nothing, but what was recorded before can be read."""
    ledger = get_runtime().meter.ledger
    if ledger is None:
        if _LEDGER not in current_app.extensions:
            try:
                current_app.extensions[_LEDGER] = open_ledger(get_runtime().settings)
            except SettingsError as exc:  # a state directory that cannot be written: this report is unavailable
                raise UsageUnavailable(str(exc)) from None
        ledger = current_app.extensions[_LEDGER]
    return ledger


@bp.get("/usage")
def usage_report():
    """Requests, calls, tokens, cost and errors per group (`by`) from `since` to `until`."""
    args = request.args
    tenant = tenant_param("tenant")
    ledger = _ledger()
    if ledger is None:
        raise BadRequest("the usage ledger is off (CMP_USAGE_URL=off)", code="usage_off")
    report = build_report(
        ledger, args.get("since", DEFAULT_SINCE), args.get("until", ""), args.get("by", "tenant"), tenant or None
    )
    return jsonify(report)

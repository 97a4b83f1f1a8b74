"""Usage reports: requests, calls, tokens, cost, errors and what the response cache saved, per tenant, context,
model, key or day.

Shared by `ctx usage report` and `GET /api/v1/usage`; the groups are summed by the database and the total by
adding the groups, so a report's total is the sum of its rows. A cost is `null` when no call of the group
had a price (`unpriced_calls` counts those that had none); a saving is `null` when the group had no hit whose
model had a price.
"""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime
from typing import Any

from app.errors import BadRequest
from app.usage.ledger import NULLABLE_SUMS, REPORT_FIELDS, Ledger

BY = ("tenant", "context", "model", "key", "day")
DEFAULT_SINCE = "30d"
_RELATIVE = re.compile(r"^(\d{1,6})([dhm])$")
_UNITS = {"d": 86400, "h": 3600, "m": 60}

# A report group's counts (integers, summed into the total); its NULLABLE_SUMS are None when nothing was priced.
COUNTED = tuple(name for name in (*REPORT_FIELDS[1:], "total_tokens") if name not in NULLABLE_SUMS)


def parse_moment(text: str, now: float, param: str) -> float:
    """`7d`, `12h`, `30m` before now, or an ISO date (`2026-12-01`, UTC midnight) or time, as epoch seconds."""
    relative = _RELATIVE.match(text.strip())
    try:
        if relative:
            seconds = now - int(relative.group(1)) * _UNITS[relative.group(2)]
        else:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        _iso(seconds)  # the report names its bounds: one before year 1 or after 9999 cannot be named
    except (ValueError, OverflowError, OSError):
        raise BadRequest(
            f"{param}: {text!r} is neither a duration (7d, 12h, 30m) nor a date (2026-12-01) of years 1 to 9999",
            code="invalid_request",
            param=param,
        ) from None
    return seconds


def build_report(
    ledger: Ledger, since: str = DEFAULT_SINCE, until: str = "", by: str = "tenant", tenant: str | None = None
) -> dict[str, Any]:
    if by not in BY:
        raise BadRequest(f"by: must be one of {', '.join(BY)}, got {by!r}", code="invalid_request", param="by")
    now = time.time()
    start = parse_moment(since, now, "since")
    end = parse_moment(until, now, "until") if until else now + 1
    groups = ledger.report(start, end, by, tenant)
    total: dict[str, Any] = {name: sum(g[name] for g in groups) for name in COUNTED}
    for name in NULLABLE_SUMS:
        known = [g[name] for g in groups if g[name] is not None]
        total[name] = sum(known) if known else None
    return {
        "since": _iso(start),
        "until": _iso(min(end, now)),
        "by": by,
        "tenant": tenant,
        "groups": groups,
        "total": total,
    }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# The cache's columns last: a CSV read by position before they existed reads the same.
COLUMNS = ("group", "requests", "calls", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd",
           "unpriced_calls", "estimated_calls", "errors", "cache_hits", "saved_tokens", "saved_usd")  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def render_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report["by"], *COLUMNS[1:]])
    for group in report["groups"]:
        writer.writerow([_cell(group[c]) for c in COLUMNS])
    return out.getvalue()


def render_table(report: dict[str, Any]) -> str:
    header = [report["by"], *COLUMNS[1:]]
    rows = [[group["group"] or "(none)", *(_cell(group[c]) for c in COLUMNS[1:])] for group in report["groups"]]
    rows.append(["TOTAL", *(_cell(report["total"][c]) for c in COLUMNS[1:])])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        f"usage {report['since']} .. {report['until']}" + (f", tenant {report['tenant']}" if report["tenant"] else "")
    ]
    for row in [header, *rows]:
        first, *rest = row
        cells = [first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"

"""CORS, so a frontend served from another origin can call the chat routes from a browser (flask-cors).

Only the origins in `CMP_CORS_ORIGINS` are allowed (none by default). Keys travel in the
`Authorization` header, never in cookies, so credentials are never allowed and `*` stays safe.
"""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from app.config import Settings
from app.web.chat import DEGRADED_HEADER

# The routes a browser frontend calls; the others (metrics, probes) stay same-origin.
CORS_ROUTES = (
    r"^/api/v1/chat$",
    r"^/v1/chat/completions$",
    r"^/v1/models$",
    r"^/v1/models/[^/]+$",
    r"^/v1/responses$",
    r"^/v1/responses/[^/]+$",
)


def init_cors(app: Flask, settings: Settings) -> None:
    """Answer preflights and mark answers for the allowed origins; nothing at all without any."""
    if not settings.cors_origins:
        return
    CORS(
        app,
        resources={route: {} for route in CORS_ROUTES},
        origins=list(settings.cors_origins),
        methods=["GET", "POST", "DELETE", "OPTIONS"],
        # OpenAI's JS SDK, used in a browser, adds its X-Stainless-* headers to every request.
        allow_headers=["Authorization", "Content-Type", "X-Request-ID", r"X-Stainless-[A-Za-z-]+"],
        expose_headers=["X-Request-ID", DEGRADED_HEADER],
        supports_credentials=False,
        max_age=600,
    )

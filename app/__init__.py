"""The Contexis runtime: a Flask application built by `create_app`.

As in Flask's tutorial, the factory imports the app's modules when it runs, so
`import app.config` (what `cli.py` needs first) stays light: gunicorn's config
can set `PROMETHEUS_MULTIPROC_DIR` before prometheus_client is first imported.
"""

from __future__ import annotations

import logging

from flask import Flask

from app.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for one project root; settings default to the environment and `.env`."""
    from app.observability import configure_logging
    from app.runtime import Runtime
    from app.web import WebApp, init_web

    from_environment = settings is None
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    if from_environment and settings.hf_endpoint_warning:
        # `gunicorn wsgi:app` reads the environment here; `ctx` has already warned before passing its settings.
        logging.getLogger(__name__).warning(settings.hf_endpoint_warning)
    app = WebApp(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, SETTINGS=settings)
    init_web(app, settings, Runtime(settings))
    return app

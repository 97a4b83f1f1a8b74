"""The Contexis runtime: a Flask application built by `create_app`.

As in Flask's tutorial, the factory imports the app's modules when it runs, so
`import app.config` (what `cli.py` needs first) stays light: gunicorn's config
can set `PROMETHEUS_MULTIPROC_DIR` before prometheus_client is first imported.
"""

from __future__ import annotations

from flask import Flask

from app.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for one project root; settings default to the environment and `.env`."""
    from app import chat, health, openapi
    from app.auth import init_auth
    from app.errors import register_error_handlers
    from app.limits import init_limits
    from app.observability import configure_logging, init_observability
    from app.runtime import Runtime

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, SETTINGS=settings)
    app.json.sort_keys = False
    runtime = Runtime(settings)
    app.extensions["contexis"] = runtime
    register_error_handlers(app)
    init_observability(app, settings, runtime.metrics)
    # The limiter counts before keys are enforced, so requests with no or a wrong key are limited too.
    init_limits(app, settings)
    init_auth(app, settings)
    app.register_blueprint(chat.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    return app

"""Where a request finds the pipeline: the `Runtime` an app was built with, kept in its extensions.

A module of its own so blueprints reach it without importing `app.web` itself, which imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from app.runtime import Runtime

RUNTIME_KEY = "contexis"


def attach_runtime(app: Flask, runtime: Runtime) -> None:
    """Give `app` the runtime its routes use."""
    app.extensions[RUNTIME_KEY] = runtime


def get_runtime() -> Runtime:
    """The runtime of the application handling the current request."""
    runtime: Runtime = current_app.extensions[RUNTIME_KEY]
    return runtime

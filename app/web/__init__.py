"""The HTTP layer: blueprints, SSE framing, auth and limit hooks, JSON errors, request telemetry.

`init_web` wires it all into an app built by `app.create_app`; routes reach the
pipeline through `app.web.runtime.get_runtime()`.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask

from app.config import Settings

if TYPE_CHECKING:
    from app.runtime import Runtime


class WebApp(Flask):
    """Flask, asking once per function rather than on every call whether it is a coroutine function.

    Flask asks it of every hook and view it runs, five per chat request here, and `inspect` is not free.
    The answers are kept by the function (a bound method's own function), weakly: a function made per
    request (`after_this_request`, a class-based view's method) takes its answer with it when it goes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._coroutine: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        plain = getattr(func, "__func__", func)
        try:
            is_coroutine = self._coroutine.get(plain)
        except TypeError:  # not weakly referenceable: asked every time, as Flask does
            return super().ensure_sync(func)
        if is_coroutine is None:
            is_coroutine = self._coroutine[plain] = inspect.iscoroutinefunction(func)
        return self.async_to_sync(func) if is_coroutine else func


def init_web(app: Flask, settings: Settings, runtime: Runtime) -> None:
    """Errors, telemetry, limits, auth and routes, in the order their hooks must run."""
    from app.web import chat, health, openai_api, openapi, usage
    from app.web.auth import init_auth
    from app.web.cors import init_cors
    from app.web.errors import register_error_handlers, register_error_shape
    from app.web.json import JSONProvider
    from app.web.limits import init_limits
    from app.web.responses_api import init_responses
    from app.web.runtime import attach_runtime
    from app.web.telemetry import init_observability

    app.json = JSONProvider(app)
    attach_runtime(app, runtime)
    register_error_handlers(app)
    register_error_shape(openai_api.bp.url_prefix or "", openai_api.openai_error)
    init_observability(app, settings, runtime.metrics)
    init_cors(app, settings)
    # The limiter counts before keys are enforced, so requests with no or a wrong key are limited too.
    init_limits(app, settings, runtime.metrics)
    init_auth(app, settings)
    app.register_blueprint(chat.bp)
    app.register_blueprint(openai_api.bp)
    init_responses(app, settings)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(usage.bp)
    if settings.playground:
        from app.web import playground

        app.register_blueprint(playground.bp)

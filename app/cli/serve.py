"""`ctx serve`: gunicorn with the package's settings, in-process; `--dev` runs Flask's reloader instead."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from app.cli.common import fail, root_hint
from app.config import Settings

# gunicorn's settings ship inside the package (not next to cli.py), so a source tree, an
# installed wheel and the image serve alike; CMP_GUNICORN_CONFIG names a file that replaces them.
DEFAULT_GUNICORN_CONFIG = "python:app.gunicorn_conf"


def parse_addr(addr: str) -> tuple[str, int]:
    """`:8000` → all interfaces; `127.0.0.1:9000` and `[::1]:9000` as written."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"invalid address {addr!r}: expected [HOST]:PORT")
    return host or "0.0.0.0", int(port)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or an empty name
        return False


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """gunicorn with gthread workers, in-process; `--dev` runs Flask's reloader instead."""
    host, port = args.addr
    if not (settings.project_root / "contexts").is_dir():
        # It would serve, and /readyz would say why it is not ready: say it here, where the user is looking.
        print(f"ctx: warning: no contexts/ folder to serve: {root_hint(settings)}", file=sys.stderr)
    if args.dev:
        from app import create_app

        create_app(settings).run(host=host.strip("[]"), port=port, debug=True, use_reloader=True)
        return 0

    from gunicorn.app.base import Application

    config = os.environ.get("CMP_GUNICORN_CONFIG") or DEFAULT_GUNICORN_CONFIG
    # Serving without the configured settings would be another server (sync workers, one of them).
    if config.startswith("python:"):
        if not _module_exists(config.removeprefix("python:")):
            return fail(f"gunicorn config {config}: no such module", 2)
    elif not Path(config.removeprefix("file:")).is_file():
        return fail(f"gunicorn config {config} (CMP_GUNICORN_CONFIG) does not exist", 2)
    overrides = {"bind": [f"{host}:{port}"], "workers": args.workers, "threads": args.threads}

    class Server(Application):
        def init(self, parser, opts, args):  # gunicorn's hook for its own argv, unused here
            return None

        def load_config(self) -> None:
            # Precedence, as with the gunicorn command: config file < GUNICORN_CMD_ARGS < flags.
            self.load_config_from_module_name_or_filename(config)
            env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
            for key, value in vars(env_args).items():
                if value is not None and key in self.cfg.settings and key != "config":
                    self.cfg.set(key, value)
            for key, value in overrides.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self):
            from app import create_app

            return create_app(settings.replace(threads=self.cfg.threads))

    Server().run()
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="serve the HTTP API with gunicorn")
    serve.add_argument("--addr", type=parse_addr, default=":8000", help="[HOST]:PORT (default :8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: WEB_CONCURRENCY or the config)")
    serve.add_argument("--threads", type=int, help="threads per worker (default: GUNICORN_THREADS or the config)")
    serve.add_argument("--dev", action="store_true", help="Flask's development server with the reloader")
    serve.set_defaults(handler=cmd_serve)

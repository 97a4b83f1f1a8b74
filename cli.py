"""The `ctx` entry point (`ctx = cli:main`, and `python cli.py ...` from a source tree).

The commands live in `app/cli/`, one module per group; see `app/cli/__init__.py` to add one.
"""

from __future__ import annotations

import sys

from app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

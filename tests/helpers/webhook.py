"""A real local endpoint for the alert webhook (vault/access/alerts.py): records every JSON body POSTed to it."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any


class WebhookReceiver:
    """An HTTP server on a free loopback port; `received` holds the JSON bodies in arrival order."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hook"

    def wait(self, n: int = 1, *, timeout: float = 5.0) -> list[Any]:
        """The bodies received so far, once at least `n` arrived or `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

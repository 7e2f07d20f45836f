"""A JSON API on loopback for the import and pull tests (a catalog, Twilio, the Graph API)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

Answer = Callable[[str, dict[str, list[str]], str | None], tuple[int, Any]]


class JsonServer:
    """GET -> `answer(path, query, authorization)` as (status, JSON body); every request recorded."""

    def __init__(self, answer: Answer):
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                parsed = urlparse(self.path)
                query, auth = parse_qs(parsed.query), self.headers.get("Authorization")
                server.requests.append((parsed.path, query, auth))
                status, body = answer(parsed.path, query, auth)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

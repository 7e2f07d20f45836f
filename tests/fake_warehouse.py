"""A warehouse (WMS) on loopback implementing the API of SPEC 11, for tests and bench/bench_reconcile.py.

`GET /inventory?cursor=&limit=` and `GET /orders?cursor=&limit=&updated_since=` answer
`{"items": [...], "next_cursor": null | str}`, keyset-paginated by sku / wms_order_id, with
`Authorization: Bearer <api_key>` required; in key order, unless a collection's `order` says otherwise
(keyset pages in that order, as a source paging by something other than its key would). Faults on
demand: a page number that answers 500 (or 200 with a body that is not JSON),
429s with `Retry-After`, a delay per page. Items are kept serialised, so the server is cheap next
to the client it serves.
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Collection:
    def __init__(self, key: str):
        self.key = key
        self.rows: dict[str, bytes] = {}
        self.updated: dict[str, str] = {}
        self._keys: list[str] | None = []
        #: the order pages list the keys in (a sort key of a key); None: the keys' own order
        self.order: Callable[[str], Any] | None = None

    def put(self, item: dict[str, Any]) -> None:
        k = item[self.key]
        if k not in self.rows:
            self._keys = None
        self.rows[k] = json.dumps(item, separators=(",", ":")).encode()
        self.updated[k] = item.get("updated_at") or ""

    def remove(self, k: str) -> None:
        del self.rows[k]
        del self.updated[k]
        self._keys = None

    def get(self, k: str) -> dict[str, Any]:
        return json.loads(self.rows[k])

    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = sorted(self.rows, key=self.order)
        return self._keys


class FakeWarehouse:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.inventory = Collection("sku")
        self.orders = Collection("wms_order_id")
        self.fail_page: int | None = None  # the page starting at item (n - 1) * limit answers 500, every time
        self.broken_page: int | None = None  # that page answers 200 with a body that is not JSON
        self.throttle: int = 0  # this many next requests answer 429 Retry-After: 1
        self.delay: float = 0.0
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeWarehouse:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def page(self, resource: str, query: dict[str, list[str]]) -> tuple[int, bytes, dict[str, str]]:
        coll = {"inventory": self.inventory, "orders": self.orders}.get(resource)
        if coll is None:
            return 404, b'{"error": "no such resource"}', {}
        cursor = (query.get("cursor") or [""])[0]
        try:
            limit = max(1, min(int((query.get("limit") or ["100"])[0]), 10_000))
            after = base64.urlsafe_b64decode(cursor.encode()).decode() if cursor else None
        except ValueError:
            return 400, b'{"error": "bad cursor or limit"}', {}
        with self._lock:
            if self.throttle > 0:
                self.throttle -= 1
                return 429, b'{"error": "slow down"}', {"Retry-After": "1"}
            keys = coll.keys()
            order = coll.order or (lambda k: k)
            start = 0 if after is None else bisect.bisect_right(keys, order(after), key=order)
            if self.fail_page is not None and start // limit + 1 == self.fail_page:
                return 500, b'{"error": "the warehouse database is down"}', {}
            if self.broken_page is not None and start // limit + 1 == self.broken_page:
                return 200, b'{"items": [{"sku": "SKU-1", oops}], "next_cursor": null}', {}
            since = (query.get("updated_since") or [""])[0]
            chosen: list[bytes] = []
            i = start
            while i < len(keys) and len(chosen) < limit:
                k = keys[i]
                if not since or coll.updated[k] >= since:
                    chosen.append(coll.rows[k])
                i += 1
            last = keys[i - 1] if chosen or i > start else None
            more = i < len(keys)
        nxt = json.dumps(base64.urlsafe_b64encode(last.encode()).decode() if more and last else None)
        body = b'{"items":[' + b",".join(chosen) + b'],"next_cursor":' + nxt.encode() + b"}"
        if self.delay:
            time.sleep(self.delay)
        return 200, body, {}

    def _handler(self):
        warehouse = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                auth = self.headers.get("Authorization")
                warehouse.requests.append((parts.path, query, auth))
                if auth != f"Bearer {warehouse.api_key}":
                    status, body, headers = 401, b'{"error": "unauthorized"}', {}
                else:
                    status, body, headers = warehouse.page(parts.path.strip("/"), query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        return Handler

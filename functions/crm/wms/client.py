"""The warehouse API client (SPEC 11): `GET {base_url}/inventory` and `GET {base_url}/orders`, page
by page, on the SSRF-safe client (`crm.net.SafePoster`: every resolved address checked and pinned,
no redirects, one deadline per request, bodies capped).

`Authorization: Bearer <api_key>` (the wms integration's secret); the key is never logged nor put
in an error message. 429 and 503 wait as `Retry-After` says (bounded: a wait longer than
`max_retry_after` fails the page instead of stalling the job); timeouts, connection errors and 5xx
are retried with backoff, `max_attempts` in all. A page keeps its raw bytes: reconciliation hands
them to SQL as they came (no re-serialising), paging alone only parses them. Reconciliation does not
even parse them here (`parse=False`): the database parses the page anyway (and refuses one that is
not JSON or has no items array), so the client reads only `next_cursor`, from the end of the body
when it is the object's last member (`tail_cursor`), else from the whole document.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

from crm.net import PostPolicy, PostResult, SafePoster

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_PAGE_BYTES = 32 * 1024 * 1024


class WarehouseError(Exception):
    """A page the warehouse did not give us (after the retries): the message says why, never a key."""


@dataclass(frozen=True)
class ClientPolicy:
    timeout: float = 30.0
    connect_timeout: float = 5.0
    max_attempts: int = 4
    backoff: tuple[float, ...] = (0.5, 2.0, 5.0)
    max_retry_after: float = 60.0
    max_page_bytes: int = MAX_PAGE_BYTES


@dataclass
class Page:
    number: int
    cursor: str | None  # the cursor that fetched it (None: the first page)
    raw: bytes
    items: list | None  # None: not parsed (`pages(parse=False)`)
    next_cursor: str | None


_SPACE = b" \t\r\n"


def _string_start(body: bytes, end: int) -> int:
    """Where the JSON string whose closing quote is at `end` opens (-1: none): the nearest quote
    before it that no odd run of backslashes escapes (inside a string every quote is escaped)."""
    i = end
    while True:
        i = body.rfind(b'"', 0, i)
        if i < 0:
            return -1
        slashes = 0
        while i - slashes - 1 >= 0 and body[i - slashes - 1] == 0x5C:
            slashes += 1
        if slashes % 2 == 0:
            return i


def tail_cursor(body: bytes) -> tuple[bool, str | None]:
    """`next_cursor` read backwards from the end of a JSON object: (True, value) when its last member
    is `"next_cursor": null | "string"`, else (False, None) (the caller parses the whole document).

    In a valid document the last tokens before the closing brace are that member's value, a colon,
    its key and a comma or the opening brace; nothing inside a string can pass for them (a quote in
    a string is escaped). Whether the document is valid the database says when it parses the page.
    """
    end = len(body.rstrip(_SPACE)) - 1
    if end < 1 or body[end] != 0x7D:  # }
        return False, None
    j = len(body[:end].rstrip(_SPACE)) - 1
    if body[j - 3:j + 1] == b"null":
        value: str | None = None
        start = j - 3
    elif body[j] == 0x22:  # "
        start = _string_start(body, j)
        if start < 0:
            return False, None
        try:
            value = json.loads(body[start:j + 1])
        except (UnicodeDecodeError, ValueError):
            return False, None
    else:
        return False, None
    k = len(body[:start].rstrip(_SPACE)) - 1
    if k < 0 or body[k] != 0x3A:  # :
        return False, None
    key_end = len(body[:k].rstrip(_SPACE)) - 1
    if key_end < 0 or body[key_end] != 0x22 or (key_start := _string_start(body, key_end)) < 0:
        return False, None
    before = body[:key_start].rstrip(_SPACE)
    if not before or before[-1] not in b",{" or body[key_start:key_end + 1] != b'"next_cursor"':
        return False, None
    return True, value


class WarehouseClient:
    def __init__(self, base_url: str, api_key: str, *, allow_loopback: bool = False,
                 policy: ClientPolicy | None = None, poster: SafePoster | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self.policy = policy or ClientPolicy()
        self._own_poster = poster is None
        self.poster = poster or SafePoster(PostPolicy(
            allow_loopback=allow_loopback, timeout=self.policy.timeout,
            connect_timeout=self.policy.connect_timeout, max_response_bytes=self.policy.max_page_bytes,
            max_connections=4, user_agent="crm-wms/1.0"))
        self.sleep = sleep

    def close(self) -> None:
        if self._own_poster:
            self.poster.close()

    def __enter__(self) -> WarehouseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, resource: str, params: dict[str, str | int | None]) -> str:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{self.base_url}/{resource}" + (f"?{query}" if query else "")

    def get_json(self, url: str, *, parse: bool = True) -> tuple[bytes, dict]:
        """One GET with the retries; the raw body and its parsed object (without `parse`, only its
        `next_cursor` when `tail_cursor` finds it: `{"next_cursor": ...}`)."""
        attempts = max(1, self.policy.max_attempts)
        for attempt in range(1, attempts + 1):
            res = self.poster.get(url, self._auth)
            problem, wait = self._judge(res, attempt)
            if problem is None:
                found, cursor = (False, None) if parse else tail_cursor(res.body)
                if found:
                    return res.body, {"next_cursor": cursor}
                try:
                    doc = json.loads(res.body)
                except (UnicodeDecodeError, ValueError) as exc:
                    problem, wait = f"the answer is not JSON ({exc})", self._backoff(attempt)
                else:
                    return res.body, doc
            if wait is None or attempt == attempts:
                raise WarehouseError(problem)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        steps = self.policy.backoff or (1.0,)
        return steps[min(attempt, len(steps)) - 1]

    def _judge(self, res: PostResult, attempt: int) -> tuple[str | None, float | None]:
        """(None, None) for a usable answer, else (why, seconds to wait before retrying or None)."""
        if res.status_code is None:
            retryable = not (res.error or "").startswith(("bad_url", "bad_scheme", "refused", "blocked"))
            return res.error or "no answer", self._backoff(attempt) if retryable else None
        if res.ok:
            if len(res.body) >= self.policy.max_page_bytes:
                return f"a page larger than {self.policy.max_page_bytes} bytes", None
            return None, None
        error = res.error or f"HTTP {res.status_code}"
        if res.status_code not in RETRY_STATUSES:
            return error, None
        asked = res.retry_after() if res.status_code in (429, 503) else None
        if asked is not None:
            if asked > self.policy.max_retry_after:
                return f"{error} (Retry-After {asked:g} s is longer than we wait)", None
            return error, max(asked, 0.0)
        return error, self._backoff(attempt)

    def pages(self, resource: str, *, limit: int, params: dict[str, str | int | None] | None = None,
              cursor: str | None = None, parse: bool = True) -> Iterator[Page]:
        """Every page of `resource` from `cursor` on. Memory: one page at a time. Without `parse`
        the items stay raw (`items` None): for a caller that hands them to the database."""
        number = 0
        while True:
            number += 1
            url = self.url(resource, {**(params or {}), "cursor": cursor, "limit": limit})
            try:
                raw, doc = self.get_json(url, parse=parse)
            except WarehouseError as exc:
                raise WarehouseError(f"page {number} (cursor {cursor!r}): {exc}") from None
            items = doc.get("items") if isinstance(doc, dict) else None
            next_cursor = doc.get("next_cursor") if isinstance(doc, dict) else None
            if parse or "items" in doc:
                items_ok = isinstance(items, list)
            else:
                items_ok, items = True, None  # the database checks them
            if not items_ok or not (next_cursor is None or isinstance(next_cursor, str)):
                raise WarehouseError(f"page {number} (cursor {cursor!r}): not an "
                                     '{"items": [...], "next_cursor": null | string} object')
            if next_cursor is not None and (next_cursor == cursor or not next_cursor):
                raise WarehouseError(f"page {number} (cursor {cursor!r}): the next cursor does not move on")
            yield Page(number, cursor, raw, items, next_cursor)
            if next_cursor is None:
                return
            cursor = next_cursor

    def inventory(self, *, limit: int = 1000) -> Iterator[Page]:
        return self.pages("inventory", limit=limit)

    def orders(self, *, limit: int = 1000, updated_since: str | None = None) -> Iterator[Page]:
        return self.pages("orders", limit=limit, params={"updated_since": updated_since})

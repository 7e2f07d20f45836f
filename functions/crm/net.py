"""The SSRF-safe outbound client: webhook deliveries (POST), provider/warehouse APIs (GET, POST).

It is the image fetcher's network layer (`crm.images.fetch`), imported rather than copied: the
same address rules (`address_refusal`), the same resolve-once-check-every-address-and-pin
connection (`_PinnedBackend` under httpx), only each caller's own limits differ. Here: redirects
are never followed (a 3xx is an answer, and a failure for a webhook), response bodies are read
at most `max_response_bytes`, one deadline bounds the whole exchange, and failures come back as
a `PostResult` with an error instead of raising, so a delivery worker can record them.

Loopback is open only with `allow_loopback` (`CRM_WEBHOOK_ALLOW_LOOPBACK=1`: tests, demos), and
plain http only then too (SPEC 9: endpoint URLs are https elsewhere). Any port is allowed: the
address rules, not the port, keep requests off our own network.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from crm.images.errors import FetchError
from crm.images.fetch import (
    MAX_URL_LENGTH,
    Connector,
    FetchPolicy,
    Resolver,
    _PinnedBackend,
    _PinnedTransport,
    system_resolver,
    tcp_connector,
)

ALL_PORTS = frozenset(range(1, 65536))


@dataclass(frozen=True)
class PostPolicy:
    allow_loopback: bool = False
    timeout: float = 15.0
    connect_timeout: float = 5.0
    max_response_bytes: int = 4096
    max_connections: int = 64
    user_agent: str = "crm-webhooks/1.0"


@dataclass
class PostResult:
    status_code: int | None
    duration_ms: int
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds the receiver asked us to wait (`Retry-After`: seconds or an HTTP date), or None."""
        raw = self.headers.get("retry-after", "").strip()
        if not raw:
            return None
        if raw.isdigit():
            return float(raw)
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - (now if now is not None else datetime.now(UTC).timestamp()))


class SafePoster:
    """POSTs under `PostPolicy`. Thread-safe (one connection pool); `close()` it when done."""

    def __init__(self, policy: PostPolicy, *, resolver: Resolver | None = None,
                 connector: Connector | None = None, verify: ssl.SSLContext | bool = True):
        self.policy = policy
        pinning = FetchPolicy(allow_loopback=policy.allow_loopback, allowed_ports=ALL_PORTS,
                              connect_timeout=policy.connect_timeout, total_timeout=policy.timeout,
                              max_redirects=0)
        self.backend = _PinnedBackend(pinning, resolver or system_resolver, connector or tcp_connector)
        limits = httpx.Limits(max_connections=policy.max_connections,
                              max_keepalive_connections=policy.max_connections, keepalive_expiry=30)
        self.client = httpx.Client(
            transport=_PinnedTransport(self.backend, verify, limits),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect on our behalf, unchecked
            headers={"User-Agent": policy.user_agent, "Accept-Encoding": "identity"},
        )

    def __enter__(self) -> SafePoster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def url_refusal(self, url: str) -> str | None:
        """What is wrong with the URL itself (before any resolution), or None."""
        if not isinstance(url, str) or not url.strip() or len(url) > MAX_URL_LENGTH:
            return "bad_url: empty or too long"
        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            return f"bad_url: {exc}"
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return "bad_url: not an http(s) URL with a host"
        if parsed.scheme == "http" and not self.policy.allow_loopback:
            return "bad_scheme: endpoint URLs must be https"
        if parsed.userinfo:
            return "bad_url: URL with credentials"
        return None

    def post(self, url: str, content: bytes, headers: dict[str, str]) -> PostResult:
        return self.send("POST", url, content, headers)

    def get(self, url: str, headers: dict[str, str] | None = None) -> PostResult:
        """A GET under the same rules (provider and warehouse APIs); the body is cut at the cap."""
        return self.send("GET", url, None, headers or {})

    def send(self, method: str, url: str, content: bytes | None, headers: dict[str, str]) -> PostResult:
        started = time.monotonic()
        deadline = started + self.policy.timeout

        def result(status: int | None, error: str | None = None, **kw: object) -> PostResult:
            return PostResult(status, int((time.monotonic() - started) * 1000), error, **kw)  # type: ignore[arg-type]

        refusal = self.url_refusal(url)
        if refusal is not None:
            return result(None, refusal)
        timeout = httpx.Timeout(self.policy.timeout, connect=min(self.policy.connect_timeout, self.policy.timeout))
        try:
            request = self.client.build_request(method, url.strip(), content=content, headers=headers,
                                                timeout=timeout)
            response = self.client.send(request, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) >= self.policy.max_response_bytes or time.monotonic() > deadline:
                        break  # enough to show an operator; closing drops the rest with the connection
                status = response.status_code
                error = None
                if 300 <= status < 400:
                    location = response.headers.get("location", "")[:200]
                    error = f"HTTP {status}: redirects are not followed (Location: {location})"
                elif not 200 <= status < 300:
                    excerpt = bytes(body[:300]).decode("utf-8", "replace").strip()
                    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
                if time.monotonic() > deadline and error is None and not 200 <= status < 300:
                    error = f"timeout: no complete answer within {self.policy.timeout:g} s"
                return result(status, error, headers={k.lower(): v for k, v in response.headers.items()},
                              body=bytes(body[: self.policy.max_response_bytes]))
            finally:
                response.close()
        except FetchError as exc:
            return result(None, f"{exc.reason}: {exc.detail}")
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            return result(None, f"timeout: no {kind} within {self.policy.timeout:g} s")
        except httpx.ConnectError as exc:
            return result(None, f"connect_failed: {exc or 'connection failed'}")
        except httpx.HTTPError as exc:
            return result(None, f"network_error: {type(exc).__name__}: {exc}")

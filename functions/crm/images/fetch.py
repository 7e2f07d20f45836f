"""The image download: a GET on the platform's SSRF-safe client (`crm.net`: every resolved address
checked, the connection pinned to it) with the image cache's own limits: ports, size, time,
content types asked for, and redirects followed by hand, each hop checked again, at most
`max_redirects`.

Only `CRM_IMAGE_ALLOW_LOOPBACK=1` (tests, `crm dev` demos) opens 127.0.0.0/8 and ::1; no setting
opens any other refused range.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from crm import config
from crm.errors import ConfigError
from crm.images.errors import FetchError
from crm.net import DEFAULT_PORTS, AddressRules, Connector, OutboundError, Resolver, check_url, pinned_client

MiB = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "crm-image-cache/1.0"
#: What we can decode; no image/avif or a bare image/*, so CDNs that negotiate formats send one of these.
IMAGE_ACCEPT = "image/webp,image/jpeg,image/png,image/gif;q=0.9"

@dataclass(frozen=True)
class FetchPolicy:
    allow_loopback: bool = False
    #: Ports other than these are refused (loopback excepted when it is allowed).
    allowed_ports: frozenset[int] = frozenset({80, 443})
    max_bytes: int = 10 * MiB
    connect_timeout: float = 5.0
    total_timeout: float = 20.0
    max_redirects: int = 3
    #: How many of a host's checked addresses to try before giving up.
    max_connect_attempts: int = 3

    @property
    def rules(self) -> AddressRules:
        return AddressRules(allow_loopback=self.allow_loopback, allowed_ports=self.allowed_ports,
                            max_connect_attempts=self.max_connect_attempts)

    @classmethod
    def from_env(cls) -> FetchPolicy:
        ports = frozenset({80, 443})
        raw = config.env("CRM_IMAGE_ALLOWED_PORTS")
        if raw:
            try:
                ports = frozenset(int(p) for p in raw.replace(" ", "").split(",") if p)
            except ValueError:
                ports = frozenset()  # refused just below
            if not ports or not all(0 < p < 65536 for p in ports):
                raise ConfigError(f"CRM_IMAGE_ALLOWED_PORTS must list port numbers (1-65535), got {raw!r}")
        return cls(
            allow_loopback=config.env_flag("CRM_IMAGE_ALLOW_LOOPBACK"),
            allowed_ports=ports,
            max_bytes=_positive("CRM_IMAGE_MAX_BYTES", 10 * MiB),
            connect_timeout=_positive("CRM_IMAGE_CONNECT_TIMEOUT", 5),
            total_timeout=_positive("CRM_IMAGE_TIMEOUT", 20),
        )


def _positive(name: str, default: int) -> int:
    value = config.env_int(name, default)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str
    body: bytes
    redirects: list[str] = field(default_factory=list)


class SafeFetcher:
    """Downloads under `FetchPolicy`. Thread-safe; keep one per process or job run and `close()` it."""

    def __init__(self, policy: FetchPolicy | None = None, *, resolver: Resolver | None = None,
                 connector: Connector | None = None, verify: ssl.SSLContext | bool = True):
        self.policy = policy or FetchPolicy.from_env()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=15)
        self.client = pinned_client(self.policy.rules, limits=limits, user_agent=USER_AGENT, resolver=resolver,
                                    connector=connector, verify=verify)

    def __enter__(self) -> SafeFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def check_url(self, url: str) -> httpx.URL:
        """Refuse what is wrong with the URL itself, before any resolution or connection."""
        try:
            parsed = check_url(url)
        except OutboundError as exc:
            raise FetchError(exc.reason, exc.detail) from None
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        if port not in self.policy.allowed_ports and not self.policy.allow_loopback:
            raise FetchError("blocked_port", f"port {port} is not allowed")
        return parsed

    def fetch(self, url: str, *, max_bytes: int | None = None, accept: str = IMAGE_ACCEPT) -> FetchResult:
        """GET `url` (redirects followed and checked), the body capped; non-2xx is a FetchError."""
        cap = self.policy.max_bytes if max_bytes is None else max_bytes
        deadline = time.monotonic() + self.policy.total_timeout
        with self._open(url, deadline, accept) as (response, redirects):
            if not 200 <= response.status_code < 300:
                raise FetchError("http_status", f"HTTP {response.status_code}", status=response.status_code)
            body = self._read(response, deadline, cap)
            return FetchResult(url=url, final_url=str(response.url), status=response.status_code,
                               content_type=response.headers.get("content-type", ""), body=body,
                               redirects=redirects)

    def status(self, url: str, *, accept: str = "*/*") -> int:
        """The final HTTP status of `url` after checked redirects, without reading the body."""
        deadline = time.monotonic() + self.policy.total_timeout
        with self._open(url, deadline, accept) as (response, _):
            return response.status_code

    @contextmanager
    def _open(self, url: str, deadline: float, accept: str) -> Iterator[tuple[httpx.Response, list[str]]]:
        current = self.check_url(url)
        redirects: list[str] = []
        while True:
            response = self._send(current, deadline, accept)
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location", "").strip()
                    if not location:
                        raise FetchError("bad_redirect", f"HTTP {response.status_code} without a Location")
                    if len(redirects) >= self.policy.max_redirects:
                        raise FetchError("too_many_redirects",
                                         f"more than {self.policy.max_redirects} redirects")
                    try:
                        target = str(current.join(location))
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise FetchError("bad_redirect", f"invalid Location: {exc}") from None
                    current = self.check_url(target)
                    redirects.append(target)
                    continue
                yield response, redirects
                return
            finally:
                response.close()

    def _send(self, url: httpx.URL, deadline: float, accept: str) -> httpx.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", f"no answer within {self.policy.total_timeout:g} s")
        timeout = httpx.Timeout(remaining, connect=min(self.policy.connect_timeout, remaining))
        request = self.client.build_request("GET", url, headers={"Accept": accept}, timeout=timeout)
        with _mapped_errors(self.policy):
            return self.client.send(request, stream=True)

    def _read(self, response: httpx.Response, deadline: float, cap: int) -> bytes:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We asked for identity; a compressed body would make the byte cap meaningless.
            raise FetchError("bad_encoding", f"Content-Encoding {encoding!r} was not asked for")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise FetchError("too_large", f"{int(declared)} bytes declared, more than {cap}")
        chunks: list[bytes] = []
        size = 0
        with _mapped_errors(self.policy):
            for chunk in response.iter_raw():
                size += len(chunk)
                if size > cap:
                    raise FetchError("too_large", f"more than {cap} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"download took over {self.policy.total_timeout:g} s")
                chunks.append(chunk)
        return b"".join(chunks)


@contextmanager
def _mapped_errors(policy: FetchPolicy) -> Iterator[None]:
    try:
        yield
    except OutboundError as exc:  # refused by the address rules, or DNS failed
        raise FetchError(exc.reason, exc.detail) from exc
    except httpx.TimeoutException as exc:
        kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
        raise FetchError("timeout", f"no {kind} within the time limit") from exc
    except httpx.ConnectError as exc:
        raise FetchError("connect_failed", str(exc) or "connection failed") from exc
    except (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.DecodingError) as exc:
        raise FetchError("protocol_error", str(exc) or "invalid HTTP") from exc
    except httpx.TransportError as exc:
        raise FetchError("network_error", str(exc) or type(exc).__name__) from exc

"""A download that cannot be pointed at our own network (SSRF), built on httpx.

Every connection goes through `_PinnedBackend.connect_tcp`: it resolves the host once, refuses the
whole host if ANY of its A/AAAA addresses is refused, and connects to one of exactly those checked
addresses. httpx still sends `Host: <name>` and uses the name for TLS (SNI and certificate
verification), so a DNS answer that changes between check and connect (rebinding) cannot reach a
refused address. Redirects are followed by hand, each hop checked again, at most `max_redirects`.

Only `CRM_IMAGE_ALLOW_LOOPBACK=1` (tests, `crm dev` demos) opens 127.0.0.0/8 and ::1; no setting
opens any other refused range.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpcore
import httpx

from crm import config
from crm.errors import ConfigError
from crm.images.errors import FetchError

MiB = 1024 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_URL_LENGTH = 2048
USER_AGENT = "crm-image-cache/1.0"
#: What we can decode; no image/avif or a bare image/*, so CDNs that negotiate formats send one of these.
IMAGE_ACCEPT = "image/webp,image/jpeg,image/png,image/gif;q=0.9"

#: host, port -> IP address strings (A and AAAA). Injectable so tests never touch real DNS.
Resolver = Callable[[str, int], list[str]]
#: ip, port, connect timeout -> an open stream. Injectable so tests can see every attempt.
Connector = Callable[[str, int, "float | None"], httpcore.NetworkStream]

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, class) in lookup order; a more specific range comes before the one containing it.
_REFUSED_V4: list[tuple[IPNet, str]] = [(ipaddress.ip_network(n), c) for n, c in (
    ("0.0.0.0/8", "this_network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),  # includes the cloud metadata address 169.254.169.254
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)]
_REFUSED_V6: list[tuple[IPNet, str]] = [(ipaddress.ip_network(n), c) for n, c in (
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("64:ff9b:1::/48", "nat64_local"),
    ("100::/64", "discard"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique_local"),
    ("fe80::/10", "link_local"),
    ("fec0::/10", "site_local"),
    ("ff00::/8", "multicast"),
)]
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def address_refusal(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why a connection to `address` is refused (a class such as "private"), or None if allowed.

    IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged by
    the IPv4 address they lead to as well.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_refusal(ip, allow_loopback)
    embedded: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        embedded.append(("ipv4_mapped", ip.ipv4_mapped))
    elif ip in _NAT64_WELL_KNOWN:
        embedded.append(("nat64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    elif ip in _IPV4_COMPATIBLE and int(ip) > 1:
        embedded.append(("ipv4_compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        embedded.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        embedded += [("teredo", server), ("teredo", client)]
    for form, v4 in embedded:
        # A mapped address is the IPv4 address itself; tunnels and translators never reach loopback.
        refusal = _v4_refusal(v4, allow_loopback and form == "ipv4_mapped")
        if refusal is not None:
            return f"{form}_{refusal}"
    if ip.ipv4_mapped is not None or ip in _NAT64_WELL_KNOWN:
        return None  # the packets go to the embedded IPv4 address, judged above
    for net, refusal in _REFUSED_V6:
        if ip in net:
            if refusal == "loopback" and allow_loopback:
                return None
            return refusal
    if ip not in _GLOBAL_UNICAST_V6 or not ip.is_global:
        return "reserved"
    return None


def _v4_refusal(ip: ipaddress.IPv4Address, allow_loopback: bool) -> str | None:
    for net, refusal in _REFUSED_V4:
        if ip in net:
            if refusal == "loopback" and allow_loopback:
                return None
            return refusal
    # Anything else IANA lists as not globally reachable.
    return None if ip.is_global else "reserved"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_TCP = httpcore.SyncBackend()
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="crm-dns")


def tcp_connector(ip: str, port: int, timeout: float | None) -> httpcore.NetworkStream:
    return _TCP.connect_tcp(ip, port, timeout=timeout, socket_options=[])


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


class _PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network layer: resolve once, check every address, connect only to checked ones."""

    def __init__(self, policy: FetchPolicy, resolver: Resolver, connector: Connector):
        self.policy = policy
        self.resolver = resolver
        self.connector = connector

    def checked_addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        # getaddrinfo has no timeout of its own: wait for it at most the connect timeout.
        lookup = _DNS_POOL.submit(self.resolver, host, port)
        try:
            addresses = list(lookup.result(timeout=timeout))
        except concurrent.futures.TimeoutError:
            raise FetchError("timeout", f"resolving {host} took over {timeout:g} s") from None
        except (OSError, UnicodeError) as exc:
            raise FetchError("dns_failure", f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise FetchError("dns_failure", f"{host} has no addresses")
        for address in addresses:
            refusal = address_refusal(address, allow_loopback=self.policy.allow_loopback)
            if refusal is not None:
                raise FetchError("blocked_address", f"{host} resolves to {address} ({refusal})")
        if port not in self.policy.allowed_ports and not all(
                _is_loopback(a) for a in addresses):
            raise FetchError("blocked_port", f"port {port} is not allowed")
        return addresses

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                    ) -> httpcore.NetworkStream:
        addresses = self.checked_addresses(host, port, timeout)
        last: Exception | None = None
        for address in addresses[: self.policy.max_connect_attempts]:
            try:
                return self.connector(address, port, timeout)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                last = exc
        if isinstance(last, httpcore.ConnectTimeout):
            raise last
        raise httpcore.ConnectError(str(last)) from last

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                            ) -> httpcore.NetworkStream:
        raise FetchError("bad_url", "unix sockets are never used")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with our network backend under its connection pool.

    HTTPTransport does not take a network backend, so its pool is replaced by an identical one
    that has it; everything else (request/response mapping, exception mapping) stays httpx's own.
    """

    def __init__(self, backend: _PinnedBackend, verify: ssl.SSLContext | bool, limits: httpx.Limits):
        super().__init__(verify=verify, trust_env=False, limits=limits, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )


class SafeFetcher:
    """Downloads under `FetchPolicy`. Thread-safe; keep one per process or job run and `close()` it."""

    def __init__(self, policy: FetchPolicy | None = None, *, resolver: Resolver | None = None,
                 connector: Connector | None = None, verify: ssl.SSLContext | bool = True):
        self.policy = policy or FetchPolicy.from_env()
        self.backend = _PinnedBackend(self.policy, resolver or system_resolver, connector or tcp_connector)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=15)
        self.client = httpx.Client(
            transport=_PinnedTransport(self.backend, verify, limits),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would connect on our behalf, unchecked
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def __enter__(self) -> SafeFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def check_url(self, url: str) -> httpx.URL:
        """Refuse what is wrong with the URL itself, before any resolution or connection."""
        if not isinstance(url, str) or not url.strip():
            raise FetchError("bad_url", "empty URL")
        if len(url) > MAX_URL_LENGTH:
            raise FetchError("bad_url", f"URL longer than {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url.strip())
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise FetchError("bad_url", str(exc)) from None
        if parsed.scheme not in DEFAULT_PORTS:
            raise FetchError("bad_scheme", f"only http and https, not {parsed.scheme or 'none'!r}")
        if not parsed.host:
            raise FetchError("bad_url", "URL without a host")
        if parsed.userinfo:
            raise FetchError("bad_url", "URL with credentials")
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
    except httpx.TimeoutException as exc:
        kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
        raise FetchError("timeout", f"no {kind} within the time limit") from exc
    except httpx.ConnectError as exc:
        raise FetchError("connect_failed", str(exc) or "connection failed") from exc
    except (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.DecodingError) as exc:
        raise FetchError("protocol_error", str(exc) or "invalid HTTP") from exc
    except httpx.TransportError as exc:
        raise FetchError("network_error", str(exc) or type(exc).__name__) from exc

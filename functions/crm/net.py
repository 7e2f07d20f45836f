"""The platform's one SSRF-safe outbound HTTP client: for the image cache (GET, `crm.images.fetch`),
webhook deliveries (POST) and provider/warehouse APIs (GET, POST), each caller with its own limits.

Every connection goes through `PinnedBackend.connect_tcp`: it resolves the host once, refuses the
whole host if ANY of its A/AAAA addresses is refused (`address_refusal`), and connects to one of
exactly those checked addresses. httpx still sends `Host: <name>` and uses the name for TLS (SNI
and certificate verification), so a DNS answer that changes between check and connect (rebinding)
cannot reach a refused address. The client never follows a redirect itself: a caller that follows
them (the image cache) checks each hop again; `SafePoster` does not follow them at all.

`SafePoster` (deliveries, provider and warehouse APIs): response bodies are read at most
`max_response_bytes`, one deadline bounds the whole exchange, and failures come back as a
`PostResult` with an error instead of raising, so a delivery worker can record them. Loopback is
open only with `allow_loopback` (`CRM_WEBHOOK_ALLOW_LOOPBACK=1`: tests, demos), and plain http only
then too (SPEC 9: endpoint URLs are https elsewhere). Any port is allowed: the address rules, not
the port, keep requests off our own network.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpcore
import httpx

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
ALL_PORTS = frozenset(range(1, 65536))


class OutboundError(Exception):
    """A request refused by the rules (address, port, URL) or failed before an answer (DNS).
    `reason` is a stable snake_case code (`blocked_address`, `dns_failure`, …), `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


def check_url(url: str) -> httpx.URL:
    """Refuse what is wrong with an outbound URL itself, before any resolution or connection."""
    if not isinstance(url, str) or not url.strip():
        raise OutboundError("bad_url", "empty URL")
    if len(url) > MAX_URL_LENGTH:
        raise OutboundError("bad_url", f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise OutboundError("bad_url", str(exc)) from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise OutboundError("bad_scheme", f"only http and https, not {parsed.scheme or 'none'!r}")
    if not parsed.host:
        raise OutboundError("bad_url", "URL without a host")
    if parsed.userinfo:
        raise OutboundError("bad_url", "URL with credentials")
    return parsed


@dataclass(frozen=True)
class AddressRules:
    """Where a connection may go: the refused ranges always, loopback only when allowed."""

    allow_loopback: bool = False
    #: Ports other than these are refused (loopback excepted).
    allowed_ports: frozenset[int] = ALL_PORTS
    #: How many of a host's checked addresses to try before giving up.
    max_connect_attempts: int = 3


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network layer: resolve once, check every address, connect only to checked ones."""

    def __init__(self, rules: AddressRules, resolver: Resolver, connector: Connector):
        self.rules = rules
        self.resolver = resolver
        self.connector = connector

    def checked_addresses(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        # getaddrinfo has no timeout of its own: wait for it at most the connect timeout.
        lookup = _DNS_POOL.submit(self.resolver, host, port)
        try:
            addresses = list(lookup.result(timeout=timeout))
        except concurrent.futures.TimeoutError:
            raise OutboundError("timeout", f"resolving {host} took over {timeout:g} s") from None
        except (OSError, UnicodeError) as exc:
            raise OutboundError("dns_failure", f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise OutboundError("dns_failure", f"{host} has no addresses")
        for address in addresses:
            refusal = address_refusal(address, allow_loopback=self.rules.allow_loopback)
            if refusal is not None:
                raise OutboundError("blocked_address", f"{host} resolves to {address} ({refusal})")
        if port not in self.rules.allowed_ports and not all(is_loopback(a) for a in addresses):
            raise OutboundError("blocked_port", f"port {port} is not allowed")
        return addresses

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                    ) -> httpcore.NetworkStream:
        addresses = self.checked_addresses(host, port, timeout)
        last: Exception | None = None
        for address in addresses[: self.rules.max_connect_attempts]:
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
        raise OutboundError("bad_url", "unix sockets are never used")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport with our network backend under its connection pool.

    HTTPTransport does not take a network backend, so its pool is replaced by an identical one
    that has it; everything else (request/response mapping, exception mapping) stays httpx's own.
    """

    def __init__(self, backend: PinnedBackend, verify: ssl.SSLContext | bool, limits: httpx.Limits):
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


def pinned_client(rules: AddressRules, *, limits: httpx.Limits, user_agent: str, resolver: Resolver | None = None,
                  connector: Connector | None = None, verify: ssl.SSLContext | bool = True) -> httpx.Client:
    """An httpx client whose every connection is checked and pinned under `rules`; it follows no
    redirect, ignores proxy settings and asks for uncompressed bodies (so byte caps mean bytes)."""
    backend = PinnedBackend(rules, resolver or system_resolver, connector or tcp_connector)
    return httpx.Client(
        transport=PinnedTransport(backend, verify, limits),
        follow_redirects=False,
        trust_env=False,  # an environment proxy would connect on our behalf, unchecked
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
    )


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
        limits = httpx.Limits(max_connections=policy.max_connections,
                              max_keepalive_connections=policy.max_connections, keepalive_expiry=30)
        self.client = pinned_client(AddressRules(allow_loopback=policy.allow_loopback), limits=limits,
                                    user_agent=policy.user_agent, resolver=resolver, connector=connector,
                                    verify=verify)

    def __enter__(self) -> SafePoster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def url_refusal(self, url: str) -> str | None:
        """What is wrong with the URL itself (before any resolution), or None."""
        try:
            parsed = check_url(url)
        except OutboundError as exc:
            return str(exc)
        if parsed.scheme == "http" and not self.policy.allow_loopback:
            return "bad_scheme: endpoint URLs must be https"
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
        except OutboundError as exc:
            return result(None, str(exc))
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            return result(None, f"timeout: no {kind} within {self.policy.timeout:g} s")
        except httpx.ConnectError as exc:
            return result(None, f"connect_failed: {exc or 'connection failed'}")
        except httpx.HTTPError as exc:
            return result(None, f"network_error: {type(exc).__name__}: {exc}")

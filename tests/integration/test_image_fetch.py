"""The safe fetcher: real downloads from 127.0.0.1, and the address policy with DNS stubbed.

No test here opens a connection to anything but loopback: refused addresses come from stubbed
resolvers, and a recording connector proves that refusal happens before any connection attempt.
"""

from __future__ import annotations

import gzip
import ipaddress
import ssl
import threading
import time

import pytest

from crm.errors import ConfigError
from crm.images.errors import FetchError
from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.net import address_refusal, tcp_connector
from tests.helpers import TIMEOUT_SLACK, refused_port
from tests.integration.image_fixtures import (
    ImageServer,
    drip,
    self_signed,
    send,
    slow_headers,
    stream_without_length,
)

LOOPBACK = FetchPolicy(allow_loopback=True)


class Recorder:
    """Resolver and connector stubs: record every call; connect only to loopback, for real."""

    def __init__(self, answers: dict[str, list[str]] | None = None):
        self.answers = answers or {}
        self.resolved: list[tuple[str, int]] = []
        self.connects: list[tuple[str, int]] = []

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append((host, port))
        if host in self.answers:
            return self.answers[host]
        try:
            return [str(ipaddress.ip_address(host))]  # a literal, as getaddrinfo answers it
        except ValueError:
            pass
        raise OSError(f"stub resolver has no answer for {host}")

    def connect(self, ip: str, port: int, timeout: float | None):
        self.connects.append((ip, port))
        assert ip in ("127.0.0.1", "::1"), f"a test tried to connect to {ip}"
        return tcp_connector(ip, port, timeout)

    def fetcher(self, policy: FetchPolicy = LOOPBACK, **kw) -> SafeFetcher:
        return SafeFetcher(policy, resolver=self.resolve, connector=self.connect, **kw)


def reason_of(fetcher: SafeFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(url)
    return info.value


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


# -- address policy (resolver stubbed) ------------------------------------------------------------
REFUSED = {
    "0.0.0.0": "this_network",
    "0.1.2.3": "this_network",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "cgnat",
    "100.127.255.254": "cgnat",
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "169.254.169.254": "link_local",  # cloud metadata
    "169.254.1.1": "link_local",
    "224.0.0.251": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.0.8": "reserved",
    "192.0.2.10": "documentation",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "198.18.0.1": "benchmarking",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link_local",
    "fe80::1%2": "link_local",
    "fc00::1": "unique_local",
    "fd12:3456:789a::1": "unique_local",
    "fec0::1": "site_local",
    "ff02::1": "multicast",
    "2001:db8::1": "documentation",
    "100::1": "discard",
    "::ffff:127.0.0.1": "ipv4_mapped_loopback",
    "::ffff:10.0.0.1": "ipv4_mapped_private",
    "::ffff:169.254.169.254": "ipv4_mapped_link_local",
    "::127.0.0.1": "ipv4_compatible_loopback",
    "::10.0.0.1": "ipv4_compatible_private",
    "64:ff9b::a9fe:a9fe": "nat64_link_local",
    "64:ff9b::c0a8:101": "nat64_private",
    "64:ff9b:1::1": "nat64_local",
    "2002:7f00:1::1": "6to4_loopback",
    "2002:a9fe:a9fe::1": "6to4_link_local",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe": "teredo_private",  # client 10.0.0.1 (obfuscated)
    "2001:0:a00:1::1": "teredo_private",  # server 10.0.0.1
    "5f00::1": "reserved",
}


@pytest.mark.parametrize(("address", "refusal"), sorted(REFUSED.items()))
def test_refused_address_classes(address: str, refusal: str) -> None:
    assert address_refusal(address) == refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "2a00:1450:4001:81c::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address) is None


OPENED_BY_LOOPBACK_SETTING = {"127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"}


def test_only_the_loopback_setting_opens_loopback_and_nothing_else() -> None:
    for address in OPENED_BY_LOOPBACK_SETTING:
        assert address_refusal(address, allow_loopback=True) is None
    for address, refusal in REFUSED.items():
        if address not in OPENED_BY_LOOPBACK_SETTING:
            assert address_refusal(address, allow_loopback=True) == refusal, address


@pytest.mark.parametrize("address", sorted(set(REFUSED) - OPENED_BY_LOOPBACK_SETTING))
def test_refused_before_any_connection(address: str) -> None:
    rec = Recorder({"img.example": [address]})
    with rec.fetcher(LOOPBACK) as fetcher:
        err = reason_of(fetcher, "https://img.example/a.jpg")
    assert err.reason == "blocked_address"
    assert REFUSED[address] in err.detail
    assert rec.resolved == [("img.example", 443)]
    assert rec.connects == []


def test_loopback_is_refused_without_the_setting() -> None:
    rec = Recorder({"img.example": ["127.0.0.1"], "v6.example": ["::1"]})
    with rec.fetcher(FetchPolicy()) as fetcher:
        assert reason_of(fetcher, "http://img.example/a.jpg").reason == "blocked_address"
        assert reason_of(fetcher, "http://v6.example/a.jpg").reason == "blocked_address"
    assert rec.connects == []


def test_every_address_of_a_host_is_checked() -> None:
    """A public address first and a private one second: the host is refused as a whole."""
    rec = Recorder({"mixed.example": ["93.184.216.34", "10.0.0.5"],
                    "mixed6.example": ["2606:4700:4700::1111", "fd00::5"]})
    with rec.fetcher(FetchPolicy()) as fetcher:
        assert "10.0.0.5" in reason_of(fetcher, "http://mixed.example/x.jpg").detail
        assert "fd00::5" in reason_of(fetcher, "http://mixed6.example/x.jpg").detail
    assert rec.connects == []


def test_connection_is_pinned_to_the_checked_address(server: ImageServer) -> None:
    """The name is resolved once; the connection goes to that address; Host keeps the name."""
    url = server.add("/pic.jpg", b"bytes", "image/jpeg").replace("127.0.0.1", "images.test")
    rec = Recorder({"images.test": ["127.0.0.1"]})
    with rec.fetcher() as fetcher:
        result = fetcher.fetch(url)
    assert result.body == b"bytes"
    assert rec.resolved == [("images.test", server.port)]
    assert rec.connects == [("127.0.0.1", server.port)]
    assert server.seen[-1].host == f"images.test:{server.port}"


def test_tls_uses_the_host_name_for_sni_and_verification() -> None:
    cert, key = self_signed("images.test")
    server_ctx = _server_context(cert, key)
    client_ctx = ssl.create_default_context(cadata=cert.decode())
    with ImageServer(tls=server_ctx) as srv:
        url = srv.add("/pic.jpg", b"secure", "image/jpeg").replace("127.0.0.1", "images.test")
        rec = Recorder({"images.test": ["127.0.0.1"]})
        with rec.fetcher(verify=client_ctx) as fetcher:
            assert fetcher.fetch(url).body == b"secure"
        assert rec.connects == [("127.0.0.1", srv.port)]
        assert srv.seen[-1].sni == "images.test"

        # The same server under a name its certificate does not carry: verification fails.
        other = url.replace("images.test", "other.test")
        rec = Recorder({"other.test": ["127.0.0.1"]})
        with rec.fetcher(verify=client_ctx) as fetcher:
            err = reason_of(fetcher, other)
        assert err.reason == "connect_failed"
        assert "certificate" in err.detail.lower()


def _server_context(cert: bytes, key: bytes) -> ssl.SSLContext:
    import os
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        with open(cert_path, "wb") as fh:
            fh.write(cert)
        with open(key_path, "wb") as fh:
            fh.write(key)
        ctx.load_cert_chain(cert_path, key_path)

    def remember_sni(sock, server_name, _ctx) -> None:
        sock.sni_seen = server_name

    ctx.sni_callback = remember_sni
    return ctx


# -- URLs and ports (refused before resolution) ---------------------------------------------------
@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://img.example/a.jpg", "bad_scheme"),
    ("file:///etc/passwd", "bad_scheme"),
    ("gopher://img.example/", "bad_scheme"),
    ("javascript:alert(1)", "bad_scheme"),
    ("//img.example/a.jpg", "bad_scheme"),
    ("data:image/png;base64,AAAA", "bad_scheme"),
    ("http:///a.jpg", "bad_url"),
    ("http://user:pw@img.example/a.jpg", "bad_url"),
    ("", "bad_url"),
    ("http://img.example/" + "a" * 2100, "bad_url"),
    ("http://img.example:8080/a.jpg", "blocked_port"),
    ("https://img.example:22/a.jpg", "blocked_port"),
])
def test_bad_urls_are_refused_before_resolution(url: str, reason: str) -> None:
    rec = Recorder({"img.example": ["93.184.216.34"]})
    with rec.fetcher(FetchPolicy()) as fetcher:
        assert reason_of(fetcher, url).reason == reason
    assert rec.resolved == []
    assert rec.connects == []


def test_other_ports_only_when_configured_or_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder({"img.example": ["93.184.216.34"]})
    # With loopback open, a non-default port is still refused for a non-loopback address.
    with rec.fetcher(LOOPBACK) as fetcher:
        assert reason_of(fetcher, "http://img.example:8080/a.jpg").reason == "blocked_port"
    assert rec.connects == []
    monkeypatch.setenv("CRM_IMAGE_ALLOWED_PORTS", "80, 443, 8080")
    assert FetchPolicy.from_env().allowed_ports == {80, 443, 8080}
    monkeypatch.setenv("CRM_IMAGE_ALLOWED_PORTS", "eighty")
    with pytest.raises(ConfigError, match="CRM_IMAGE_ALLOWED_PORTS"):
        FetchPolicy.from_env()


def test_loopback_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_IMAGE_ALLOW_LOOPBACK", raising=False)
    assert FetchPolicy.from_env().allow_loopback is False
    monkeypatch.setenv("CRM_IMAGE_ALLOW_LOOPBACK", "1")
    assert FetchPolicy.from_env().allow_loopback is True


def test_unresolvable_host() -> None:
    rec = Recorder()
    with rec.fetcher() as fetcher:
        assert reason_of(fetcher, "http://nowhere.example/a.jpg").reason == "dns_failure"
    rec = Recorder({"empty.example": []})
    with rec.fetcher() as fetcher:
        assert reason_of(fetcher, "http://empty.example/a.jpg").reason == "dns_failure"


def test_slow_dns_counts_against_the_connect_timeout() -> None:
    answered = threading.Event()

    def slow_resolver(host: str, port: int) -> list[str]:
        answered.wait(60)  # far beyond any timeout: only the connect timeout can end the fetch
        return ["127.0.0.1"]

    policy = FetchPolicy(allow_loopback=True, connect_timeout=0.3)
    rec = Recorder()
    try:
        with SafeFetcher(policy, resolver=slow_resolver, connector=rec.connect) as fetcher:
            started = time.monotonic()
            err = reason_of(fetcher, "http://slow-dns.example/a.jpg")
            took = time.monotonic() - started
    finally:
        answered.set()
    assert (err.reason, err.retryable) == ("timeout", True)
    # A multiple of the configured timeout, not an absolute: a loaded machine may be slow to wake us.
    assert took < policy.connect_timeout * TIMEOUT_SLACK
    assert rec.connects == []


# -- redirects ------------------------------------------------------------------------------------
def test_redirect_chain_of_three_is_followed(server: ImageServer) -> None:
    server.add("/final.jpg", b"the image", "image/jpeg")
    server.redirect("/r1", "/r2", 301)
    server.redirect("/r2", f"{server.url}/r3", 307)
    server.redirect("/r3", "final.jpg", 308)
    rec = Recorder()
    with rec.fetcher() as fetcher:
        result = fetcher.fetch(server.url + "/r1")
    assert result.body == b"the image"
    assert result.final_url == server.url + "/final.jpg"
    assert len(result.redirects) == 3
    assert [s.path for s in server.seen] == ["/r1", "/r2", "/r3", "/final.jpg"]


def test_more_than_three_redirects_are_refused(server: ImageServer) -> None:
    server.add("/final.jpg", b"the image", "image/jpeg")
    for i in range(4):
        server.redirect(f"/r{i}", f"/r{i + 1}" if i < 3 else "/final.jpg")
    rec = Recorder()
    with rec.fetcher() as fetcher:
        assert reason_of(fetcher, server.url + "/r0").reason == "too_many_redirects"
    assert "/final.jpg" not in [s.path for s in server.seen]


@pytest.mark.parametrize(("location", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "blocked_address"),
    ("http://10.0.0.1/admin", "blocked_address"),
    ("http://internal.example/a.jpg", "blocked_address"),
    ("http://[::ffff:192.168.0.1]/a.jpg", "blocked_address"),
    ("file:///etc/passwd", "bad_scheme"),
    ("http://public.example:6379/", "blocked_port"),
])
def test_redirect_to_a_refused_target(server: ImageServer, location: str, reason: str) -> None:
    server.redirect("/go", location)
    rec = Recorder({"internal.example": ["192.168.1.10"], "public.example": ["93.184.216.34"]})
    with rec.fetcher() as fetcher:
        assert reason_of(fetcher, server.url + "/go").reason == reason
    assert {ip for ip, _ in rec.connects} == {"127.0.0.1"}


def test_redirect_without_location(server: ImageServer) -> None:
    server.routes["/bad"] = lambda h: send(h, 302, b"", "text/plain")
    with Recorder().fetcher() as fetcher:
        assert reason_of(fetcher, server.url + "/bad").reason == "bad_redirect"


# -- status, size, encoding, time -----------------------------------------------------------------
def test_http_errors_carry_the_status(server: ImageServer) -> None:
    server.routes["/gone"] = lambda h: send(h, 410, b"gone", "text/plain")
    server.routes["/busy"] = lambda h: send(h, 503, b"busy", "text/plain")
    with Recorder().fetcher() as fetcher:
        gone = reason_of(fetcher, server.url + "/gone")
        missing = reason_of(fetcher, server.url + "/missing")
        busy = reason_of(fetcher, server.url + "/busy")
        assert fetcher.status(server.url + "/missing") == 404
    assert (gone.reason, gone.status, gone.retryable) == ("http_status", 410, False)
    assert (missing.status, missing.retryable) == (404, False)
    assert (busy.status, busy.retryable) == (503, True)


def test_body_over_the_default_cap_is_refused(server: ImageServer) -> None:
    server.add("/big.jpg", b"\xff" * (10 * 1024 * 1024 + 1), "image/jpeg")
    server.add("/fits.jpg", b"\xff" * (10 * 1024 * 1024), "image/jpeg")
    with Recorder().fetcher() as fetcher:
        err = reason_of(fetcher, server.url + "/big.jpg")
        assert len(fetcher.fetch(server.url + "/fits.jpg").body) == 10 * 1024 * 1024
    assert err.reason == "too_large"
    assert err.retryable is False


def test_body_without_length_is_capped_while_streaming(server: ImageServer) -> None:
    server.routes["/stream.jpg"] = stream_without_length(b"\xff" * (3 * 1024 * 1024))
    policy = FetchPolicy(allow_loopback=True, max_bytes=1024 * 1024)
    with Recorder().fetcher(policy) as fetcher:
        err = reason_of(fetcher, server.url + "/stream.jpg")
    assert err.reason == "too_large"
    assert "more than 1048576 bytes" in err.detail


def test_compressed_bodies_are_refused(server: ImageServer) -> None:
    """We ask for identity; a gzip body could inflate far past the byte cap."""
    body = gzip.compress(b"\0" * 1_000_000)
    server.routes["/z.jpg"] = lambda h: send(h, 200, body, "image/jpeg", {"Content-Encoding": "gzip"})
    with Recorder().fetcher() as fetcher:
        assert reason_of(fetcher, server.url + "/z.jpg").reason == "bad_encoding"
    assert server.seen[-1].path == "/z.jpg"


def test_slow_server_times_out(server: ImageServer) -> None:
    policy = FetchPolicy(allow_loopback=True, total_timeout=0.5)
    server.routes["/slow.jpg"] = slow_headers(policy.total_timeout * TIMEOUT_SLACK * 2)
    with Recorder().fetcher(policy) as fetcher:
        started = time.monotonic()
        err = reason_of(fetcher, server.url + "/slow.jpg")
        took = time.monotonic() - started
    assert err.reason == "timeout"
    assert err.retryable is True
    assert took < policy.total_timeout * TIMEOUT_SLACK


def test_dripping_body_hits_the_total_timeout(server: ImageServer) -> None:
    """Each byte arrives well within a read timeout; the total deadline still ends it."""
    policy = FetchPolicy(allow_loopback=True, total_timeout=0.6)
    every = 0.05
    server.routes["/drip.jpg"] = drip(total=int(policy.total_timeout * TIMEOUT_SLACK * 2 / every), every=every)
    with Recorder().fetcher(policy) as fetcher:
        started = time.monotonic()
        err = reason_of(fetcher, server.url + "/drip.jpg")
        took = time.monotonic() - started
    assert err.reason == "timeout"
    assert took < policy.total_timeout * TIMEOUT_SLACK


def test_connection_refused_is_retryable() -> None:
    with refused_port() as port:
        with Recorder().fetcher() as fetcher:
            err = reason_of(fetcher, f"http://127.0.0.1:{port}/a.jpg")
    assert (err.reason, err.retryable) == ("connect_failed", True)


def test_requests_ask_for_images_uncompressed(server: ImageServer) -> None:
    received = []

    def route(h) -> None:
        received.append(h.headers)
        send(h, 200, b"ok", "image/jpeg")

    server.routes["/h.jpg"] = route
    with Recorder().fetcher() as fetcher:
        result = fetcher.fetch(server.url + "/h.jpg")
    assert result.content_type == "image/jpeg"
    headers = received[0]
    assert headers.get("Accept-Encoding") == "identity"
    assert headers.get("Accept", "").startswith("image/")
    assert headers.get("Cookie") is None and headers.get("Authorization") is None

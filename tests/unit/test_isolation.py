"""The autouse `isolated` fixture of conftest.py: no inherited settings, no network but loopback."""

import os
import socket

import httpx
import pytest

from tests.conftest import _CALLER_ENV, NetworkBlocked


def test_inherited_settings_are_gone() -> None:
    """Whatever the caller exported (run this file with CRM_PUBLIC_URL=… HTTP_PROXY=… to see it)."""
    assert [name for name, value in _CALLER_ENV.items() if os.environ.get(name) == value] == []
    assert "DATABASE_URL" not in os.environ  # the suite's server URL was read before, by conftest


def test_a_test_may_set_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_PUBLIC_URL", "https://crm.example.com")
    assert os.environ["CRM_PUBLIC_URL"] == "https://crm.example.com"


def _connect_ex() -> None:
    with socket.socket() as sock:
        sock.connect_ex(("10.0.0.1", 80))


def _connect_v6() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.connect(("2001:db8::1", 80))


@pytest.mark.parametrize("reach", [
    lambda: socket.getaddrinfo("example.com", 443),
    lambda: socket.create_connection(("192.0.2.1", 80), timeout=1),
    _connect_ex,
    _connect_v6,
    lambda: httpx.get("https://example.com/", timeout=1),
], ids=["resolve", "create_connection", "connect_ex", "connect_v6", "httpx"])
def test_leaving_loopback_fails_loudly(isolated: list[str], reach) -> None:
    with pytest.raises((NetworkBlocked, httpx.ConnectError)):
        reach()
    assert isolated, "the attempt was not recorded, so teardown would not fail the test"
    isolated.clear()  # this test wanted it; any other test fails at teardown


def test_loopback_is_open(isolated: list[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("localhost", port), timeout=5):
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    assert isolated == []

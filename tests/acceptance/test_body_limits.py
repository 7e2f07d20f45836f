"""A body over 64 KiB is refused with 413 at once, without the server reading (buffering) the rest.

The client announces 100 MB but sends only 1 MB and then waits: a server that drained the body
before answering would never answer. Malformed chunked bodies are a 400, never a 500.
"""

import json
import os
import re
import socket

import pytest

from tests.helpers import serve_function

ANNOUNCED = 100 * 1024 * 1024
SENT = 1024 * 1024


def raw_request(url: str, head: str, body: bytes, *, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_blob, _, rest = data.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        try:
            while chunk := sock.recv(65536):
                rest += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return status, headers, rest


@pytest.fixture
def booking_server(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env["DATABASE_URL"] = db_url
    log = tmp_path / "ff.log"
    proc, url, _ = serve_function("booking", env, log)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_oversized_body_is_refused_without_reading_it(booking_server):
    head = ("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {ANNOUNCED}\r\n\r\n")
    status, headers, body = raw_request(booking_server, head, b" " * SENT)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"]


def test_wrong_content_type_with_a_big_body_is_415_without_reading_it(booking_server):
    head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
    status, _, _ = raw_request(booking_server, head, b"x" * SENT)
    assert status == 415


def test_malformed_chunked_body_is_400(booking_server):
    head = ("POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    status, headers, body = raw_request(booking_server, head, b"zz\r\nabc\r\n0\r\n\r\n")
    assert status == 400, body
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(re.search(rb"\{.*\}", body, re.DOTALL).group(0))  # chunked or not
    assert problem["code"] == "malformed_body"

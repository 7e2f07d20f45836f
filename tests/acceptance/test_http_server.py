"""Deployed functions against hostile or broken clients (SPEC §7): stalled sockets hold no worker, a
body not received in time is a 408, a client that goes away is one WARNING line, ambiguous framing is
a 400, and every answer — unroutable paths too — is problem+json with X-Request-Id."""

import contextlib
import json
import os
import socket
import time

import httpx
import pytest

from tests.helpers import BOOKING_EXAMPLE, first_answer, free_port, make_org, start_function

BODY_TIMEOUT = 2  # CRM_HTTP_BODY_TIMEOUT for these tests (default 10 s), so they stay quick
JWT_SECRET = "test-secret-" + "x" * 32


def deployed(folder: str, db_url: str, tmp_path, **extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env.update({"DATABASE_URL": db_url, "CRM_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT), "CRM_LOG_LEVEL": "WARNING",
                **extra})
    log = tmp_path / f"{folder}.log"
    proc, url = start_function(folder, env, log)
    first_answer(proc, log, lambda: httpx.get(f"{url}/healthz", timeout=2))
    return proc, url, log


@pytest.fixture
def booking(db_url, conn, tmp_path):
    make_org(conn, "demo")
    proc, url, log = deployed("booking", db_url, tmp_path)
    try:
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def raw(url: str, data: bytes, *, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                if sep and b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


def assert_problem(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"]
    problem = json.loads(body)
    assert problem["status"] == expected
    return problem


BOOKING_BODY = json.dumps(BOOKING_EXAMPLE).encode()


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
])
def test_ambiguous_framing_is_400(booking, framing):
    url, _ = booking
    status, headers, body = raw(url, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing
                                + b"\r\n0\r\n\r\n")
    problem = assert_problem(status, headers, body, 400)
    assert problem["code"] == "ambiguous_framing"
    assert headers["connection"] == "close"


def test_unroutable_path_is_a_problem_with_request_id(db_url, tmp_path):
    proc, url, _ = deployed("leads", db_url, tmp_path, CRM_JWT_SECRET=JWT_SECRET)
    try:
        for path in ("/leads/abc%0A", "/abc%0A", "/robots.txt"):
            response = httpx.patch(url + path, timeout=5)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json", path
            assert response.headers["x-request-id"], path
            assert response.json()["status"] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def stalled_socket(url: str, body_sent: bytes = b'{"org": "de') -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                 + body_sent)
    return sock


def test_stalled_sockets_hold_no_worker_and_get_408(booking):
    url, log = booking
    sockets = [stalled_socket(url) for _ in range(100)]
    # A head that never ends, too.
    host, port = url.removeprefix("http://").split(":")
    for _ in range(20):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(s)
    try:
        with httpx.Client(base_url=url, timeout=5) as http:
            started = time.monotonic()
            health = http.get("/healthz")
            health_s = time.monotonic() - started
            started = time.monotonic()
            booked = http.post("/", json=BOOKING_EXAMPLE)
            booking_s = time.monotonic() - started
        assert health.status_code == 200 and booked.status_code == 201, booked.text
        assert health_s < 1 and booking_s < 1, (health_s, booking_s)

        # Not received within CRM_HTTP_BODY_TIMEOUT: each stalled request is answered 408 and closed.
        # Read every one: the partial bodies and the heads that never end.
        for sock in sockets:
            sock.settimeout(BODY_TIMEOUT + 10)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"application/problem+json" in answer and b"x-request-id" in answer.lower()
    finally:
        for s in sockets:
            s.close()
    assert "Traceback" not in log.read_text()


def test_a_client_that_goes_away_mid_body_is_one_warning_line(booking):
    url, log = booking
    for _ in range(30):
        stalled_socket(url).close()
    # Every one of them has been noticed once the server answers the next request.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.read_text().count("went away mid-body") < 30:
        time.sleep(0.1)
    text = log.read_text()
    assert text.count("went away mid-body") == 30, text
    assert all(line.startswith("WARNING") for line in text.splitlines() if "went away" in line)
    assert "Traceback" not in text
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_body_sent_slowly_but_in_time_is_served(booking):
    url, _ = booking
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(BOOKING_BODY)}\r\n\r\n".encode())
        half = len(BOOKING_BODY) // 2
        sock.sendall(BOOKING_BODY[:half])
        time.sleep(BODY_TIMEOUT / 3)
        sock.sendall(BOOKING_BODY[half:])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201"), answer


def test_keep_alive_and_chunked_bodies_work(booking):
    url, _ = booking
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BOOKING_BODY), BOOKING_BODY)
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunked)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for _ in range(2):  # the same connection twice
            sock.sendall(request)
            received = b""
            while b"}" not in received.partition(b"\r\n\r\n")[2] or not received.rstrip().endswith(b"}"):
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 201"), received


def test_crm_dev_serves_through_the_same_server(db_url, tmp_path):
    """`crm dev` applies the deployment's framing rules (Werkzeug's dev server accepted both)."""
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env.update({"DATABASE_URL": db_url, "CRM_DATA_DIR": str(tmp_path / "crm")})
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "crm.tools.cli", "dev", "--port", str(port), "--no-jobs",
                                 "--no-demo"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        first_answer(proc, log, lambda: httpx.get(f"{url}/healthz", timeout=2))
        for framing in (b"Content-Length: 5\r\nContent-Length: 6\r\n",
                        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"):
            status, headers, body = raw(url, b"POST /booking HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n")
            assert_problem(status, headers, body, 400)
        stalled = stalled_socket(url.replace("/booking", ""))
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - started < 1
        stalled.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_body_deadline_defaults_to_ten_seconds(monkeypatch):
    from crm import server

    monkeypatch.delenv("CRM_HTTP_BODY_TIMEOUT", raising=False)
    assert server.body_timeout() == 10


def test_function_apps_answer_unroutable_paths_as_problems_under_any_server(monkeypatch):
    """The fix lives in the app too (functions-framework's own routing), not only in crm.server."""
    from tests.helpers import function_app

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("CRM_JWT_SECRET", JWT_SECRET)
    client = function_app("leads").test_client()
    for path in ("/leads/abc%0A", "/robots.txt"):
        response = client.patch(path)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == "application/problem+json", path
        assert response.headers["X-Request-Id"], path


BIG = 4 * 1024 * 1024  # the body of GET /big: more than the socket buffers hold


@pytest.fixture
def echo_server(monkeypatch):
    """crm.server in this process with a WSGI app that echoes method, path and body (no database);
    /slow answers after 1 s, /big with BIG bytes, /sized with a Content-Length and no body for HEAD."""
    import threading

    from crm.server import Server

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        path = environ["PATH_INFO"]
        if path == "/slow":
            time.sleep(1.0)
        if path == "/big":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"b" * BIG]
        if path == "/sized":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
            return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"hello world"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['REQUEST_METHOD']} {path} {len(body)} {body.decode()}".encode()]

    monkeypatch.setenv("CRM_HTTP_BODY_TIMEOUT", str(BODY_TIMEOUT))

    server = Server(app, "127.0.0.1", 0, threads=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert server.wait_ready()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(15)
        server.server_close()


def exchange(url: str, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data` (then shut the sending side, if asked), read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_pipelined_requests_are_answered_in_order_then_the_bad_one(echo_server):
    answer = exchange(echo_server,
                      b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                      b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
                      b"GET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    parts = answer.split(b"HTTP/1.1 ")[1:]
    assert [p.split(b"\r\n", 1)[0] for p in parts] == [b"200 OK", b"200 OK", b"400 Bad Request"], answer
    assert parts[0].endswith(b"POST /a 3 abc") and parts[1].endswith(b"POST /b 2 xy"), answer
    assert b"ambiguous_framing" in parts[2] and b"connection: close" in parts[2].lower()


def test_expect_100_continue_is_answered_before_the_body(echo_server):
    host, port = echo_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"POST / 3 abc"), answer


@pytest.mark.parametrize(("request_bytes", "expected", "code"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431, "head_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000, 431, "head_too_large"),  # never ends
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400, "malformed_request"),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400, "ambiguous_framing"),
    (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request"),
])
def test_bad_heads_are_problems_and_close(echo_server, request_bytes, expected, code):
    status, headers, body = raw(echo_server, request_bytes)
    assert assert_problem(status, headers, body, expected)["code"] == code
    assert headers["connection"] == "close"


def test_http_1_0_closes_after_its_answer(echo_server):
    answer = exchange(echo_server, b"GET /x HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in answer.lower(), answer
    assert answer.endswith(b"GET /x 0 ")


def test_a_half_closed_client_gets_its_answer_and_the_connection_closes(echo_server):
    answer = exchange(echo_server, b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok", half_close=True)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"POST /h 2 ok"), answer


def connect(url: str, *, timeout: float = 10, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((host, int(port)))
    return sock


def read_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def statuses(answer: bytes) -> list[bytes]:
    return [part.split(b"\r\n", 1)[0] for part in answer.split(b"HTTP/1.1 ")[1:]]


def test_a_read_ending_mid_head_counts_only_that_head(echo_server):
    # One read holds a whole 40 KB request and the start of the next head: not a 431.
    with connect(echo_server) as sock:
        sock.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40_000
                     + b"GET /two HTTP/1.1\r\nHo")
        time.sleep(0.3)
        sock.sendall(b"st: x\r\nConnection: close\r\n\r\n")
        answer = read_until(sock, b"<never>")
    assert statuses(answer) == [b"200 OK", b"200 OK"], answer[-300:]
    assert answer.endswith(b"GET /two 0 "), answer[-300:]
    # Pipelined requests with 30 KB heads, each under the limit.
    request = b"GET /" + b"p" * 30_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(echo_server, request * 4 + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [b"200 OK"] * 5, answer[-300:]


def test_a_head_over_the_limit_across_reads_is_still_431(echo_server):
    with connect(echo_server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 200_000:
                sock.sendall(b"a" * 8192)
                sent += 8192
                time.sleep(0.005)
        answer = read_until(sock, b"}")
    assert statuses(answer) == [b"431 Request Header Fields Too Large"], answer
    assert sent < 200_000


@pytest.mark.parametrize("before", [b"", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"])
def test_a_bare_crlf_does_not_hold_an_idle_connection(echo_server, monkeypatch, before):
    import crm.server

    monkeypatch.setattr(crm.server, "IDLE_TIMEOUT", 0.5)
    with connect(echo_server, timeout=5) as sock:
        if before:
            sock.sendall(before)
            read_until(sock, b"GET /a 0 ")
        sock.sendall(b"\r\n")
        started = time.monotonic()
        assert read_until(sock, b"<never>").count(b"HTTP/1.1 ") == 0  # closed, not timed out
        assert time.monotonic() - started < 3


def test_endless_chunked_trailers_are_refused(echo_server):
    with connect(echo_server) as sock:
        sock.sendall(b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ")
        sent = 0
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 8 * 1024 * 1024 and time.monotonic() - started < BODY_TIMEOUT - 0.5:
                sock.sendall(b"a" * 65536)
                sent += 65536
        answer = read_until(sock, b"}")
    assert sent < 8 * 1024 * 1024, sent  # what the socket buffers took before the refusal
    assert statuses(answer) == [b"431 Request Header Fields Too Large"], answer
    assert b"head_too_large" in answer


def test_a_webhook_sized_body_in_small_chunks_is_read(echo_server):
    # 256 KiB (the webhooks' limit) in 16-byte chunks: 96 KiB of chunk framing, a legitimate body.
    body = b"y" * (256 * 1024)
    framed = b"".join(b"10\r\n" + body[i:i + 16] + b"\r\n" for i in range(0, len(body), 16)) + b"0\r\n\r\n"
    with connect(echo_server) as sock:
        sock.sendall(b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framed)
        answer = read_until(sock, b"y" * 16 + b"y" * (len(body) - 16))
    assert statuses(answer) == [b"200 OK"], answer[:200]
    assert f"POST /small {len(body)} ".encode() in answer


def test_a_client_that_never_reads_is_cut_off(echo_server):
    with connect(echo_server, rcvbuf=4096) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        time.sleep(BODY_TIMEOUT + 1.5)
        received = 0
        outcome = "eof"
        sock.settimeout(3)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            outcome = "reset"
        except TimeoutError:
            outcome = "still open"
    assert outcome != "still open" and received < 3 * BIG, (outcome, received)


def test_100_continue_waits_for_earlier_answers(echo_server):
    expect = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    slow = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
    for pause in (None, 0.2):  # pipelined in one write; or sent while /slow runs
        with connect(echo_server) as sock:
            if pause is None:
                sock.sendall(slow + expect)
            else:
                sock.sendall(slow)
                time.sleep(pause)
                sock.sendall(expect)
            answer = read_until(sock, b"100 Continue\r\n\r\n")
            assert statuses(answer) == [b"200 OK", b"100 Continue"], (pause, answer)
            assert answer.endswith(b"GET /slow 0 HTTP/1.1 100 Continue\r\n\r\n"), (pause, answer)
            time.sleep(BODY_TIMEOUT - 0.5)  # past the deadline counted from the head: it restarted with the 100
            sock.sendall(b"abc")
            answer = read_until(sock, b"POST /e 3 abc")
            assert statuses(answer) == [b"200 OK"] and answer.endswith(b"POST /e 3 abc"), (pause, answer)


def test_head_keeps_the_apps_content_length(echo_server):
    answer = exchange(echo_server, b"HEAD /sized HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [b"200 OK"] and b"content-length: 11\r\n" in answer.lower(), answer
    assert answer.endswith(b"\r\n\r\n"), answer
    answer = exchange(echo_server, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"content-length: 10\r\n" in answer.lower() and answer.endswith(b"\r\n\r\n"), answer

"""The HTTP server of every deployed function and of `crm dev` (SPEC §7): slow clients hold no worker.

functions-framework serves with gunicorn's gthread worker: a thread reads each request's head and
body itself, without a deadline, so eight sockets that send half a body stop a function for good.
Here an asyncio front (an `asyncio.Protocol` per connection, httptools — llhttp, node's parser, in C —
for HTTP/1.1 parsing) reads every request in full — head and body, under one deadline — before a
worker thread sees it; the WSGI app then runs in a thread pool with the body already in memory.
Stalled sockets cost a protocol object each, never a thread. (The front was h11 and asyncio streams
until issue 17: 0.5 ms of CPU per request on the 2-CPU bench machine, the C parser and callbacks
half that.)

Rules, the same under `functions-framework --target …` and `crm dev`:
- a request not fully received within `CRM_HTTP_BODY_TIMEOUT` seconds (default 10) → 408;
- ambiguous framing (two `Content-Length`s, `Content-Length` with `Transfer-Encoding`, a
  `Transfer-Encoding` other than `chunked`, folded header lines) → 400, and the connection closes;
  so does a malformed head (an HTTP/1.1 request without exactly one `Host` too);
- a head over `HEAD_LIMIT` → 431, and so are a chunked body's trailers and chunk-size lines over
  `FRAMING_LIMIT` (a 256 KiB webhook body in 16-byte chunks is 96 KiB of them); bodies up to
  `BUFFER_LIMIT` are read; a larger declared body is not read at all
  (the app answers 413/415 from the headers) and the connection closes; a larger chunked body → 413;
  `Expect: 100-continue` is answered before the body is read, after the answers to earlier requests;
- keep-alive for HTTP/1.1 unless `Connection: close`; pipelined requests are answered in order;
  a connection idle `IDLE_TIMEOUT` seconds closes (bare CRLFs between requests do not count);
- a client that reads too little of its answers to drain the send buffer within
  `CRM_HTTP_BODY_TIMEOUT` seconds is cut off (one WARNING line);
- a client that goes away mid-request → one WARNING line, no traceback;
- every response carries `X-Request-Id`, and every error is problem+json, even when it comes from
  the framework (an unroutable path) rather than from our handlers.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools

from crm import config
from crm.errors import Problem

log = logging.getLogger("crm.server")

BUFFER_LIMIT = 1024 * 1024  # above every function's body limit (64 KiB, webhooks 256 KiB)
HEAD_LIMIT = 32 * 1024
FRAMING_LIMIT = BUFFER_LIMIT  # a chunked request's bytes beyond its body: head, chunk-size lines, trailers
IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may sit idle between requests
SHUTDOWN_GRACE = 10.0
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{8,128}$")


def body_timeout() -> float:
    return float(config.env_int("CRM_HTTP_BODY_TIMEOUT", 10))


def worker_threads() -> int:
    return config.env_int("CRM_HTTP_THREADS", 16)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, code: str):
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


@dataclass
class _Request:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-case, values stripped, in order
    http_version: bytes
    request_id: str
    body: bytes = b""
    body_unread: bool = False  # declared larger than BUFFER_LIMIT: the app sees the headers only
    close: bool = False  # the connection ends after this request's answer


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_bytes(status: int, detail: str, code: str) -> bytes:
    return json.dumps(Problem(status=status, title=_phrase(status), detail=detail, code=code).as_dict()).encode()


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_UNSAFE = re.compile(rb"[\r\n\x00]")


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the reason is on the connection)."""


def _framing_refusal(message: str) -> _Refused:
    """llhttp's refusal of a head, as ours: framing a proxy in front might read differently (request
    smuggling) is `ambiguous_framing`, anything else `malformed_request`."""
    lowered = message.lower()
    if "content-length" in lowered and "transfer-encoding" in lowered:
        return _Refused(400, "Content-Length together with Transfer-Encoding.", "ambiguous_framing")
    if "content-length overflow" in lowered:
        return _Refused(413, f"The body is larger than {BUFFER_LIMIT // 1024} KiB.", "body_too_large")
    if "content-length" in lowered:
        return _Refused(400, "More than one Content-Length, or one that is not a number.", "ambiguous_framing")
    if "transfer-encoding" in lowered:
        return _Refused(400, "More than one Transfer-Encoding.", "ambiguous_framing")
    if "whitespace after header value" in lowered:
        return _Refused(400, "Folded header lines are not accepted.", "ambiguous_framing")
    return _Refused(400, f"Malformed request: {message}.", "malformed_request")


class _Connection(asyncio.Protocol):
    """One client connection: httptools (llhttp, in C) parses, callbacks collect each request in full
    (head and body, under one deadline), then a worker thread runs the app; one request at a time,
    in order (pipelined requests wait, reading paused)."""

    def __init__(self, server: Server):
        self.server = server
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ("", 0)
        self.sockname: Any = None
        self.receiving = False  # between a request's first byte and its end: shutdown waits for it
        self.in_body = False  # the head was parsed: a protocol error now is in the body
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0  # of the head's parsed parts
        self.received = 0  # bytes fed while this request was received (see _feed)
        self.began = False  # during the current feed: a request began (and whose feed is counted)
        self.count_begin_feed = False
        self.ended = False  # during the current feed: a request ended
        self.parts: list[bytes] = []
        self.size = 0
        self.request: _Request | None = None  # the one being received, once its head is in
        self.ready: collections.deque[_Request] = collections.deque()  # received, not yet answered
        self.running = False  # a request is in the app
        self.stash: list[bytes] = []  # what arrived while earlier requests were answered (reading paused)
        self.reading_paused = False
        self.writing_paused = False
        self.refusal: _Refused | None = None  # to answer once the requests before it are answered
        self.continue_wanted = False
        self.continue_deferred = False  # its 100 waits for the answers to earlier requests
        self.no_more = False  # the last request of this connection has been received
        self.closed = False
        self.deadline: asyncio.TimerHandle | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.stall: asyncio.TimerHandle | None = None  # the client reads nothing of what is written

    @property
    def busy(self) -> bool:
        return self.receiving or self.running or bool(self.ready)

    # -- transport callbacks ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else ("", 0)
        self.sockname = transport.get_extra_info("sockname")
        self.server._connections.add(self)
        self.idle = self.loop.call_later(IDLE_TIMEOUT, self._idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.no_more:
            return
        if self.running or self.ready or self.refusal:
            self.stash.append(data)
            self._pause_reading()
            return
        self._feed(data)

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers to what it sent in full.
        if self.receiving:
            self._went_away()
        if not (self.running or self.ready):
            self._close()
        self.no_more = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.receiving and not self.closed:
            self._went_away()
        self.closed = True
        self._cancel_timers()
        self.server._connections.discard(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.stall is None:
            self.stall = self.loop.call_later(self.server.body_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None
        self._next()

    # -- parser callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.no_more:
            raise _Stop
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.receiving = True
        self.began = True
        self.count_begin_feed = not self.ended  # this feed holds no earlier request's bytes
        self.continue_wanted = self.continue_deferred = False
        self.in_body = False
        self.url = b""
        self.headers = []
        self.head_size = self.received = 0
        self.parts = []
        self.size = 0
        self.request = None
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.server.body_timeout, self._deadline_passed)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            return  # a trailer of a chunked body: not part of the request
        name = name.lower()
        value = value.strip()
        self.head_size += len(name) + len(value) + 4
        if name == b"transfer-encoding" and value.lower() != b"chunked":
            self.refusal = _Refused(400, "Only Transfer-Encoding: chunked is accepted.", "ambiguous_framing")
            raise _Stop
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_body = True
        if self.head_size + len(self.url) > HEAD_LIMIT:
            self.refusal = _Refused(431, "The request head is too large.", "head_too_large")
            raise _Stop
        version = self.parser.get_http_version()
        request_id = ""
        declared = None
        expect = connection = b""
        hosts = 0
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
            elif name == b"x-request-id":
                request_id = value.decode("latin-1") if _REQUEST_ID.match(value) else request_id
            elif name == b"content-length":
                declared = int(value)
            elif name == b"expect":
                expect = value.lower()
            elif name == b"connection":
                connection = value.lower()
        if hosts != 1 and version == "1.1":  # RFC 9112 §3.2: exactly one Host, or 400
            self.refusal = _Refused(400, "Malformed request: an HTTP/1.1 request needs exactly one Host header.",
                                    "malformed_request")
            raise _Stop
        request = _Request(self.parser.get_method().decode("ascii"), self.url, self.headers,
                           version.encode("ascii"), request_id=request_id or uuid.uuid4().hex)
        # HTTP/1.0 and `Connection: close` end the connection after this request.
        request.close = version != "1.1" or b"close" in connection
        self.request = request
        if declared is not None and declared > BUFFER_LIMIT:
            # The app answers from the headers (413/415); nothing more is read, and the connection closes.
            request.body_unread = True
            request.close = True
            self._received(request)
            raise _Stop
        self.continue_wanted = expect == b"100-continue" and version == "1.1" and bool(declared or declared is None)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > BUFFER_LIMIT:
            self.refusal = _Refused(413, f"The body is larger than {BUFFER_LIMIT // 1024} KiB.", "body_too_large")
            raise _Stop
        self.parts.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        if request is None:  # pragma: no cover - llhttp completes a message only after its head
            raise _Stop
        request.body = b"".join(self.parts)
        self.parts = []
        self._received(request)

    # -- receiving -------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        # The idle timer stops only when a request begins (on_message_begin): bytes that begin none
        # (a bare CRLF between requests) keep no connection open.
        self.began = self.ended = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.no_more = True  # the request is complete; what follows is another protocol: not ours
        except httptools.HttpParserError as exc:
            if self.refusal is None and not (self.no_more and isinstance(exc, httptools.HttpParserCallbackError)):
                self.refusal = (_Refused(400, f"Malformed request: {exc}.", "malformed_body") if self.in_body
                                else _framing_refusal(str(exc)))
        if self.refusal is None and self.receiving:
            # Every byte of the request in progress is bounded: llhttp keeps no limit, and httptools
            # gathers each header (and trailer) in memory. llhttp gives no positions, so a read where
            # this request began after another ended is not counted (it holds the earlier one's bytes
            # too): each bound then holds within one read.
            if not self.began or self.count_begin_feed:
                self.received += len(data)
            if not self.in_body:
                if self.received > HEAD_LIMIT:
                    self.refusal = _Refused(431, "The request head is too large.", "head_too_large")
            elif self.received - self.size > FRAMING_LIMIT:  # head, chunk-size lines, trailers
                self.refusal = _Refused(431, "The trailers (or chunk framing) of the request are too large.",
                                        "head_too_large")
        if self.refusal is not None:
            self.no_more = True
            self._pause_reading()
            if self.running or self.ready:
                self._next()  # the requests before it are answered first
            else:
                self._refuse()
            return
        self._continue()
        self._next()
        if not self.busy and self.idle is None and not self.closed:
            self.idle = self.loop.call_later(IDLE_TIMEOUT, self._idle_timeout)

    def _continue(self) -> None:
        """`Expect: 100-continue`: answered before the body, once every earlier request is answered."""
        if not self.continue_wanted:
            return
        if not (self.receiving and self.in_body and self.request is not None) or self.size:
            self.continue_wanted = False  # received, refused, or the client sent the body anyway
        elif self.running or self.ready:
            self.continue_deferred = True
        else:
            self.continue_wanted = False
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]
            if self.continue_deferred and self.deadline is not None:
                # The client is asked for the body only now: its deadline starts again.
                self.continue_deferred = False
                self.deadline.cancel()
                self.deadline = self.loop.call_later(self.server.body_timeout, self._deadline_passed)

    def _received(self, request: _Request) -> None:
        self.receiving = False
        self.ended = True
        self.request = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.ready.append(request)
        if request.close:
            self.no_more = True

    def _went_away(self) -> None:
        if self.in_body and self.request is not None:
            log.warning("client %s went away mid-body (%s %s, %d bytes received)", self.peer[0],
                        self.request.method, _printable(self.request.target), self.size)
        else:
            log.warning("client %s went away before sending a whole request head", self.peer[0])
        self.receiving = False

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.running or self.ready:
            # Its bytes wait unread behind the requests before it (pipelined): not the client's
            # fault; look again once those are answered.
            self.deadline = self.loop.call_later(1.0, self._deadline_passed)
            return
        self._answer_overdue()

    def _answer_overdue(self) -> None:
        request_id = self.request.request_id if self.request is not None else uuid.uuid4().hex
        log.info("request %s from %s: not received within %.0f s, answering 408",
                 request_id, self.peer[0], self.server.body_timeout)
        self._send_problem(408, "The request was not received in time.", "request_timeout", request_id)

    def _write_stalled(self) -> None:
        self.stall = None
        log.warning("client %s read too little of its answers for %.0f s: connection dropped", self.peer[0],
                    self.server.body_timeout)
        self.receiving = False
        self._close()
        if self.transport is not None:
            self.transport.abort()  # what is still buffered would never be read

    def _idle_timeout(self) -> None:
        self.idle = None
        if not self.busy:
            self._close()

    def _refuse(self) -> None:
        refused = self.refusal
        assert refused is not None
        request_id = self.request.request_id if self.request is not None else uuid.uuid4().hex
        self._send_problem(refused.status, refused.detail, refused.code, request_id)

    # -- answering -------------------------------------------------------------------------------
    def _next(self) -> None:
        if self.running or not self.ready or self.writing_paused or self.closed:
            return
        request = self.ready.popleft()
        self.running = True
        try:
            future = self.server.executor.submit(self.server.call_app, request, self.peer, self.sockname)
        except RuntimeError:  # the executor has shut down: the server is stopping
            self._close()
            return
        future.add_done_callback(lambda done: self._from_thread(request, done))

    def _from_thread(self, request: _Request, done: concurrent.futures.Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server has stopped
            self.loop.call_soon_threadsafe(self._answer, request, done)

    def _answer(self, request: _Request, done: concurrent.futures.Future) -> None:
        self.running = False
        if self.closed:
            return
        try:
            status, headers, body, reason = done.result()
        except BaseException:  # noqa: BLE001 - cancelled at shutdown; call_app catches the app's own
            self._close()
            return
        close = request.close or self.server.stopping or any(
            k == b"connection" and b"close" in v.lower() for k, v in headers)
        self.transport.write(_response_bytes(request, status, headers, body, reason, close))  # type: ignore[union-attr]
        if close:
            self._close()
        elif self.ready:
            self._next()
        elif self.refusal is not None:
            self._refuse()
        elif self.no_more:  # the client half-closed, or switched protocols: nothing more to answer
            self._close()
        elif self.stash:
            data = b"".join(self.stash)
            self.stash = []
            self._resume_reading()
            self._feed(data)
        else:
            self._continue()
            self._resume_reading()
            if not self.receiving and self.idle is None:
                self.idle = self.loop.call_later(IDLE_TIMEOUT, self._idle_timeout)

    def _send_problem(self, status: int, detail: str, code: str, request_id: str) -> None:
        if self.closed:
            return
        body = problem_bytes(status, detail, code)
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode()), (b"connection", b"close")]
        head = b"HTTP/1.1 %d %s\r\n" % (status, _phrase(status).encode()) + b"".join(
            k + b": " + v + b"\r\n" for k, v in headers)
        self.transport.write(head + b"\r\n" + body)  # type: ignore[union-attr]
        self._close()

    # -- plumbing --------------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def _cancel_timers(self) -> None:
        for timer in (self.deadline, self.idle, self.stall):
            if timer is not None:
                timer.cancel()
        self.deadline = self.idle = self.stall = None

    def _close(self) -> None:
        """Close after what was written has been sent."""
        if not self.closed:
            self.closed = True
            self.receiving = False
            self._cancel_timers()
            if self.transport is not None:
                self.transport.close()


def _response_bytes(request: _Request, status: int, headers: list[tuple[bytes, bytes]], body: bytes, reason: bytes,
                    close: bool) -> bytes:
    """Status line, headers and body in one buffer: a response in several small segments would meet
    Nagle and the client's delayed ACK (measured: +40 ms per request)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        if name in (b"transfer-encoding", b"content-length", b"connection"):
            continue
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            log.error("request %s: the app sent a header with CR, LF or NUL; answering 500", request.request_id)
            status, headers, body, reason = Server._problem(500, "An unexpected error occurred; it has been logged.",
                                                            "internal_error", request.request_id)
            return _response_bytes(request, status, headers, body, reason, close)
        lines.append(name + b": " + value + b"\r\n")
    no_body = status < 200 or status in (204, 304)
    if not no_body:
        length = len(body)
        if request.method == "HEAD":  # the app's Content-Length: the length a GET would have
            declared = next((v for k, v in headers if k == b"content-length"), b"")
            length = int(declared) if declared.isdigit() else length
        lines.append(b"content-length: %d\r\n" % length)
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    if body and not no_body and request.method != "HEAD":
        lines.append(body)
    return b"".join(lines)


def _printable(target: bytes) -> str:
    return target[:200].decode("latin-1").encode("unicode_escape").decode("ascii")


class _UnreadBody(io.RawIOBase):
    """The body of a request declared larger than the server buffers: reading it is an error."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        raise OSError("the request body was not read: it is larger than the server accepts")


class Server:
    """`Server(app, host, port)`; `serve_forever()` until `shutdown()` (thread-safe) or SIGTERM."""

    def __init__(self, app: Callable | None, host: str = "127.0.0.1", port: int = 8080, *,
                 threads: int | None = None):
        """Binds at once (`port` 0: a free one, see `port`); `app` may be set before `serve_forever`."""
        self.app = app
        self.host = host
        self.executor = ThreadPoolExecutor(max_workers=threads or worker_threads(), thread_name_prefix="crm-http")
        self.sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                         reuse_port=False, backlog=1024)
        self.sock.setblocking(False)
        self.server_port = self.sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._connections: set[_Connection] = set()
        self.body_timeout = body_timeout()
        self._stopping = threading.Event()  # shutdown() before the loop runs is not lost

    # -- WSGI ------------------------------------------------------------------------------------
    def environ(self, request: _Request, peer: tuple[str, int], sockname: Any) -> dict[str, Any]:
        path, _, query = request.target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "RAW_URI": request.target.decode("latin-1"),
            "REQUEST_URI": request.target.decode("latin-1"),
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(sockname[1] if sockname else self.server_port),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": peer[0],
            "REMOTE_PORT": str(peer[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BufferedReader(_UnreadBody()) if request.body_unread else io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        for name, value in request.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = text
            elif key == "CONTENT_LENGTH":
                environ["CONTENT_LENGTH"] = text
            elif key == "TRANSFER_ENCODING":
                continue  # decoded here: the app sees a body of known length
            else:
                environ[f"HTTP_{key}"] = f"{environ[f'HTTP_{key}']},{text}" if f"HTTP_{key}" in environ else text
        environ["HTTP_X_REQUEST_ID"] = request.request_id
        if not request.body_unread:
            environ["CONTENT_LENGTH"] = str(len(request.body))
        return environ

    def call_app(self, request: _Request, peer: tuple[str, int], sockname: Any) -> tuple[int, list, bytes, bytes]:
        environ = self.environ(request, peer, sockname)
        status_line = "500 Internal Server Error"
        headers: list[tuple[str, str]] = []

        def start_response(status: str, response_headers: list, exc_info=None):  # noqa: ARG001
            nonlocal status_line, headers
            status_line, headers = status, list(response_headers)
            return lambda _data: None

        try:
            result: Iterable[bytes] = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("request %s crashed in the server", request.request_id)
            return self._problem(500, "An unexpected error occurred; it has been logged.", "internal_error",
                                 request.request_id)
        status = int(status_line.split(" ", 1)[0])
        encoded = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers]
        content_type = next((v for k, v in encoded if k == b"content-type"), b"")
        if status >= 400 and not content_type.startswith(b"application/problem+json"):
            # The framework's own answer (an unroutable path, its crash handler): a problem too.
            reason = status_line.split(" ", 1)[1] if " " in status_line else "Error"
            problem = self._problem(status, f"{reason}: {request.method} {_printable(request.target)}",
                                    reason.lower().replace(" ", "_"), request.request_id)
            keep = [(k, v) for k, v in encoded if k in (b"allow", b"retry-after", b"connection")]
            return problem[0], problem[1] + keep, problem[2], problem[3]
        if not any(k == b"x-request-id" for k, _ in encoded):
            encoded.append((b"x-request-id", request.request_id.encode()))
        reason = status_line.split(" ", 1)[1] if " " in status_line else _phrase(status)
        return status, encoded, body, reason.encode("latin-1")

    @staticmethod
    def _problem(status: int, detail: str, code: str, request_id: str) -> tuple[int, list, bytes, bytes]:
        return status, [(b"content-type", b"application/problem+json"),
                        (b"x-request-id", request_id.encode())], problem_bytes(status, detail, code), \
            _phrase(status).encode()

    # -- serving ---------------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await self._loop.create_server(lambda: _Connection(self), sock=self.sock)
        self._ready.set()
        if self._stopping.is_set():
            self._stop.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Idle kept-alive connections close now; requests in flight get SHUTDOWN_GRACE to finish.
            for connection in list(self._connections):
                if not connection.busy:
                    connection._close()
            waited = 0.0
            while self._connections and waited < SHUTDOWN_GRACE:
                await asyncio.sleep(0.05)
                waited += 0.05
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.abort()

    def serve_forever(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def wait_ready(self, timeout: float = 10) -> bool:
        return self._ready.wait(timeout)

    @property
    def port(self) -> int:
        return self.server_port

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def shutdown(self) -> None:
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    def server_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def serve(app: Callable, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (then finish what is in flight, within SHUTDOWN_GRACE)."""
    server = Server(app, host, port)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.shutdown())
    try:
        server.serve_forever()
    finally:
        server.server_close()


class FunctionsFrameworkServer:
    """Stands in for functions-framework's gunicorn application (same constructor and `run()`)."""

    def __init__(self, app: Callable, host: str, port: int, debug: bool = False, **options: Any):  # noqa: ARG002
        self.app, self.host, self.port = app, host, int(port)

    def run(self) -> None:
        logging.basicConfig(level=config.env("CRM_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
        serve(self.app, self.host, self.port)


def adopt_functions_framework() -> None:
    """Under `functions-framework --source functions/<f>/main.py --target <f>` (how functions are
    deployed), serve with `Server` instead of its gunicorn gthread default. functions-framework looks
    its server class up when it starts serving, after importing the function's source, so each
    `main.py` calls this at import. Opt out with `CRM_HTTP_SERVER=gunicorn`."""
    if (os.environ.get("CRM_HTTP_SERVER") or "").strip().lower() == "gunicorn":
        return
    try:
        from functions_framework._http import gunicorn as ff_gunicorn
    except ImportError:  # gunicorn absent: functions-framework would use Flask's dev server
        import functions_framework._http as ff_http

        ff_http.FlaskApplication = FunctionsFrameworkServer  # type: ignore[attr-defined]
        return
    ff_gunicorn.GunicornApplication = FunctionsFrameworkServer  # type: ignore[assignment,misc]

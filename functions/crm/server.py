"""The HTTP server of every deployed function and of `crm dev` (SPEC §7): slow clients hold no worker.

functions-framework serves with gunicorn's gthread worker: a thread reads each request's head and
body itself, without a deadline, so eight sockets that send half a body stop a function for good.
Here an asyncio front (h11 for HTTP/1.1 parsing) reads every request in full — head and body, under
one deadline — before a worker thread sees it; the WSGI app then runs in a thread pool with the
body already in memory. Stalled sockets cost a coroutine each, never a thread.

Rules, the same under `functions-framework --target …` and `crm dev`:
- a request not fully received within `CRM_HTTP_BODY_TIMEOUT` seconds (default 10) → 408;
- ambiguous framing (two `Content-Length`s, `Content-Length` with `Transfer-Encoding`, a
  `Transfer-Encoding` other than `chunked`, a malformed head) → 400, and the connection closes;
- bodies up to `BUFFER_LIMIT` are read; a larger declared body is not read at all (the app answers
  413/415 from the headers) and the connection closes; a larger chunked body → 413;
- a client that goes away mid-request → one WARNING line, no traceback;
- every response carries `X-Request-Id`, and every error is problem+json, even when it comes from
  the framework (an unroutable path) rather than from our handlers.
"""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

from crm import config
from crm.errors import Problem

log = logging.getLogger("crm.server")

BUFFER_LIMIT = 1024 * 1024  # above every function's body limit (64 KiB, webhooks 256 KiB)
HEAD_LIMIT = 32 * 1024
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


class _ClientGone(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes
    body: bytes = b""
    body_unread: bool = False  # declared larger than BUFFER_LIMIT: the app sees the headers only
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_bytes(status: int, detail: str, code: str) -> bytes:
    return json.dumps(Problem(status=status, title=_phrase(status), detail=detail, code=code).as_dict()).encode()


def _check_framing(head: bytes) -> None:
    """What h11 would accept but a proxy in front might read differently (request smuggling)."""
    lines = head.split(b"\r\n")[1:]
    lengths = 0
    encodings = 0
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise _Refused(400, "Folded header lines are not accepted.", "ambiguous_framing")
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            lengths += 1 + value.count(b",")
        elif name == b"transfer-encoding":
            encodings += 1
            if value.strip().lower() != b"chunked":
                raise _Refused(400, "Only Transfer-Encoding: chunked is accepted.", "ambiguous_framing")
    if lengths > 1:
        raise _Refused(400, "More than one Content-Length.", "ambiguous_framing")
    if lengths and encodings:
        raise _Refused(400, "Content-Length together with Transfer-Encoding.", "ambiguous_framing")
    if encodings > 1:
        raise _Refused(400, "More than one Transfer-Encoding.", "ambiguous_framing")


class _Connection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else ("", 0)
        self.buffer = b""  # bytes read but not yet given to h11 (the head, checked first)
        self.in_body = False  # the head was parsed: a protocol error now is in the body
        self.busy = False  # between a request's first byte and its response: shutdown waits for it

    async def run(self) -> None:
        try:
            while True:
                self.busy = False
                request = await self._read_request()
                if request is None:
                    return
                keep_alive = await self._respond(request)
                if not keep_alive or self.server.stopping:
                    return
                self.h11.start_next_cycle()
        except _ClientGone:
            pass
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()
                await self.writer.wait_closed()

    async def _recv(self) -> bytes:
        try:
            return await self.reader.read(65536)
        except (ConnectionError, OSError):
            return b""

    async def _read_request(self) -> _Request | None:
        # Idle (nothing of the next request yet): a quiet close after IDLE_TIMEOUT.
        if not self.buffer and self.h11.trailing_data[0] == b"":
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    first = await self._recv()
            except TimeoutError:
                return None
            if not first:
                return None
            self.busy = True
            self.buffer = first
        request_id = uuid.uuid4().hex
        try:
            async with asyncio.timeout(body_timeout()):
                return await self._read_rest(request_id)
        except TimeoutError:
            log.info("request %s from %s: not received within %.0f s, answering 408",
                     request_id, self.peer[0], body_timeout())
            await self._send_problem(408, "The request was not received in time.", "request_timeout",
                                     request_id)
            return None
        except _Refused as refused:
            await self._send_problem(refused.status, refused.detail, refused.code, request_id)
            return None

    async def _read_rest(self, request_id: str) -> _Request | None:
        self.in_body = False
        # The head, raw, so framing can be checked before h11 normalises duplicate headers away.
        buffered = self.h11.trailing_data[0] + self.buffer
        self.buffer = b""
        while b"\r\n\r\n" not in buffered:
            if len(buffered) > HEAD_LIMIT:
                raise _Refused(431, "The request head is too large.", "head_too_large")
            chunk = await self._recv()
            if not chunk:
                if buffered.strip():
                    log.warning("client %s went away before sending a whole request head", self.peer[0])
                raise _ClientGone
            buffered += chunk
        _check_framing(buffered.split(b"\r\n\r\n", 1)[0])
        if self.h11.trailing_data[0]:
            # h11 keeps trailing bytes of a kept-alive connection itself; hand it only the new ones.
            buffered = buffered[len(self.h11.trailing_data[0]):]
        self.h11.receive_data(buffered)
        event = self._next_event()
        while event is h11.NEED_DATA:
            chunk = await self._recv()
            if not chunk:
                raise _ClientGone
            self.h11.receive_data(chunk)
            event = self._next_event()
        if not isinstance(event, h11.Request):
            raise _Refused(400, "Malformed request.", "malformed_request")
        self.in_body = True
        incoming = dict(event.headers).get(b"x-request-id", b"")
        if _REQUEST_ID.match(incoming):
            request_id = incoming.decode()
        request = _Request(event.method.decode("ascii"), event.target, list(event.headers),
                           event.http_version, request_id=request_id)
        declared = dict(event.headers).get(b"content-length")
        if declared is not None and int(declared) > BUFFER_LIMIT:
            request.body_unread = True
            return request
        if self.h11.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        parts: list[bytes] = []
        size = 0
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                chunk = await self._recv()
                if not chunk:
                    log.warning("client %s went away mid-body (%s %s, %d bytes received)", self.peer[0],
                                request.method, _printable(request.target), size)
                    raise _ClientGone
                self.h11.receive_data(chunk)
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > BUFFER_LIMIT:
                    raise _Refused(413, f"The body is larger than {BUFFER_LIMIT // 1024} KiB.", "body_too_large")
                parts.append(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                request.body = b"".join(parts)
                return request
            raise _Refused(400, "Malformed request.", "malformed_request")

    def _next_event(self):
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (400, 413, 431) else 400
            code = "malformed_body" if self.in_body else "malformed_request"
            raise _Refused(status, f"Malformed request: {exc}.", code) from None

    async def _send(self, *events) -> None:
        """One write for all events: a response in several small segments would meet Nagle and the
        client's delayed ACK (measured: +40 ms per request)."""
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _send_problem(self, status: int, detail: str, code: str, request_id: str) -> None:
        body = problem_bytes(status, detail, code)
        headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode()), (b"connection", b"close")]
        try:
            if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                raise h11.LocalProtocolError("cannot respond now")
            await self._send(h11.Response(status_code=status, headers=headers, reason=_phrase(status).encode()),
                             h11.Data(data=body), h11.EndOfMessage())
        except h11.LocalProtocolError:
            # h11 refuses to answer a request it could not parse: write the bytes ourselves.
            reason = _phrase(status).encode()
            head = b"HTTP/1.1 %d %s\r\n" % (status, reason) + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(head + b"\r\n" + body)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _respond(self, request: _Request) -> bool:
        loop = asyncio.get_running_loop()
        status, headers, body, reason = await loop.run_in_executor(
            self.server.executor, self.server.call_app, request, self.peer, self.writer.get_extra_info("sockname"))
        close = request.body_unread or any(k == b"connection" and b"close" in v.lower() for k, v in headers)
        headers = [(k, v) for k, v in headers if k not in (b"transfer-encoding", b"content-length", b"connection")]
        headers.append((b"content-length", str(len(body)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        try:
            events = [h11.Response(status_code=status, headers=headers, reason=reason)]
            if body and request.method != "HEAD":
                events.append(h11.Data(data=body))
            await self._send(*events, h11.EndOfMessage())
        except (ConnectionError, OSError):
            return False
        return not close and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


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
        self._connections: dict[asyncio.Task, _Connection] = {}
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

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connection = _Connection(self, reader, writer)
            self._connections[task] = connection
            try:
                await connection.run()
            except asyncio.CancelledError:
                pass  # shutdown closed it (re-raising makes asyncio's stream callback log a traceback)
            finally:
                self._connections.pop(task, None)

        server = await asyncio.start_server(handle, sock=self.sock, limit=HEAD_LIMIT * 2)
        self._ready.set()
        if self._stopping.is_set():
            self._stop.set()
        async with server:
            await self._stop.wait()
            server.close()
            # Idle kept-alive connections close now; requests in flight get SHUTDOWN_GRACE to finish.
            for task, connection in list(self._connections.items()):
                if not connection.busy:
                    task.cancel()
            if self._connections:
                _done, pending = await asyncio.wait(list(self._connections), timeout=SHUTDOWN_GRACE)
                for task in pending:
                    task.cancel()

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

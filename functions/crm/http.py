"""HTTP plumbing shared by every function: problem responses, request ids, bounded JSON bodies.

Handlers are plain `def fn(request) -> Response` wrapped by `endpoint`, which turns every
`CrmError` into RFC 9457 problem+json, stamps `X-Request-Id`, and answers `/healthz`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from crm.db import get_database
from crm.errors import (
    ApiKeyRefused,
    BadRequest,
    ConfigError,
    Conflict,
    CrmError,
    CronSecretRefused,
    DatabaseError,
    DatabaseUnavailable,
    Forbidden,
    InvalidToken,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
    SignatureRefused,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    UpstreamFailed,
)

log = logging.getLogger("crm.http")

MAX_BODY_BYTES = 64 * 1024
BODY_CONSUMED = "crm.body_consumed"  # environ key: read_json read the whole body
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

Handler = Callable[[flask.Request], flask.Response]


@dataclass(frozen=True)
class Answer:
    """How the functions answer one exception class: status, title and the headers it calls for.
    The problem's `type` is `/problems/<code>`, from the exception's own code."""

    status: int
    title: str
    headers: Callable[[CrmError], dict[str, str]] = lambda err: {}


def _challenge(value: str) -> Callable[[CrmError], dict[str, str]]:
    # RFC 9110 §11.6.1: every 401 names the scheme that would work.
    return lambda err: {"WWW-Authenticate": value}


def _retry_after(err: CrmError) -> dict[str, str]:
    return {"Retry-After": str(err.retry_after)} if err.retry_after is not None else {}


def _allow(err: CrmError) -> dict[str, str]:
    allowed = getattr(err, "allowed", ())
    return {"Allow": ", ".join(allowed)} if allowed else {}


_UNAUTHORIZED = "Unauthorized"

#: Exception class → answer: the one table. `answer_for` resolves a class through its MRO, so a
#: subclass anywhere below an entry answers as that entry until it gets one of its own. `CrmError`
#: is the catch-all (500); a test fails on any class of ours that would fall through to it unlisted.
PROBLEMS: dict[type[CrmError], Answer] = {
    CrmError: Answer(500, "Internal Server Error"),
    DatabaseError: Answer(500, "Internal Server Error"),
    BadRequest: Answer(400, "Bad Request"),
    Unauthorized: Answer(401, _UNAUTHORIZED, _challenge('Bearer realm="crm"')),
    InvalidToken: Answer(401, _UNAUTHORIZED, _challenge('Bearer realm="crm", error="invalid_token"')),
    ApiKeyRefused: Answer(401, _UNAUTHORIZED, _challenge("ApiKey")),
    CronSecretRefused: Answer(401, _UNAUTHORIZED, _challenge('CronSecret realm="crm"')),
    SignatureRefused: Answer(401, _UNAUTHORIZED, _challenge('Signature realm="crm"')),
    Forbidden: Answer(403, "Forbidden"),
    NotFound: Answer(404, "Not Found"),
    MethodNotAllowed: Answer(405, "Method Not Allowed", _allow),
    Conflict: Answer(409, "Conflict", _retry_after),
    PayloadTooLarge: Answer(413, "Content Too Large"),
    UnsupportedMediaType: Answer(415, "Unsupported Media Type"),
    Unprocessable: Answer(422, "Unprocessable Content"),
    TooManyRequests: Answer(429, "Too Many Requests", _retry_after),
    UpstreamFailed: Answer(502, "Bad Gateway"),
    ServiceUnavailable: Answer(503, "Service Unavailable", _retry_after),
}


def answer_for(err: BaseException | type[BaseException]) -> Answer:
    """The answer `PROBLEMS` gives an exception (or class): its nearest listed ancestor's."""
    for cls in (err if isinstance(err, type) else type(err)).__mro__:
        found = PROBLEMS.get(cls)  # type: ignore[call-overload]
        if found is not None:
            return found
    return PROBLEMS[CrmError]


def status_title(status: int) -> str:
    """The title `PROBLEMS` uses for a status, for answers the framework chose itself."""
    for answer in PROBLEMS.values():
        if answer.status == status:
            return answer.title
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    resp = flask.Response(json.dumps(body, default=str, ensure_ascii=False), status=status,
                          mimetype="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def problem_response(err: CrmError) -> flask.Response:
    answer = answer_for(err)
    problem = Problem(status=answer.status, title=answer.title, detail=err.detail or answer.title, code=err.code,
                      errors=err.errors)
    resp = json_response(problem.as_dict(), status=answer.status, headers=answer.headers(err))
    resp.mimetype = "application/problem+json"
    return resp


def request_id(request: flask.Request) -> str:
    """Keep a caller's well-formed `X-Request-Id` (for tracing across hops), else make one."""
    incoming = request.headers.get("X-Request-Id", "")
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def health() -> flask.Response:
    if get_database().ping():
        return json_response({"status": "ok", "database": "up"})
    return problem_response(DatabaseUnavailable())


def endpoint(handler: Handler) -> Handler:
    """Wrap a function's handler: problems for errors, `X-Request-Id` always, `/healthz`."""

    @functools.wraps(handler)
    def wrapper(request: flask.Request) -> flask.Response:
        rid = request_id(request)
        try:
            if request.path.rstrip("/").endswith("/healthz"):
                resp = health() if request.method in ("GET", "HEAD") else problem_response(
                    MethodNotAllowed("Use GET."))
            else:
                resp = handler(request)
        except ConfigError as err:
            # Deployed functions validate settings at import; this is the safety net for one that
            # is only read later: the operator's mistake, not the caller's, and not a crash.
            log.error("request %s: misconfigured: %s", rid, err)
            resp = problem_response(ServiceUnavailable(
                "The service is misconfigured; the operator has been told.", code="misconfigured"))
        except CrmError as err:
            if answer_for(err).status >= 500 and not isinstance(err, ServiceUnavailable):
                log.error("request %s failed: %s", rid, getattr(err, "message", None) or err.detail)
            resp = problem_response(err)
        except Exception:
            log.exception("request %s crashed", rid)
            resp = problem_response(CrmError("An unexpected error occurred; it has been logged."))
        if _has_unread_body(request):
            resp = _close_without_reading(resp)
        resp.headers["X-Request-Id"] = rid
        return resp

    return wrapper


def framework_error(exc: HTTPException) -> flask.Response:
    """What the framework answers itself (no route matched, e.g. `PATCH /leads/abc%0A`), as a problem."""
    status = exc.code or 500
    code = (exc.name or "error").lower().replace(" ", "_")
    detail = (f"No route for {flask.request.method} {flask.request.path!r}." if status == 404
              else (exc.description or exc.name))
    resp = json_response(Problem(status=status, title=status_title(status), detail=detail, code=code).as_dict(),
                         status=status)
    resp.mimetype = "application/problem+json"
    resp.headers["X-Request-Id"] = request_id(flask.request)
    return resp


def prepare_deployment() -> None:
    """Called at import by every `functions/*/main.py` (functions-framework imports it while building
    the app): the framework's own errors become problems, and the app is served by `crm.server`
    (deadlines for slow clients, strict framing) instead of functions-framework's gunicorn."""
    import functions_framework

    from crm.server import adopt_functions_framework

    register = getattr(functions_framework, "errorhandler", None)
    if register is not None:
        register(HTTPException)(framework_error)
    adopt_functions_framework()


def require_method(request: flask.Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"Use {' or '.join(methods)}.", allowed=methods)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_body(request: flask.Request, *, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body's exact bytes (for signatures), read at most once: 413 over the cap (announced
    or streamed), 400 if it cannot be read. Parsing is the caller's (`parse_json`, `parse_form`)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"The body is larger than {max_bytes // 1024} KiB.")
    try:
        raw = request.stream.read(max_bytes + 1)
    except Exception:  # noqa: BLE001 — each server raises its own (OSError, gunicorn ParseException, …)
        raise BadRequest("The body could not be read (malformed chunks or cut short).",
                         code="malformed_body") from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"The body is larger than {max_bytes // 1024} KiB.")
    request.environ[BODY_CONSUMED] = True
    return raw


def parse_json(raw: bytes) -> Any:
    """JSON from bytes (NaN/Infinity refused): 400 if malformed."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}", code="malformed_json") from None


def parse_form(raw: bytes) -> dict[str, list[str]]:
    """An `application/x-www-form-urlencoded` body: each name with its values, in order; 400 if malformed."""
    try:
        return urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw),
                                     errors="strict", max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"The body is not a valid form: {exc}", code="malformed_form") from None


def read_json(request: flask.Request, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body: 415 unless JSON, 413 over the cap, 400 if malformed."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("Send the body as application/json.")
    return parse_json(read_body(request, max_bytes=max_bytes))


def _has_unread_body(request: flask.Request) -> bool:
    if request.environ.get(BODY_CONSUMED):
        return False
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked or bool(request.content_length)


def _close_without_reading(resp: flask.Response) -> flask.Response:
    """Answer without draining the rest of the body: functions-framework reads every request body in
    full after a non-streamed response (unbounded), so a 413 for a 400 MB body would first buffer
    it. A streamed response skips that, and closing the connection discards what is left."""
    body = resp.get_data()
    streamed = flask.Response((chunk for chunk in (body,)), status=resp.status_code, headers=resp.headers)
    streamed.headers["Connection"] = "close"
    streamed.headers.pop("Content-Length", None)
    return streamed

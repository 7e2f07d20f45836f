"""The project's own exceptions, and the one table that maps them to HTTP.

Database errors are turned into these by `crm.db.wrap_exceptions`, keyed by SQLSTATE and
constraint name, so handlers never look at psycopg types.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class CrmError(Exception):
    """Base class: a refused request with an HTTP status and a machine-readable code."""

    status: int = 500
    title: str = "Internal Server Error"
    code: str = "internal_error"

    def __init__(self, detail: str = "", *, code: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, errors: list[FieldError] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.errors = errors or []


class BadRequest(CrmError):
    status, title, code = 400, "Bad Request", "bad_request"


class Unauthorized(CrmError):
    status, title, code = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str = "", **kw):
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="crm"'})
        super().__init__(detail, **kw)


class Forbidden(CrmError):
    status, title, code = 403, "Forbidden", "forbidden"


class NotFound(CrmError):
    status, title, code = 404, "Not Found", "not_found"


class MethodNotAllowed(CrmError):
    status, title, code = 405, "Method Not Allowed", "method_not_allowed"


class Conflict(CrmError):
    status, title, code = 409, "Conflict", "conflict"


class PayloadTooLarge(CrmError):
    status, title, code = 413, "Content Too Large", "payload_too_large"


class UnsupportedMediaType(CrmError):
    status, title, code = 415, "Unsupported Media Type", "unsupported_media_type"


class Unprocessable(CrmError):
    status, title, code = 422, "Unprocessable Content", "validation_failed"


class TooManyRequests(CrmError):
    status, title, code = 429, "Too Many Requests", "rate_limited"


class DatabaseUnavailable(CrmError):
    status, title, code = 503, "Service Unavailable", "database_unavailable"

    def __init__(self, detail: str = "The database is not answering; try again shortly.", **kw):
        kw.setdefault("headers", {"Retry-After": "5"})
        super().__init__(detail, **kw)


class ConfigError(Exception):
    """A required setting is missing or malformed (a startup error, never an HTTP answer)."""


STATUS_TITLES = {
    cls.status: cls.title
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
                PayloadTooLarge, UnsupportedMediaType, Unprocessable, TooManyRequests,
                DatabaseUnavailable, CrmError)
}


def error_for_status(status: int, detail: str, *, code: str, errors: list[FieldError] | None = None,
                     headers: dict[str, str] | None = None) -> CrmError:
    """An error for an HTTP status chosen by SQL (`raise sqlstate 'PT409'`)."""
    for cls in CrmError.__subclasses__():
        if cls.status == status:
            return cls(detail, code=code, errors=errors, headers=headers)
    err = CrmError(detail, code=code, status=status, errors=errors, headers=headers)
    err.title = STATUS_TITLES.get(status, "Error")
    return err


@dataclass
class Problem:
    """An RFC 9457 problem document."""

    status: int
    title: str
    detail: str
    code: str
    errors: list[FieldError] = field(default_factory=list)

    def as_dict(self) -> dict:
        doc = {
            "type": f"/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.status == 422 or self.errors:
            doc["errors"] = [e.as_dict() for e in self.errors]
        return doc

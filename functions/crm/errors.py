"""The project's own exceptions: what went wrong, in words and a stable code, never how to answer it.

The database's errors become these in the connector (`crm.db.SQLSTATE_ERRORS`, keyed by SQLSTATE
and constraint name), so no caller looks at psycopg types. How each class answers is decided by its
caller's surface: `crm.http.PROBLEMS` (status, title, headers) for the functions, `crm.tools.cli` (one
line, exit code) for the command line; both resolve a class through its MRO, so a subclass at any
depth answers as its nearest mapped ancestor.
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
    """Base class: a refused or failed request, with a machine-readable code.

    `retry_after`: seconds after which the same request may succeed (an outage, a limit, a
    collision), or None when retrying unchanged will not help.
    """

    code: str = "internal_error"
    retry_after: int | None = None

    def __init__(self, detail: str = "", *, code: str | None = None, errors: list[FieldError] | None = None,
                 retry_after: int | None = None):
        super().__init__(detail or type(self).__name__)
        self.detail = detail
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after
        self.errors = errors or []


class DatabaseError(CrmError):
    """The database refused a statement for a reason no rule covers (a bug, not the caller's fault).

    `message` is the database's own words, for logs and operators; callers are told only that it
    happened."""

    def __init__(self, message: str = ""):
        super().__init__("unexpected database error")
        self.message = message or "unexpected database error"


class BadRequest(CrmError):
    code = "bad_request"


class Unauthorized(CrmError):
    """No credentials, or credentials that do not authenticate anyone. As such (a missing access
    token, or a PT401 from SQL that no caller narrowed): the staff functions' bearer token."""

    code = "unauthorized"


class InvalidToken(Unauthorized):
    """An access token was sent and refused (expired, badly signed, wrong audience…): the client
    should refresh its session rather than sign in again (RFC 6750 `invalid_token`)."""

    code = "invalid_token"


class ApiKeyRefused(Unauthorized):
    """The machine API's `X-Api-Key` is missing, malformed, unknown, revoked or expired."""

    code = "api_key_invalid"


class CronSecretRefused(Unauthorized):
    """The scheduler's `X-Cron-Secret` is missing or wrong."""


class SignatureRefused(Unauthorized):
    """A webhook's signature (or its timestamp) does not verify."""

    code = "bad_signature"


class Forbidden(CrmError):
    code = "forbidden"


class NotFound(CrmError):
    code = "not_found"


class MethodNotAllowed(CrmError):
    """`allowed`: the methods the resource does take, when the refusing code knows them."""

    code = "method_not_allowed"

    def __init__(self, detail: str = "", *, allowed: tuple[str, ...] = (), **kw):
        super().__init__(detail, **kw)
        self.allowed = tuple(allowed)


class Conflict(CrmError):
    code = "conflict"


class PayloadTooLarge(CrmError):
    code = "payload_too_large"


class UnsupportedMediaType(CrmError):
    code = "unsupported_media_type"


class Unprocessable(CrmError):
    """Well-formed but refused by a rule; `errors` names each field and why."""

    code = "validation_failed"


class InvalidInput(Unprocessable):
    """A value the database cannot even read as its type (a malformed uuid, timestamp, number…)."""

    code = "invalid_input"


class TooManyRequests(CrmError):
    code = "rate_limited"
    retry_after = 5


class UpstreamFailed(CrmError):
    """A third party (the warehouse, a provider) answered something we cannot use."""

    code = "upstream_failed"


class ServiceUnavailable(CrmError):
    """Something we depend on is not answering right now; the same request will work later."""

    code = "service_unavailable"
    retry_after = 5


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"

    def __init__(self, detail: str = "The database is not answering; try again shortly.", **kw):
        super().__init__(detail, **kw)


class ConfigError(Exception):
    """A required setting is missing or malformed (a startup error, never an answer to a caller)."""


@dataclass
class Problem:
    """An RFC 9457 problem document (the HTTP layer fills it from `crm.http.PROBLEMS`)."""

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

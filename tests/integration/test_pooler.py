"""Behind a transaction-mode pooler (`CRM_DB_POOLER=transaction`, SPEC §6.1): no prepared statements,
nothing session-level, and `crm db migrate` refuses to run through it.

The PgBouncer here is this test's own (tests/pgcluster.py), `pool_mode = transaction` with only two
server connections for eight client connections, so consecutive transactions of one client land on
different server connections — where a statement psycopg prepared does not exist."""

import copy
import os
import re
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import conninfo

from crm import ROOT, config, queries
from crm.booking import intake as booking
from crm.db import Database
from crm.tools.sqlsplit import split
from tests import pgcluster
from tests.helpers import BOOKING_EXAMPLE, crm_cli, make_org


@pytest.fixture
def bouncer_url(pg_server_url, db_url):
    if not pgcluster.pgbouncer_available():
        pytest.skip("pgbouncer is not installed")
    # Our own PgBouncer, straight to the server the suite runs on (not through the pooler of a
    # CRM_TEST_POOLER_URL run), for this test's database.
    server = conninfo.conninfo_to_dict(pg_server_url)
    with pgcluster.pgbouncer(server.get("host") or "127.0.0.1", int(server.get("port") or 5432),
                             user=server.get("user") or "postgres", pool_size=2) as url:
        yield conninfo.make_conninfo(url, dbname=conninfo.conninfo_to_dict(db_url)["dbname"])


def test_bookings_through_pgbouncer_in_transaction_mode_never_fail(bouncer_url, conn, monkeypatch):
    make_org(conn, "demo")
    monkeypatch.setenv("CRM_DB_POOLER", "transaction")
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "0")
    db = Database(bouncer_url, min_size=8, max_size=8)
    assert db.pooler == "transaction"
    db.open()
    db.pool.wait(timeout=10)

    def book(i: int) -> str:
        body = copy.deepcopy(BOOKING_EXAMPLE)
        body["customer"]["phone"] = f"0151 2345 {i:04d}"
        try:
            result = booking.submit(db, body, idempotency_key=None, client=f"10.0.{i % 250}.1")
            return "ok" if result.body.get("order_code") else "no order"
        except Exception as exc:  # the failure mode is psycopg's "prepared statement … does not exist"
            return f"{type(exc).__name__}: {exc}"

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(book, range(240)))
    finally:
        db.close()
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} failed, e.g. {failures[:3]}"
    assert conn.execute("select count(*) as n from public.orders").fetchone()["n"] == 240


def test_crm_db_migrate_refuses_a_transaction_pooler_in_one_line(bouncer_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    result = crm_cli("db", "migrate", env=env, DATABASE_URL=bouncer_url, CRM_DB_POOLER="transaction")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "direct connection" in result.stderr and "CRM_DB_POOLER=transaction" in result.stderr


def test_pooler_mode_is_validated(monkeypatch):
    monkeypatch.setenv("CRM_DB_POOLER", "statement")
    with pytest.raises(config.ConfigError, match="CRM_DB_POOLER"):
        config.pooler_mode()
    monkeypatch.setenv("CRM_DB_POOLER", "Transaction")
    assert config.transaction_pooler()
    monkeypatch.delenv("CRM_DB_POOLER")
    assert config.pooler_mode() is None and not config.transaction_pooler()


# What needs a session and so breaks behind a transaction pooler: a session-level SET (SET LOCAL and
# a function's own `set search_path` are fine), set_config(…, false), LISTEN, session advisory locks.
SESSION_LEVEL = [
    (re.compile(r"^\s*set\s+(?!local\b)", re.IGNORECASE), "a session-level SET"),
    (re.compile(r"\bset_config\s*\([^;]*?,\s*false\s*\)", re.IGNORECASE), "set_config(…, false)"),
    (re.compile(r"^\s*(listen|unlisten)\b", re.IGNORECASE), "LISTEN"),
    (re.compile(r"\bpg_(try_)?advisory_lock(_shared)?\s*\(", re.IGNORECASE), "a session advisory lock"),
    # A temporary table outlives its transaction unless it is ON COMMIT DROP.
    (re.compile(r"\bcreate\s+(temp|temporary)\s+table\b(?![^;]*\bon\s+commit\s+drop\b)", re.IGNORECASE),
     "a temporary table that outlives its transaction"),
]


def session_level_findings(where: str, sql: str) -> list[str]:
    return [f"{where}: {what}" for pattern, what in SESSION_LEVEL if pattern.search(sql)]


#: Named queries that do need a session, each with what keeps it away from a transaction pooler.
NEEDS_A_SESSION = {
    "outbox_listen": "the webhook worker's own listener connection; DispatchSettings.listen is off "
                     "under CRM_DB_POOLER=transaction (test below)",
    "outbox_sleep": "the webhook worker's own sleep-lock connection, used only where it listens "
                    "(DispatchSettings.listen, off under CRM_DB_POOLER=transaction)",
    "migrate_lock": "the migration runner's lock across its per-file transactions; `crm db migrate` and `crm dev` "
                    "refuse CRM_DB_POOLER=transaction (test_crm_db_migrate_refuses_a_transaction_pooler_in_one_line)",
}


def test_no_query_or_database_function_needs_a_session():
    findings: list[str] = []
    for name, sql in queries.load().items():
        if name in NEEDS_A_SESSION:
            continue
        for stmt in split(sql):
            findings += session_level_findings(f"query {name}", stmt.sql)
    for path in sorted((ROOT / "db").glob("*/*.sql")):
        for stmt in split(path.read_text()):
            findings += session_level_findings(f"{path.relative_to(ROOT)}:{stmt.line}", stmt.sql)
    assert not findings, findings


def test_the_session_level_check_fires():
    assert session_level_findings("x", "set statement_timeout = 0")
    assert session_level_findings("x", "listen crm_jobs")
    assert session_level_findings("x", "select pg_advisory_lock(1)")
    assert session_level_findings("x", "select set_config('role', 'anon', false)")
    assert not session_level_findings("x", "set local role anon")
    assert not session_level_findings("x", "select pg_advisory_xact_lock(1)")
    assert session_level_findings("x", "create temporary table t (a int) on commit delete rows; select 1")
    assert not session_level_findings("x", "create temp table t (a int) on commit drop; select 1")
    assert not session_level_findings("x", "create function f() returns int language sql\nset search_path = ''\n"
                                           "as $$ select 1 $$")


def test_pooler_connections_prepare_nothing(bouncer_url, monkeypatch):
    monkeypatch.setenv("CRM_DB_POOLER", "transaction")
    db = Database(bouncer_url, min_size=1, max_size=1)
    db.open()
    try:
        for _ in range(10):
            assert db.ping()
        with db.pool.connection() as c:
            assert c.prepare_threshold is None
    finally:
        db.close()
    with psycopg.connect(bouncer_url) as direct:
        assert direct.prepare_threshold == 5  # what psycopg does unless told (the bug behind the pooler)


def test_the_webhook_worker_does_not_listen_behind_a_transaction_pooler(monkeypatch):
    from crm.outbox.dispatch import DispatchSettings

    monkeypatch.setenv("CRM_DB_POOLER", "transaction")
    assert DispatchSettings.from_env().listen is False
    monkeypatch.delenv("CRM_DB_POOLER")
    assert DispatchSettings.from_env().listen is True

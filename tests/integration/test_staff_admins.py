"""An organization always keeps an admin; memberships never move (SPEC 6.6; issue 10 finding 3)."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from tests.helpers import acting_as, make_org, make_staff, make_user

DEMOTE = "update public.staff set role = 'manager' where org_id = %s and user_id = %s"
REMOVE = "delete from public.staff where org_id = %s and user_id = %s"


def admins(conn: psycopg.Connection, org: uuid.UUID) -> int:
    return conn.execute("select count(*) as n from public.staff where org_id = %s and role = 'admin'",
                        (org,)).fetchone()["n"]


@pytest.mark.parametrize("sql", [DEMOTE, REMOVE], ids=["demote", "remove"])
@pytest.mark.parametrize("role", ["authenticated", "service_role", "owner"])
def test_the_last_admin_can_be_neither_demoted_nor_removed(conn, sql: str, role: str) -> None:
    org = make_org(conn)
    admin = make_staff(conn, org, "admin")
    with pytest.raises(psycopg.Error) as refused:
        if role == "owner":
            conn.execute(sql, (org, admin))
        else:
            with acting_as(conn, role, admin if role == "authenticated" else None) as c:
                c.execute(sql, (org, admin))
    assert (refused.value.sqlstate, refused.value.diag.message_detail) == ("PT409", "last_admin")
    assert admins(conn, org) == 1


def test_an_admin_with_a_fellow_admin_may_step_down(conn) -> None:
    org = make_org(conn)
    first, second = make_staff(conn, org, "admin"), make_staff(conn, org, "admin")
    with conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true),"
                     " set_config('request.jwt.claims', %s, true)", (f'{{"sub": "{first}"}}',))
        conn.execute(DEMOTE, (org, first))
    assert admins(conn, org) == 1
    with pytest.raises(psycopg.Error, match="at least one admin"):
        conn.execute(REMOVE, (org, second))


def test_concurrent_demotions_of_the_last_two_admins_leave_one(db_url: str, conn) -> None:
    """Each sees a fellow admin when it starts; the organization lock makes the second count again."""
    org = make_org(conn)
    first, second = make_staff(conn, org, "admin"), make_staff(conn, org, "admin")
    outcome: list[str] = []

    def demote_second() -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            try:
                c.execute(DEMOTE, (org, second))
                outcome.append("demoted")
            except psycopg.Error as exc:
                outcome.append(exc.diag.message_detail or "error")

    with psycopg.connect(db_url) as c1:  # a transaction left open: first demoted, not committed
        c1.execute(DEMOTE, (org, first))
        worker = threading.Thread(target=demote_second)
        worker.start()
        deadline = time.monotonic() + 20
        while not conn.execute("select exists (select from pg_stat_activity where datname = current_database()"
                               " and wait_event_type = 'Lock') as waiting").fetchone()["waiting"]:
            assert time.monotonic() < deadline and worker.is_alive(), outcome
            time.sleep(0.05)
        c1.commit()
    worker.join(20)
    assert outcome == ["last_admin"]
    assert admins(conn, org) == 1


@pytest.mark.parametrize(("column", "value"), [("org_id", "other"), ("user_id", "user")])
@pytest.mark.parametrize("role", ["service_role", "owner"])
def test_a_membership_never_moves(conn, column: str, value: str, role: str) -> None:
    org, other = make_org(conn), make_org(conn)
    make_staff(conn, org, "admin")
    member = make_staff(conn, org, "viewer")
    target = other if value == "other" else make_user(conn)
    sql = f"update public.staff set {column} = %s where org_id = %s and user_id = %s"
    with pytest.raises(psycopg.Error) as refused:
        if role == "owner":
            conn.execute(sql, (target, org, member))
        else:
            with acting_as(conn, role) as c:
                c.execute(sql, (target, org, member))
    assert (refused.value.sqlstate, refused.value.diag.message_detail, refused.value.diag.message_hint) == (
        "PT422", "immutable_column", column)


def test_deleting_an_organization_takes_its_admins_along(conn) -> None:
    org = make_org(conn)
    make_staff(conn, org, "admin")
    conn.execute("delete from public.organizations where id = %s", (org,))
    assert conn.execute("select count(*) as n from public.staff where org_id = %s", (org,)).fetchone()["n"] == 0

"""The role matrix of the class-session tables (SPEC 12), as PostgREST would run it.

Every table and view x {anon, staff of another org, viewer, agent, manager, admin, service_role} x
{select, insert, update, delete}, written out literally (the legend of test_rls_matrix.py):
  1 = the row is seen / written, 0 = silently nothing, E = refused with an error
Admins and managers schedule sessions and sell memberships and packages; every staff role reads;
bookings and status events have no write grants (the RPCs write them; service_role only moves a
booking's status, for mark-no-shows); nothing is deleted through the API.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg import errors as pg

from tests import rls_world as rls
from tests.helpers import acting_as, matrix_cases

ACTORS = ("anon", "other_org", "viewer", "agent", "manager", "admin", "service_role")

#                                                   anon other viewer agent manager admin service
MATRIX = {
    ("class_sessions", "select"):                   "E    0     1      1     1       1     1",
    ("class_sessions", "insert"):                   "E    E     E      E     1       1     1",
    ("class_sessions", "update"):                   "E    0     0      0     1       1     1",
    ("class_sessions", "delete"):                   "E    E     E      E     E       E     E",
    ("memberships", "select"):                      "E    0     1      1     1       1     1",
    ("memberships", "insert"):                      "E    E     E      E     1       1     1",
    ("memberships", "update"):                      "E    0     0      0     1       1     1",
    ("memberships", "delete"):                      "E    E     E      E     E       E     E",
    ("class_packages", "select"):                   "E    0     1      1     1       1     1",
    ("class_packages", "insert"):                   "E    E     E      E     1       1     1",
    ("class_packages", "update"):                   "E    0     0      0     1       1     1",
    ("class_packages", "delete"):                   "E    E     E      E     E       E     E",
    ("session_bookings", "select"):                 "E    0     1      1     1       1     1",
    ("session_bookings", "insert"):                 "E    E     E      E     E       E     E",
    ("session_bookings", "update"):                 "E    E     E      E     E       E     1",
    ("session_bookings", "delete"):                 "E    E     E      E     E       E     E",
    ("session_booking_status_events", "select"):    "E    0     1      1     1       1     1",
    ("session_booking_status_events", "insert"):    "E    E     E      E     E       E     E",
    ("session_booking_status_events", "update"):    "E    E     E      E     E       E     E",
    ("session_booking_status_events", "delete"):    "E    E     E      E     E       E     E",
    ("session_rosters", "select"):                  "E    0     1      1     1       1     1",
    ("customer_booking_history", "select"):         "E    0     1      1     1       1     1",
}

CASES = matrix_cases(MATRIX, ACTORS)


@dataclass
class World(rls.StaffedOrg):
    ids: dict[str, uuid.UUID]


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database, outsider=("other_org", "manager")) as s:
        conn, org = s.conn, s.org
        one = lambda sql, *params: conn.execute(sql, params).fetchone()["id"]  # noqa: E731
        customer = one("insert into public.customers (org_id, full_name, email) values (%s, 'Anna', 'a@ex.test')"
                       " returning id", org)
        ids = {
            "customer": customer,
            "class_sessions": one("insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity)"
                                  " values (%s, 'Yoga', now() + interval '1 day', now() + interval '25 hours', 5)"
                                  " returning id", org),
            "memberships": one("insert into public.memberships (org_id, customer_id, plan, starts_on)"
                               " values (%s, %s, 'Monthly', current_date) returning id", org, customer),
            "class_packages": one("insert into public.class_packages (org_id, customer_id, credits_total)"
                                  " values (%s, %s, 10) returning id", org, customer),
        }
        ids["session_bookings"] = one("insert into public.session_bookings (org_id, session_id, customer_id)"
                                      " values (%s, %s, %s) returning id", org, ids["class_sessions"], customer)
        yield World(**s.base(), ids=ids)


def _statement(w: World, table: str, action: str) -> tuple[str, dict]:
    """One statement per table and action, aimed at org A's seeded row (or a new one)."""
    p = {"org": w.org, "customer": w.ids["customer"], "session": w.ids["class_sessions"],
         "booking": w.ids["session_bookings"], "id": w.ids.get(table)}
    if action == "select":
        key, value = {"session_booking_status_events": ("booking_id", "booking"),
                      "session_rosters": ("id", "session"),
                      "customer_booking_history": ("booking_id", "booking")}.get(table, ("id", "id"))
        return f"select 1 from public.{table} where {key} = %({value})s limit 1", p
    if table == "session_booking_status_events":
        return {
            "insert": ("insert into public.session_booking_status_events (org_id, booking_id, to_status)"
                       " values (%(org)s, %(booking)s, 'booked')", p),
            "update": ("update public.session_booking_status_events set note = 'x' where booking_id = %(booking)s", p),
            "delete": ("delete from public.session_booking_status_events where booking_id = %(booking)s", p),
        }[action]
    if action == "insert":
        return {
            "class_sessions": ("insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity)"
                               " values (%(org)s, 'Pilates', now() + interval '2 days', now() + interval '49 hours',"
                               " 8)", p),
            "memberships": ("insert into public.memberships (org_id, customer_id, plan, starts_on)"
                            " values (%(org)s, %(customer)s, 'Yearly', current_date)", p),
            "class_packages": ("insert into public.class_packages (org_id, customer_id, credits_total)"
                               " values (%(org)s, %(customer)s, 5)", p),
            "session_bookings": ("insert into public.session_bookings (org_id, session_id, customer_id)"
                                 " values (%(org)s, %(session)s, %(customer)s)", p),
        }[table]
    if action == "update":
        return {
            "class_sessions": ("update public.class_sessions set location = 'Studio 2' where id = %(id)s", p),
            "memberships": ("update public.memberships set plan = 'Monthly plus' where id = %(id)s", p),
            "class_packages": ("update public.class_packages set credits_total = 12 where id = %(id)s", p),
            "session_bookings": ("update public.session_bookings set status = 'attended' where id = %(id)s", p),
        }[table]
    return f"delete from public.{table} where id = %(id)s", p


@rls.matrix_cells(CASES)
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    rls.assert_cell(world, table, action, actor, expected, _statement(world, table, action))


COLUMNS_WITHOUT_GRANT = [
    ("update public.class_packages set credits_used = 0 where id = %(class_packages)s", "credits_used"),
    ("update public.class_packages set customer_id = customer_id where id = %(class_packages)s", "customer_id"),
    ("update public.memberships set customer_id = customer_id where id = %(memberships)s", "customer_id"),
    ("update public.class_sessions set org_id = org_id where id = %(class_sessions)s", "org_id"),
    ("insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity, status)"
     " values (%(org)s, 'x', now(), now() + interval '1 hour', 1, 'cancelled')", "status"),
    ("insert into public.class_packages (org_id, customer_id, credits_total, credits_used)"
     " values (%(org)s, %(customer)s, 5, 5)", "credits_used"),
]


@rls.column_cases(COLUMNS_WITHOUT_GRANT)
def test_admin_cannot_write_columns_without_grant(world: World, sql: str, column: str) -> None:
    rls.assert_admin_lacks_grant(world, sql, {"org": world.org, **world.ids})


def test_service_role_cannot_pick_what_paid(world: World) -> None:
    with pytest.raises(pg.InsufficientPrivilege, match="permission denied"):
        with acting_as(world.conn, "service_role") as c:
            c.execute("update public.session_bookings set package_id = null where id = %s",
                      (world.ids["session_bookings"],))

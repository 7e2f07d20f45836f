"""The role matrix of SPEC 9 for webhook endpoints, deliveries and attempts, as PostgREST would run
it (role + JWT claims, rolled back):
  1 = the row is seen / written (insert succeeds, update touches the row)
  0 = silently nothing (select sees no row, update touches zero rows)
  E = refused with an error (permission denied or an RLS `with check` violation)

Admins manage endpoints (create_webhook_endpoint creates them: no direct insert), managers read
them; admins read deliveries and attempts, which only the dispatcher (service_role) writes; nobody
deletes any of them through the API (purge-outbox deletes through its own function).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests import rls_world as rls
from tests.helpers import acting_as, matrix_cases

ACTORS = ("anon", "outsider", "viewer", "agent", "manager", "admin", "service_role")

#                                        anon outsider viewer agent manager admin service
MATRIX = {
    ("webhook_endpoints", "select"):     "E    0        0      0     1       1     1",
    ("webhook_endpoints", "insert"):     "E    E        E      E     E       E     E",
    ("webhook_endpoints", "update"):     "E    0        0      0     0       1     1",
    ("webhook_endpoints", "delete"):     "E    E        E      E     E       E     E",
    ("webhook_deliveries", "select"):    "E    0        0      0     0       1     1",
    ("webhook_deliveries", "insert"):    "E    E        E      E     E       E     1",
    ("webhook_deliveries", "update"):    "E    E        E      E     E       E     1",
    ("webhook_deliveries", "delete"):    "E    E        E      E     E       E     E",
    ("webhook_attempts", "select"):      "E    0        0      0     0       1     1",
    ("webhook_attempts", "insert"):      "E    E        E      E     E       E     1",
    ("webhook_attempts", "update"):      "E    E        E      E     E       E     E",
    ("webhook_attempts", "delete"):      "E    E        E      E     E       E     E",
}

CASES = matrix_cases(MATRIX, ACTORS)


@dataclass
class World(rls.StaffedOrg):
    rows: dict[str, uuid.UUID | int]  # the seeded row of each table


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database) as s:
        conn, org = s.conn, s.org
        rls.make_customer(conn, org)
        endpoint = conn.execute(
            "insert into public.webhook_endpoints (org_id, url) values (%s, 'https://hooks.example.com/in')"
            " returning id", (org,)).fetchone()["id"]
        delivery = conn.execute(
            "insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)"
            " select org_id, %s, event_id, event_type from private.outbox where org_id = %s limit 1"
            " returning id", (endpoint, org)).fetchone()["id"]
        attempt = conn.execute(
            "insert into public.webhook_attempts (org_id, delivery_id, endpoint_id, event_id, attempt, started_at,"
            " duration_ms, status_code, outcome) select org_id, id, endpoint_id, event_id, 1, now(), 5, 500,"
            " 'failed' from public.webhook_deliveries where id = %s returning id", (delivery,)).fetchone()["id"]
        rows = {"webhook_endpoints": endpoint, "webhook_deliveries": delivery, "webhook_attempts": attempt}
        yield World(**s.base(), rows=rows)


def _statement(w: World, table: str, action: str) -> tuple[str, tuple]:
    """One statement per table and action, aimed at the seeded organization's row (or a new one)."""
    row_id = w.rows[table]
    if action == "select":
        return f"select 1 from public.{table} where id = %s", (row_id,)
    if action == "delete":
        return f"delete from public.{table} where id = %s", (row_id,)
    if action == "update":
        column = {"webhook_endpoints": "description", "webhook_deliveries": "last_error",
                  "webhook_attempts": "error"}[table]
        return f"update public.{table} set {column} = 'x' where id = %s", (row_id,)
    return {
        "webhook_endpoints": ("insert into public.webhook_endpoints (org_id, url)"
                              " values (%s, 'https://hooks.example.com/2')", (w.org,)),
        "webhook_deliveries": ("insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)"
                               " values (%s, %s, gen_random_uuid(), 'lead.created')",
                               (w.org, w.rows["webhook_endpoints"])),
        "webhook_attempts": ("insert into public.webhook_attempts (org_id, delivery_id, endpoint_id, event_id,"
                             " attempt, started_at, duration_ms, outcome) select org_id, id, endpoint_id, event_id,"
                             " 2, now(), 1, 'failed' from public.webhook_deliveries where id = %s",
                             (w.rows["webhook_deliveries"],)),
    }[table]


@rls.matrix_cells(CASES)
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    rls.assert_cell(world, table, action, actor, expected, _statement(world, table, action))


@pytest.mark.parametrize("column", ["org_id", "secret_version", "failing_since", "disabled_reason", "created_at"])
def test_admin_cannot_write_endpoint_columns_without_grant(world: World, column: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), \
            acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        c.execute(f"update public.webhook_endpoints set {column} = {column} where id = %s",
                  (world.rows["webhook_endpoints"],))

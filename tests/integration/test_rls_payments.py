"""The role matrix of SPEC 6.6/6.8 for payments, inspections, the warehouse order cache and
customer_profiles, as PostgREST would run it (role + JWT claims, rolled back):
  1 = the row is seen / written (insert succeeds, update touches the row)
  0 = silently nothing (select sees no row, update touches zero rows)
  E = refused with an error (permission denied or an RLS `with check` violation)

Admins and managers record and correct payments and inspections; agents and viewers read them;
nobody deletes one (a refund is its own row); wms_orders is read-only for every API role.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import errors as pg

from tests import rls_world as rls
from tests.helpers import acting_as, matrix_cases

ACTORS = ("anon", "outsider", "viewer", "agent", "manager", "admin", "service_role")

#                                        anon outsider viewer agent manager admin service
MATRIX = {
    ("payments", "select"):              "E    0        1      1     1       1     1",
    ("payments", "insert"):              "E    E        E      E     1       1     1",
    ("payments", "update"):              "E    0        0      0     1       1     1",
    ("payments", "delete"):              "E    E        E      E     E       E     E",
    ("inspections", "select"):           "E    0        1      1     1       1     1",
    ("inspections", "insert"):           "E    E        E      E     1       1     1",
    ("inspections", "update"):           "E    0        0      0     1       1     1",
    ("inspections", "delete"):           "E    E        E      E     E       E     E",
    ("wms_orders", "select"):            "E    0        1      1     1       1     1",
    ("wms_orders", "insert"):            "E    E        E      E     E       E     E",
    ("wms_orders", "update"):            "E    E        E      E     E       E     E",
    ("wms_orders", "delete"):            "E    E        E      E     E       E     E",
    ("customer_profiles", "select"):     "E    0        1      1     1       1     1",
}

CASES = matrix_cases(MATRIX, ACTORS)

SNAPSHOT = {"external_ref": "listing-1", "title": "Canyon Spectral 29"}


@dataclass
class World(rls.StaffedOrg):
    customer: uuid.UUID
    order: uuid.UUID
    payment: uuid.UUID
    inspection: uuid.UUID


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database) as s:
        conn, org = s.conn, s.org
        customer = rls.make_customer(conn, org)
        order = conn.execute(
            "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, price_amount,"
            " currency) values (%s, %s, 'listing-1', %s, 1000, 'EUR') returning id",
            (org, customer, json.dumps(SNAPSHOT))).fetchone()["id"]
        payment = conn.execute(
            "insert into public.payments (org_id, order_id, kind, amount) values (%s, %s, 'deposit', 100)"
            " returning id", (org, order)).fetchone()["id"]
        inspection = conn.execute(
            "insert into public.inspections (org_id, order_id) values (%s, %s) returning id",
            (org, order)).fetchone()["id"]
        conn.execute("insert into public.wms_orders (org_id, wms_order_id, crm_customer_id, crm_order_id, status)"
                     " values (%s, 'W-1', %s, %s, 'picking')", (org, customer, order))
        yield World(**s.base(), customer=customer, order=order, payment=payment, inspection=inspection)


def _statement(w: World, table: str, action: str) -> tuple[str, tuple]:
    """One statement per table and action, aimed at the seeded organization's row (or a new one)."""
    key = {"wms_orders": ("wms_order_id", "W-1"), "payments": ("id", w.payment),
           "inspections": ("id", w.inspection), "customer_profiles": ("id", w.customer)}[table]
    if action == "select":
        return f"select 1 from public.{table} where {key[0]} = %s", (key[1],)
    if action == "delete":
        return f"delete from public.{table} where {key[0]} = %s", (key[1],)
    if action == "insert":
        return {
            "payments": ("insert into public.payments (org_id, order_id, kind, amount, method)"
                         " values (%s, %s, 'balance', 50, 'cash')", (w.org, w.order)),
            "inspections": ("insert into public.inspections (org_id, order_id, stage, checklist)"
                            " values (%s, %s, 'detailed', '{\"frame\": \"ok\"}')", (w.org, w.order)),
            "wms_orders": ("insert into public.wms_orders (org_id, wms_order_id, status) values (%s, 'W-2', 'new')",
                           (w.org,)),
        }[table]
    return {
        "payments": ("update public.payments set method = 'card' where id = %s", (w.payment,)),
        "inspections": ("update public.inspections set next_action = 'call the seller' where id = %s",
                        (w.inspection,)),
        "wms_orders": ("update public.wms_orders set status = 'shipped' where wms_order_id = %s", ("W-1",)),
    }[table]


@rls.matrix_cells(CASES)
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    rls.assert_cell(world, table, action, actor, expected, _statement(world, table, action))


COLUMNS_WITHOUT_GRANT = [
    ("update public.payments set order_id = order_id where id = %(payment)s", "order_id"),
    ("update public.payments set org_id = org_id where id = %(payment)s", "org_id"),
    ("update public.payments set kind = 'refund' where id = %(payment)s", "kind"),
    ("update public.payments set currency = 'EUR' where id = %(payment)s", "currency"),
    ("update public.payments set recorded_by = null where id = %(payment)s", "recorded_by"),
    ("insert into public.payments (org_id, order_id, kind, amount, recorded_by)"
     " values (%(org)s, %(order)s, 'deposit', 1, null)", "recorded_by"),
    ("update public.inspections set inspected_by = null where id = %(inspection)s", "inspected_by"),
    ("update public.inspections set order_id = order_id where id = %(inspection)s", "order_id"),
    ("update public.orders set wms_order_id = 'W-9' where id = %(order)s", "wms_order_id"),
]


@rls.column_cases(COLUMNS_WITHOUT_GRANT)
def test_admin_cannot_write_columns_without_grant(world: World, sql: str, column: str) -> None:
    params = {"payment": world.payment, "inspection": world.inspection, "order": world.order, "org": world.org}
    rls.assert_admin_lacks_grant(world, sql, params)


def test_outsider_cannot_pay_into_a_foreign_order_from_their_own_org(world: World) -> None:
    """The composite (org_id, order_id) key: an admin of org B naming org A's order under org B."""
    other = world.conn.execute("select org_id from public.staff where user_id = %s",
                               (world.users["outsider"],)).fetchone()["org_id"]
    with pytest.raises(psycopg.Error) as info:
        with acting_as(world.conn, "authenticated", world.users["outsider"]) as c:
            c.execute("insert into public.payments (org_id, order_id, kind, amount, currency)"
                      " values (%s, %s, 'deposit', 10, 'EUR')", (other, world.order))
    assert isinstance(info.value, pg.ForeignKeyViolation)

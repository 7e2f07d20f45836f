"""The role matrix of SPEC 6.6/10/11 for integrations, the inventory cache, activities, the timeline
and integration_events, as PostgREST would run it (role + JWT claims, rolled back):
  1 = the row is seen / written (insert succeeds, update touches the row)
  0 = silently nothing (select sees no row, update touches zero rows)
  E = refused with an error (permission denied or an RLS `with check` violation)

Admins manage integrations and alone see inbound events; managers read integrations; every role
reads the inventory cache, activities and the timeline; staff add notes (agents on their leads,
viewers never); nobody updates or deletes an activity; caches are written by the inbox only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg import errors as pg

from tests import rls_world as rls
from tests.helpers import acting_as, matrix_cases

ACTORS = ("anon", "outsider", "viewer", "agent", "manager", "admin", "service_role")

#                                        anon outsider viewer agent manager admin service
MATRIX = {
    ("integrations", "select"):          "E    0        0      0     1       1     1",
    ("integrations", "insert"):          "E    E        E      E     E       E     E",
    ("integrations", "update"):          "E    0        0      0     0       1     E",
    ("integrations", "delete"):          "E    E        E      E     E       E     E",
    ("inventory_items", "select"):       "E    0        1      1     1       1     1",
    ("inventory_items", "insert"):       "E    E        E      E     E       E     E",
    ("inventory_items", "update"):       "E    E        E      E     E       E     E",
    ("inventory_items", "delete"):       "E    E        E      E     E       E     E",
    ("activities", "select"):            "E    0        1      1     1       1     1",
    ("activities", "insert"):            "E    E        E      1     1       1     E",
    ("activities", "update"):            "E    E        E      E     E       E     E",
    ("activities", "delete"):            "E    E        E      E     E       E     E",
    ("timeline", "select"):              "E    0        1      1     1       1     1",
    ("integration_events", "select"):    "E    0        0      0     0       1     E",
}

CASES = matrix_cases(MATRIX, ACTORS)


@dataclass
class World(rls.StaffedOrg):
    customer: uuid.UUID
    lead: uuid.UUID
    integration: uuid.UUID
    activity: uuid.UUID


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database) as s:
        conn, org, users = s.conn, s.org, s.users
        customer = rls.make_customer(conn, org)
        lead = conn.execute(
            "insert into public.leads (org_id, customer_id, source, assigned_to) values (%s, %s, 'phone_call', %s)"
            " returning id", (org, customer, users["agent"])).fetchone()["id"]
        integration = conn.execute("select public.create_integration(%s, 'wms') as i", (org,)).fetchone()["i"]["id"]
        conn.execute("insert into public.inventory_items (org_id, sku, available) values (%s, 'SKU-1', 3)", (org,))
        activity = conn.execute(
            "insert into public.activities (org_id, customer_id, lead_id, kind, summary)"
            " values (%s, %s, %s, 'call', 'Inbound call completed') returning id", (org, customer, lead)
        ).fetchone()["id"]
        conn.execute("select private.inbox_receive(%s, %s)", (integration, json.dumps([{
            "event_id": "msg_1", "event_type": "inventory.low_stock", "process": False, "payload": {"data": {}}}])))
        yield World(**s.base(), customer=customer, lead=lead, integration=integration, activity=activity)


def _statement(w: World, table: str, action: str) -> tuple[str, tuple]:
    """One statement per table and action, aimed at the seeded organization's row (or a new one)."""
    key = {"integrations": ("id", w.integration), "inventory_items": ("sku", "SKU-1"),
           "activities": ("id", w.activity), "timeline": ("customer_id", w.customer),
           "integration_events": ("event_id", "msg_1")}[table]
    if action == "select":
        return f"select 1 from public.{table} where {key[0]} = %s and org_id = %s limit 1", (key[1], w.org)
    if action == "delete":
        return f"delete from public.{table} where {key[0]} = %s", (key[1],)
    if action == "insert":
        return {
            "integrations": ("insert into public.integrations (org_id, kind) values (%s, 'twilio')", (w.org,)),
            "inventory_items": ("insert into public.inventory_items (org_id, sku) values (%s, 'SKU-2')", (w.org,)),
            "activities": ("insert into public.activities (org_id, customer_id, lead_id, kind, summary)"
                           " values (%s, %s, %s, 'note', 'Called back, wants a test ride')",
                           (w.org, w.customer, w.lead)),
        }[table]
    return {
        "integrations": ("update public.integrations set enabled = false where id = %s", (w.integration,)),
        "inventory_items": ("update public.inventory_items set available = 0 where sku = %s", ("SKU-1",)),
        "activities": ("update public.activities set summary = 'changed' where id = %s", (w.activity,)),
    }[table]


@rls.matrix_cells(CASES)
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    rls.assert_cell(world, table, action, actor, expected, _statement(world, table, action))


COLUMNS_WITHOUT_GRANT = [
    ("update public.integrations set kind = 'meta' where id = %(integration)s", "kind"),
    ("update public.integrations set org_id = org_id where id = %(integration)s", "org_id"),
    ("insert into public.activities (org_id, customer_id, kind, summary, created_by)"
     " values (%(org)s, %(customer)s, 'note', 'x', null)", "created_by"),
    ("insert into public.activities (org_id, customer_id, kind, summary, source_ref)"
     " values (%(org)s, %(customer)s, 'note', 'x', 'ref')", "source_ref"),
]


@rls.column_cases(COLUMNS_WITHOUT_GRANT)
def test_admin_cannot_write_columns_without_grant(world: World, sql: str, column: str) -> None:
    params = {"integration": world.integration, "org": world.org, "customer": world.customer}
    rls.assert_admin_lacks_grant(world, sql, params)


@pytest.mark.parametrize(("actor", "statement"), [
    ("manager", "insert into public.activities (org_id, customer_id, kind, summary)"
                " values (%(org)s, %(customer)s, 'call', 'a made-up call')"),
    ("agent", "insert into public.activities (org_id, customer_id, kind, summary)"
              " values (%(org)s, %(customer)s, 'note', 'not on a lead of mine')"),
])
def test_staff_add_notes_only_and_agents_only_on_their_leads(world: World, actor: str, statement: str) -> None:
    with pytest.raises(pg.InsufficientPrivilege, match="row-level security"):
        with acting_as(world.conn, "authenticated", world.users[actor]) as c:
            c.execute(statement, {"org": world.org, "customer": world.customer})


def test_a_note_is_written_as_its_author(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        row = c.execute("insert into public.activities (org_id, customer_id, kind, summary)"
                        " values (%s, %s, 'note', 'prefers mornings') returning created_by",
                        (world.org, world.customer)).fetchone()
    assert row["created_by"] == world.users["manager"]


def test_integration_events_show_no_payloads(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        row = c.execute("select * from public.integration_events where org_id = %s", (world.org,)).fetchone()
    assert row["event_id"] == "msg_1" and "payload" not in row


def test_no_api_role_reaches_the_inbox_or_the_secrets(world: World) -> None:
    for role in ("anon", "authenticated"):
        for table in ("private.inbound_events", "private.integration_secrets"):
            with pytest.raises(pg.InsufficientPrivilege):
                with acting_as(world.conn, role, world.users["admin"] if role == "authenticated" else None) as c:
                    c.execute(f"select 1 from {table}")

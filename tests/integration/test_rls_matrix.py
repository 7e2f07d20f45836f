"""The role matrix of SPEC 6.6, table by table, as PostgREST would run it.

Every CRM table x {anon, staff of another org, viewer, agent (assigned / not assigned), manager,
admin, service_role} x {select, insert, update, delete}. Expectations are written out literally
below, so the matrix reads as the contract:
  1 = the row is seen / written (insert succeeds, update/delete touches the row)
  0 = silently nothing (select sees no row, update/delete touches zero rows)
  E = refused with an error (permission denied or an RLS `with check` violation)

One migrated database serves the module; each case runs in a transaction that is rolled back.
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
from tests.helpers import acting_as, make_staff, make_user
from tests.integration.test_rls_integrations import MATRIX as INTEGRATIONS_MATRIX
from tests.integration.test_rls_payments import MATRIX as PAYMENTS_MATRIX
from tests.integration.test_rls_sessions import MATRIX as SESSIONS_MATRIX
from tests.integration.test_rls_webhooks import MATRIX as WEBHOOKS_MATRIX
from tests.integration.test_rls_wms import MATRIX as WMS_MATRIX

ACTORS = ("anon", "other_org", "viewer", "agent_assigned", "agent_other", "manager", "admin", "service_role")

#                                        anon other viewer ag_own ag_other manager admin service
MATRIX = {
    ("organizations", "select"):          "E    0     1      1      1        1       1     1",
    ("organizations", "insert"):          "E    E     E      E      E        E       E     1",
    ("organizations", "update"):          "E    0     0      0      0        0       1     1",
    ("organizations", "delete"):          "E    E     E      E      E        E       E     E",
    ("staff", "select"):                  "E    0     1      1      1        1       1     1",
    ("staff", "insert"):                  "E    E     E      E      E        E       1     1",
    ("staff", "update"):                  "E    0     0      0      0        0       1     1",
    ("staff", "delete"):                  "E    0     0      0      0        0       1     1",
    ("customers", "select"):              "E    0     1      1      1        1       1     1",
    ("customers", "insert"):              "E    E     E      E      E        1       1     1",
    ("customers", "update"):              "E    0     0      0      0        1       1     1",
    ("customers", "delete"):              "E    E     E      E      E        E       E     E",
    ("leads", "select"):                  "E    0     1      1      1        1       1     1",
    ("leads", "insert"):                  "E    E     E      1      E        1       1     1",
    ("leads", "update"):                  "E    0     0      1      0        1       1     1",
    ("leads", "delete"):                  "E    E     E      E      E        E       E     E",
    ("orders", "select"):                 "E    0     1      1      1        1       1     1",
    ("orders", "insert"):                 "E    E     E      E      E        1       1     1",
    ("orders", "update"):                 "E    0     0      0      0        1       1     1",
    ("orders", "delete"):                 "E    E     E      E      E        E       E     E",
    ("shipments", "select"):              "E    0     1      1      1        1       1     1",
    ("shipments", "insert"):              "E    E     E      E      E        1       1     1",
    ("shipments", "update"):              "E    0     0      0      0        1       1     1",
    ("shipments", "delete"):              "E    0     0      0      0        1       1     1",
    ("tasks", "select"):                  "E    0     1      1      1        1       1     1",
    ("tasks", "insert"):                  "E    E     E      1      E        1       1     1",
    ("tasks", "update"):                  "E    0     0      1      0        1       1     1",
    ("tasks", "delete"):                  "E    0     0      0      0        1       1     1",
    ("lead_status_events", "select"):     "E    0     1      1      1        1       1     1",
    ("lead_status_events", "insert"):     "E    E     E      E      E        E       E     E",
    ("lead_status_events", "update"):     "E    E     E      E      E        E       E     E",
    ("lead_status_events", "delete"):     "E    E     E      E      E        E       E     E",
    ("order_status_events", "select"):    "E    0     1      1      1        1       1     1",
    ("order_status_events", "insert"):    "E    E     E      E      E        E       E     E",
    ("order_status_events", "update"):    "E    E     E      E      E        E       E     E",
    ("order_status_events", "delete"):    "E    E     E      E      E        E       E     E",
    ("order_cards", "select"):            "E    0     1      1      1        1       1     1",
}
# Who does what, in words (SPEC 6.6): admins change staff and organization settings, and the CRM
# data like managers; managers change customers, leads, orders, shipments and tasks; agents change
# only the leads and tasks assigned to them and add tasks only on their own leads (a task insert is
# self-assigned, on the lead assigned to agent_assigned); viewers read. Nobody deletes customers,
# leads, orders or status events, and nobody deletes an organization: not even service_role.
# Staff cases aim at a viewer member (`target`); a staff insert adds a user who is not staff yet.

STAFF_OF_ORG = ("viewer", "agent_assigned", "agent_other", "manager", "admin")

CASES = [(table, action, actor, expected)
         for (table, action), row in MATRIX.items()
         for actor, expected in zip(ACTORS, row.split(), strict=True)]

SNAPSHOT = {"external_ref": "listing-1", "title": "Canyon Spectral 29",
            "images": ["https://img.example/1.jpg"], "images_state": "pending"}


@dataclass
class World(rls.StaffedOrg):
    customer: uuid.UUID
    lead: uuid.UUID
    order: uuid.UUID
    shipment: uuid.UUID
    task: uuid.UUID
    agent: uuid.UUID  # the agent the lead and the task are assigned to
    target: uuid.UUID  # a viewer member of the org: what staff update/delete aim at
    newcomer: uuid.UUID  # a user who is not staff yet: what a staff insert adds


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    members = {"viewer": "viewer", "agent_assigned": "agent", "agent_other": "agent", "manager": "manager",
               "admin": "admin"}
    with rls.staffed_org(clone_database, outsider=("other_org", "manager"), members=members) as s:
        conn, org = s.conn, s.org
        agent = s.users["agent_assigned"]
        customer = rls.make_customer(conn, org)
        lead = conn.execute(
            "insert into public.leads (org_id, customer_id, source, assigned_to) values (%s, %s, 'manual', %s)"
            " returning id", (org, customer, agent)).fetchone()["id"]
        order = conn.execute(
            "insert into public.orders (org_id, customer_id, lead_id, external_item_ref, item_snapshot)"
            " values (%s, %s, %s, 'listing-1', %s) returning id",
            (org, customer, lead, json.dumps(SNAPSHOT))).fetchone()["id"]
        shipment = conn.execute(
            "insert into public.shipments (org_id, order_id, provider) values (%s, %s, 'dhl') returning id",
            (org, order)).fetchone()["id"]
        task = conn.execute(
            "insert into public.tasks (org_id, lead_id, title, assignee) values (%s, %s, 'Call back', %s)"
            " returning id", (org, lead, agent)).fetchone()["id"]
        target = make_staff(conn, org, "viewer")
        newcomer = make_user(conn)
        yield World(**s.base(), customer=customer, lead=lead, order=order, shipment=shipment, task=task,
                    agent=agent, target=target, newcomer=newcomer)


def _role(actor: str) -> str:
    return actor if actor in ("anon", "service_role") else "authenticated"


def _statement(w: World, table: str, action: str, actor: str) -> tuple[str, tuple]:
    """One statement per table and action, always aimed at org A's seeded row (or a new one)."""
    if table == "organizations":
        return {
            "select": ("select 1 from public.organizations where id = %s", (w.org,)),
            "insert": ("insert into public.organizations (slug, name) values (%s, 'New')",
                       (f"new-{uuid.uuid4().hex[:8]}",)),
            "update": ("update public.organizations set name = 'Renamed' where id = %s", (w.org,)),
            "delete": ("delete from public.organizations where id = %s", (w.org,)),
        }[action]
    if table == "staff":
        return {
            "select": ("select 1 from public.staff where org_id = %s and user_id = %s", (w.org, w.target)),
            "insert": ("insert into public.staff (org_id, user_id, role) values (%s, %s, 'viewer')",
                       (w.org, w.newcomer)),
            "update": ("update public.staff set role = 'agent' where org_id = %s and user_id = %s",
                       (w.org, w.target)),
            "delete": ("delete from public.staff where org_id = %s and user_id = %s", (w.org, w.target)),
        }[action]
    if action == "select":
        key = {"lead_status_events": "lead_id", "order_status_events": "order_id", "order_cards": "id"}.get(table, "id")
        row_id = {"customers": w.customer, "leads": w.lead, "orders": w.order, "shipments": w.shipment,
                  "tasks": w.task, "lead_status_events": w.lead, "order_status_events": w.order,
                  "order_cards": w.order}[table]
        return f"select 1 from public.{table} where {key} = %s", (row_id,)
    if table.endswith("_status_events"):
        subject = "lead_id" if table.startswith("lead") else "order_id"
        subject_id = w.lead if table.startswith("lead") else w.order
        if action == "insert":
            status = "new" if table.startswith("lead") else "pending_manager"
            return (f"insert into public.{table} (org_id, {subject}, to_status) values (%s, %s, %s)",
                    (w.org, subject_id, status))
        if action == "update":
            return f"update public.{table} set created_at = now() where {subject} = %s", (subject_id,)
        return f"delete from public.{table} where {subject} = %s", (subject_id,)
    if action == "insert":
        return {
            "customers": ("insert into public.customers (org_id, full_name, email)"
                          " values (%s, 'New', 'new@example.test')", (w.org,)),
            "leads": ("insert into public.leads (org_id, customer_id, source, assigned_to)"
                      " values (%s, %s, 'walk_in', %s)", (w.org, w.customer, w.agent)),
            "orders": ("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                       " values (%s, %s, 'listing-1', %s)", (w.org, w.customer, json.dumps(SNAPSHOT))),
            "shipments": ("insert into public.shipments (org_id, order_id, provider) values (%s, %s, 'ups')",
                          (w.org, w.order)),
            # Self-assigned (staff of the org) on the lead assigned to agent_assigned.
            "tasks": ("insert into public.tasks (org_id, lead_id, title, assignee) values (%s, %s, 'Visit', %s)",
                      (w.org, w.lead, w.users[actor] if actor in STAFF_OF_ORG else w.agent)),
        }[table]
    if action == "update":
        return {
            "customers": ("update public.customers set city = 'Berlin' where id = %s", (w.customer,)),
            "leads": ("update public.leads set notes = 'called' where id = %s", (w.lead,)),
            "orders": ("update public.orders set price_amount = 10 where id = %s", (w.order,)),
            "shipments": ("update public.shipments set tracking_number = 'T1' where id = %s", (w.shipment,)),
            "tasks": ("update public.tasks set description = 'soon' where id = %s", (w.task,)),
        }[table]
    row_id = {"customers": w.customer, "leads": w.lead, "orders": w.order, "shipments": w.shipment,
              "tasks": w.task}[table]
    return f"delete from public.{table} where id = %s", (row_id,)


@pytest.mark.parametrize(("table", "action", "actor", "expected"), CASES,
                         ids=[f"{t}-{a}-{r}" for t, a, r, _ in CASES])
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    sql, params = _statement(world, table, action, actor)
    with acting_as(world.conn, _role(actor), world.users[actor]) as c:
        if expected == "E":
            with pytest.raises(pg.InsufficientPrivilege):
                c.execute(sql, params)
            return
        cur = c.execute(sql, params)
        touched = len(cur.fetchall()) if action == "select" else cur.rowcount
    if action == "select" and table.endswith("_status_events"):
        touched = min(touched, 1)  # the seeded rows have one or more events each
    assert touched == int(expected), f"{actor} {action} on {table}"


def test_matrix_covers_every_table_and_operation_in_public(world: World) -> None:
    rows = world.conn.execute("select c.relname, c.relkind from pg_class c"
                              " where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v')").fetchall()
    wanted = {(r["relname"], action) for r in rows
              for action in (("select",) if r["relkind"] == "v" else ("select", "insert", "update", "delete"))}
    covered = (set(MATRIX) | set(PAYMENTS_MATRIX) | set(WEBHOOKS_MATRIX) | set(INTEGRATIONS_MATRIX)
               | set(SESSIONS_MATRIX) | set(WMS_MATRIX))
    assert wanted <= covered, f"without a role matrix: {sorted(wanted - covered)}"


COLUMNS_WITHOUT_GRANT = [
    ("update public.orders set order_code = 'BK-22222222' where id = %(order)s", "order_code"),
    ("update public.orders set tracking_token_hash = null where id = %(order)s", "tracking_token_hash"),
    ("update public.orders set external_item_ref = 'x' where id = %(order)s", "external_item_ref"),
    ("update public.orders set item_snapshot = item_snapshot where id = %(order)s", "item_snapshot"),
    ("update public.orders set org_id = org_id where id = %(order)s", "org_id"),
    ("update public.customers set org_id = org_id where id = %(customer)s", "org_id"),
    ("update public.customers set created_at = now() where id = %(customer)s", "created_at"),
    ("update public.leads set legacy_id = 7 where id = %(lead)s", "legacy_id"),
    ("update public.leads set customer_id = customer_id where id = %(lead)s", "customer_id"),
    ("insert into public.leads (org_id, customer_id, source, status)"
     " values (%(org)s, %(customer)s, 'manual', 'converted')", "status"),
    ("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, status)"
     " values (%(org)s, %(customer)s, 'x', '{}', 'closed')", "status"),
    ("update public.tasks set org_id = org_id where id = %(task)s", "org_id"),
]


@rls.column_cases(COLUMNS_WITHOUT_GRANT)
def test_admin_cannot_write_columns_without_grant(world: World, sql: str, column: str) -> None:
    params = {"order": world.order, "customer": world.customer, "lead": world.lead, "task": world.task,
              "org": world.org}
    rls.assert_admin_lacks_grant(world, sql, params)


def test_agent_cannot_hand_their_lead_to_someone_else(world: World) -> None:
    with pytest.raises(pg.InsufficientPrivilege, match="row-level security"):
        with acting_as(world.conn, "authenticated", world.agent) as c:
            c.execute("update public.leads set assigned_to = %s where id = %s",
                      (world.users["agent_other"], world.lead))


def test_other_org_cannot_attach_rows_to_foreign_customers(world: World) -> None:
    """The same-org foreign keys stop a manager of org B from pointing at org A's customer."""
    other = world.conn.execute("select org_id from public.staff where user_id = %s",
                               (world.users["other_org"],)).fetchone()["org_id"]
    with pytest.raises(pg.ForeignKeyViolation):
        with acting_as(world.conn, "authenticated", world.users["other_org"]) as c:
            c.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')",
                      (other, world.customer))


def test_anon_reaches_nothing_but_track_order(world: World) -> None:
    rows = world.conn.execute("""
        select c.oid::regclass::text as name from pg_class c
         where c.relnamespace in ('public'::regnamespace, 'private'::regnamespace, 'hidden'::regnamespace)
           and c.relkind in ('r', 'v', 'm', 'S')
           and (has_table_privilege('anon', c.oid, 'select, insert, update, delete, truncate, references, trigger')
                or has_any_column_privilege('anon', c.oid, 'select, insert, update, references'))
        union all
        select p.oid::regprocedure::text from pg_proc p
         where p.pronamespace in ('public'::regnamespace, 'private'::regnamespace, 'hidden'::regnamespace)
           and has_function_privilege('anon', p.oid, 'execute')""").fetchall()
    assert [r["name"] for r in rows] == ["track_order(text)"]


def test_nothing_in_private_for_api_roles(world: World) -> None:
    for role in ("anon", "authenticated"):
        with pytest.raises(pg.InsufficientPrivilege):
            with acting_as(world.conn, role, world.users["manager"] if role == "authenticated" else None) as c:
                c.execute("select count(*) from private.outbox")


@pytest.mark.parametrize("subject", ["other_lead", "order"])
def test_an_agent_adds_tasks_only_on_their_own_leads(world: World, subject: str) -> None:
    """Issue 10 finding 4: an agent could add tasks on leads not assigned to them."""
    with acting_as(world.conn, "authenticated", world.users["agent_other"]) as c:
        column, row = ("lead_id", world.lead) if subject == "other_lead" else ("order_id", world.order)
        with pytest.raises(pg.InsufficientPrivilege, match="row-level security"):
            c.execute(f"insert into public.tasks (org_id, {column}, title, assignee) values (%s, %s, 'Mine', %s)",
                      (world.org, row, world.users["agent_other"]))


def test_rls_hides_as_not_found_never_forbidden(world: World) -> None:
    """A row of another org answers 404 from the RPCs, whatever the caller's role there."""
    with pytest.raises(psycopg.Error) as hidden, acting_as(world.conn, "authenticated", world.users["other_org"]) as c:
        c.execute("select public.erase_customer(%s)", (world.customer,))
    assert hidden.value.sqlstate == "PT404"
    with pytest.raises(psycopg.Error) as seen, acting_as(world.conn, "authenticated", world.users["viewer"]) as c:
        c.execute("select public.erase_customer(%s)", (world.customer,))
    assert seen.value.sqlstate == "PT403"

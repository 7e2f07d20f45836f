"""erase_customer (SPEC 6.6): personal data goes, history stays (issue 10 finding 2)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.helpers import acting_as, make_org, make_staff

MARKER = "zyxmarker"
PHONE = "+4915100000077"


@contextlib.contextmanager
def committed_as(conn: psycopg.Connection, user: uuid.UUID) -> Iterator[psycopg.Connection]:
    """Like acting_as, but the transaction commits (what a PostgREST call does)."""
    with conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": str(user), "role": "authenticated"}),))
        yield conn


@pytest.fixture
def shop(conn):
    org = make_org(conn)
    admin, manager = make_staff(conn, org, "admin"), make_staff(conn, org, "manager")
    customer = conn.execute(
        "insert into public.customers (org_id, full_name, phone_e164, email, city, preferred_channel)"
        " values (%s, %s, %s, %s, %s, 'whatsapp') returning id",
        (org, f"Anna {MARKER.title()}", PHONE, f"{MARKER}@example.com", f"{MARKER.title()}stadt")).fetchone()["id"]
    lead = conn.execute("insert into public.leads (org_id, customer_id, source, notes, external_item_ref)"
                        " values (%s, %s, 'website_booking', %s, 'listing-1') returning id",
                        (org, customer, f"call {MARKER} after 5pm")).fetchone()["id"]
    meta = {"channel": "website", "notes": f"ring {MARKER}", "contact": {"full_name": MARKER, "phone": PHONE}}
    order = conn.execute(
        "insert into public.orders (org_id, customer_id, lead_id, external_item_ref, item_snapshot, booking_meta)"
        " values (%s, %s, %s, 'listing-1', %s, %s) returning id",
        (org, customer, lead, json.dumps({"external_ref": "listing-1", "title": "Canyon Spectral"}),
         json.dumps(meta))).fetchone()["id"]
    conn.execute("insert into public.tasks (org_id, lead_id, title, description) values (%s, %s, 'Call back', %s)",
                 (org, lead, f"{MARKER} prefers mornings"))
    with committed_as(conn, manager) as c:
        c.execute("select public.set_lead_status(%s, 'contacted', %s)", (lead, f"spoke to {MARKER}"))
        c.execute("select public.transition_order(%s, 'under_inspection', %s)", (order, f"{MARKER} agreed"))
    return {"org": org, "admin": admin, "manager": manager, "customer": customer, "lead": lead, "order": order}


def rows_holding(conn: psycopg.Connection, needle: str) -> list[str]:
    """Every table of ours (public, private, hidden) with a row whose text contains `needle`."""
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname in ('public', 'private', 'hidden') and c.relkind = 'r'").fetchall()
    found = []
    for t in tables:
        query = sql.SQL("select count(*) as n from {}.{} t where t::text ilike %s").format(
            sql.Identifier(t["nspname"]), sql.Identifier(t["relname"]))
        if conn.execute(query, (f"%{needle}%",)).fetchone()["n"]:
            found.append(f"{t['nspname']}.{t['relname']}")
    return sorted(found)


def test_an_admin_erases_personal_data_and_the_history_stays(conn, shop) -> None:
    assert "public.customers" in rows_holding(conn, MARKER)  # the marker really is planted
    events_before = conn.execute("select (select count(*) from public.lead_status_events where lead_id = %(lead)s)"
                                 " + (select count(*) from public.order_status_events where order_id = %(order)s)"
                                 " as n", shop).fetchone()["n"]
    with committed_as(conn, shop["admin"]) as c:
        erased = c.execute("select * from public.erase_customer(%s)", (shop["customer"],)).fetchone()
    assert erased["erased_at"] is not None and erased["full_name"] == "Erased customer"
    assert (erased["phone_e164"], erased["email"], erased["city"]) == (None, None, None)
    # Nothing anywhere holds the name, the email, the city, the notes or the phone any more.
    assert rows_holding(conn, MARKER) == []
    assert rows_holding(conn, PHONE.lstrip("+")) == []
    # The history stays: the lead, the order with its snapshot, every status event.
    order = conn.execute("select item_snapshot, status, customer_id from public.orders where id = %s",
                         (shop["order"],)).fetchone()
    assert (order["item_snapshot"]["title"], order["status"], order["customer_id"]) == (
        "Canyon Spectral", "under_inspection", shop["customer"])
    lead = conn.execute("select status from public.leads where id = %s", (shop["lead"],)).fetchone()
    assert lead["status"] == "contacted"
    assert conn.execute("select (select count(*) from public.lead_status_events where lead_id = %(lead)s)"
                        " + (select count(*) from public.order_status_events where order_id = %(order)s) as n",
                        shop).fetchone()["n"] == events_before
    outbox = conn.execute("select event_type, payload from private.outbox where aggregate_id = %s order by id",
                          (shop["customer"],)).fetchall()
    assert [e["event_type"] for e in outbox] == ["customer.created", "customer.erased"]
    assert outbox[-1]["payload"]["data"].keys() == {"id", "org_id", "erased_at"}

    # Erasing again changes nothing and says nothing; the erased customer cannot be changed back.
    with committed_as(conn, shop["admin"]) as c:
        c.execute("select public.erase_customer(%s)", (shop["customer"],))
    assert conn.execute("select count(*) as n from private.outbox where aggregate_id = %s"
                        " and event_type = 'customer.erased'", (shop["customer"],)).fetchone()["n"] == 1
    with pytest.raises(psycopg.Error) as refused, acting_as(conn, "authenticated", shop["manager"]) as c:
        c.execute("update public.customers set phone_e164 = %s where id = %s", (PHONE, shop["customer"]))
    assert (refused.value.sqlstate, refused.value.diag.message_detail) == ("PT409", "customer_erased")


@pytest.mark.parametrize(("who", "sqlstate"), [("manager", "PT403"), ("other_admin", "PT404"),
                                               ("anon", "42501"), ("service_role", "42501")])
def test_only_an_admin_of_the_org_erases(conn, shop, who: str, sqlstate: str) -> None:
    role, user = {"manager": ("authenticated", shop["manager"]),
                  "other_admin": ("authenticated", make_staff(conn, make_org(conn), "admin")),
                  "anon": ("anon", None), "service_role": ("service_role", None)}[who]
    with pytest.raises(psycopg.Error) as refused, acting_as(conn, role, user) as c:
        c.execute("select public.erase_customer(%s)", (shop["customer"],))
    assert refused.value.sqlstate == sqlstate
    assert conn.execute("select erased_at from public.customers where id = %s",
                        (shop["customer"],)).fetchone()["erased_at"] is None


@pytest.mark.parametrize("table", ["customers", "leads", "orders"])
@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_nobody_deletes_history_through_the_api(conn, shop, table: str, role: str) -> None:
    """Managers could delete orders and customers, the cascade wiping the status events."""
    row = shop[table.rstrip("s")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), \
            acting_as(conn, role, shop["manager"] if role == "authenticated" else None) as c:
        c.execute(sql.SQL("delete from public.{} where id = %s").format(sql.Identifier(table)), (row,))

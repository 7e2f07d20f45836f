"""Every pair of statuses for both machines (SPEC 6.4), written as a direct PATCH would write them.

Allowed: exactly one status event (who, from, to) and one outbox row. Refused: PT409 naming both
statuses and nothing written. Same status: a no-op without event. One database per module; each
case runs in a transaction that is rolled back.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from itertools import product

import psycopg
import pytest
from psycopg import errors as pg
from psycopg.rows import dict_row

from tests.helpers import make_org, make_staff

ORDER_STATUSES = ("pending_manager", "under_inspection", "deposit_paid", "paid_out", "shipped", "delivered",
                  "closed", "cancelled")
LEAD_STATUSES = ("new", "contacted", "qualified", "converted", "lost", "junk")

# SPEC 6.4, spelled out.
ORDER_ALLOWED = {
    ("pending_manager", "under_inspection"), ("under_inspection", "deposit_paid"), ("deposit_paid", "paid_out"),
    ("paid_out", "shipped"), ("shipped", "delivered"), ("delivered", "closed"),
    ("pending_manager", "cancelled"), ("under_inspection", "cancelled"), ("deposit_paid", "cancelled"),
    ("paid_out", "cancelled"), ("shipped", "cancelled"),
}
LEAD_ALLOWED = {
    ("new", "contacted"), ("contacted", "qualified"), ("qualified", "converted"),
    ("new", "lost"), ("contacted", "lost"), ("qualified", "lost"),
    ("new", "junk"), ("contacted", "junk"), ("qualified", "junk"),
    ("lost", "new"),
}

SNAPSHOT = json.dumps({"external_ref": "listing-1", "title": "Bike"})


@pytest.fixture(scope="module")
def seeded(clone_database) -> Iterator[tuple[psycopg.Connection, dict]]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org = make_org(conn)
        manager = make_staff(conn, org, "manager")
        customer = conn.execute("insert into public.customers (org_id, full_name, email)"
                                " values (%s, 'Anna', 'anna@example.test') returning id", (org,)).fetchone()["id"]
        yield conn, {"org": org, "manager": manager, "customer": customer}


def _make_row(conn: psycopg.Connection, ids: dict, kind: str, status: str) -> uuid.UUID:
    if kind == "order":
        sql = ("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, status)"
               " values (%(org)s, %(customer)s, 'listing-1', %(snapshot)s, %(status)s) returning id")
    else:
        sql = ("insert into public.leads (org_id, customer_id, source, status)"
               " values (%(org)s, %(customer)s, 'manual', %(status)s) returning id")
    return conn.execute(sql, {**ids, "snapshot": SNAPSHOT, "status": status}).fetchone()["id"]


def _written(conn: psycopg.Connection, kind: str, row_id: uuid.UUID) -> tuple[list[dict], list[dict]]:
    events = conn.execute(
        f"select from_status::text, to_status::text, changed_by from public.{kind}_status_events"
        f" where {kind}_id = %s order by id", (row_id,)).fetchall()
    outbox = conn.execute("select event_type, payload from private.outbox where aggregate_id = %s order by id",
                          (row_id,)).fetchall()
    return events, outbox


def _pairs(statuses: tuple[str, ...], allowed: set[tuple[str, str]], kind: str):
    return [pytest.param(kind, a, b, (a, b) in allowed, id=f"{kind}:{a}->{b}") for a, b in product(statuses, repeat=2)]


@pytest.mark.parametrize(("kind", "from_status", "to_status", "allowed"),
                         _pairs(ORDER_STATUSES, ORDER_ALLOWED, "order") + _pairs(LEAD_STATUSES, LEAD_ALLOWED, "lead"))
def test_every_transition(seeded, kind: str, from_status: str, to_status: str, allowed: bool) -> None:
    conn, ids = seeded
    with conn.transaction(force_rollback=True):
        row_id = _make_row(conn, ids, kind, from_status)
        events_before, outbox_before = _written(conn, kind, row_id)
        assert [(e["from_status"], e["to_status"]) for e in events_before] == [(None, from_status)]
        assert [o["event_type"] for o in outbox_before] == [f"{kind}.created"]

        conn.execute("select set_config('role', 'authenticated', true),"
                     " set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": str(ids["manager"]), "role": "authenticated"}),))
        update = f"update public.{kind}s set status = %s where id = %s"
        if from_status != to_status and not allowed:
            with pytest.raises(psycopg.Error) as refused:
                with conn.transaction():
                    conn.execute(update, (to_status, row_id))
            assert refused.value.sqlstate == "PT409"
            assert refused.value.diag.message_primary == f"{kind} cannot move from {from_status} to {to_status}"
            assert refused.value.diag.message_detail == "invalid_transition"
        else:
            assert conn.execute(update, (to_status, row_id)).rowcount == 1
        conn.execute("reset role")

        events, outbox = _written(conn, kind, row_id)
        new_events, new_outbox = events[len(events_before):], outbox[len(outbox_before):]
        status_now = conn.execute(f"select status::text from public.{kind}s where id = %s",
                                  (row_id,)).fetchone()["status"]
        if from_status == to_status or not allowed:
            assert (new_events, new_outbox, status_now) == ([], [], from_status)
            return
        assert status_now == to_status
        assert new_events == [{"from_status": from_status, "to_status": to_status, "changed_by": ids["manager"]}]
        assert [o["event_type"] for o in new_outbox] == [f"{kind}.status_changed"]
        payload = new_outbox[0]["payload"]
        assert payload["type"] == f"{kind}.status_changed"
        assert payload["data"]["from_status"] == from_status and payload["data"]["status"] == to_status
        assert payload["data"]["id"] == str(row_id)


def test_rolled_back_change_leaves_no_event_and_no_outbox_row(seeded) -> None:
    conn, ids = seeded
    order = _make_row(conn, ids, "order", "pending_manager")
    try:
        with pytest.raises(pg.DivisionByZero):
            with conn.transaction():
                conn.execute("update public.orders set status = 'under_inspection' where id = %s", (order,))
                conn.execute("select 1 / 0")
        events, outbox = _written(conn, "order", order)
        assert [e["to_status"] for e in events] == ["pending_manager"]
        assert [o["event_type"] for o in outbox] == ["order.created"]
    finally:
        conn.execute("delete from public.orders where id = %s", (order,))


_NEW_CUSTOMER = ("insert into public.customers (org_id, full_name, email)"
                 " values (%(org)s, 'Olga', 'olga@example.test') returning id")
_NEW_LEAD = ("insert into public.leads (org_id, customer_id, source)"
             " values (%(org)s, %(customer)s, 'manual') returning id")
_NEW_ORDER = ("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, currency)"
              " values (%(org)s, %(customer)s, 'listing-1', %(snapshot)s, 'EUR') returning id")
_NEW_PAYMENT = ("insert into public.payments (org_id, order_id, kind, amount, currency)"
                " values (%(org)s, %(previous)s, 'deposit', 100, 'EUR') returning id")

_NEW_PACKAGE = ("insert into public.class_packages (org_id, customer_id, credits_total)"
                " values (%(org)s, %(customer)s, 5) returning id")
_NEW_SESSION = ("insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity)"
                " values (%(org)s, 'Yoga', now() + interval '3 days', now() + interval '73 hours', 1) returning id")
_NEW_BOOKING = ("insert into public.session_bookings (org_id, session_id, customer_id)"
                " values (%(org)s, %(previous)s, %(customer)s) returning id")
_WAITLIST_ANOTHER = [  # a second customer, on the waitlist of the session %(previous)s is booked into
    "select session_id as id from public.session_bookings where id = %(previous)s",
    "with c as (insert into public.customers (org_id, full_name, email) values (%(org)s, 'Pia', 'pia@example.test')"
    " returning id) insert into public.class_packages (org_id, customer_id, credits_total)"
    " select %(org)s, c.id, 1 from c returning (select %(previous)s::uuid) as id",
    "insert into public.session_bookings (org_id, session_id, customer_id, status)"
    " select %(org)s, %(previous)s, c.id, 'waitlisted' from public.customers c where c.email = 'pia@example.test'"
    " returning id",
]

#: Every event type the outbox accepts (SPEC 6.5 and later issues): the writes that produce it, each
#: returning an id that the next may use as %(previous)s; the last one's is the event's aggregate.
EVENT_WRITES: dict[str, tuple[str, list[str]]] = {
    "customer.created": ("customer", [_NEW_CUSTOMER]),
    "customer.updated": ("customer", ["update public.customers set city = 'Hamburg' where id = %(customer)s"
                                      " returning id"]),
    # As the migrations owner (the CLI's way; admins call it through PostgREST).
    "customer.erased": ("customer", [_NEW_CUSTOMER, "select (public.erase_customer(%(previous)s)).id as id"]),
    "lead.created": ("lead", [_NEW_LEAD]),
    "lead.status_changed": ("lead", [_NEW_LEAD, "update public.leads set status = 'contacted'"
                                                " where id = %(previous)s returning id"]),
    "order.created": ("order", [_NEW_ORDER]),
    "order.status_changed": ("order", [_NEW_ORDER, "update public.orders set status = 'cancelled'"
                                                   " where id = %(previous)s returning id"]),
    "payment.recorded": ("payment", [_NEW_ORDER, _NEW_PAYMENT]),
    "payment.status_changed": ("payment", [_NEW_ORDER, _NEW_PAYMENT, "update public.payments set status = 'failed'"
                                                                     " where id = %(previous)s returning id"]),
    "session_booking.created": ("session_booking", [_NEW_PACKAGE, _NEW_SESSION, _NEW_BOOKING]),
    "session_booking.cancelled": ("session_booking", [
        _NEW_PACKAGE, _NEW_SESSION, _NEW_BOOKING,
        "update public.session_bookings set status = 'cancelled' where id = %(previous)s returning id"]),
    # The waitlisted booking is promoted when the seat holder cancels.
    "session_booking.promoted": ("session_booking", [
        _NEW_PACKAGE, _NEW_SESSION, _NEW_BOOKING, *_WAITLIST_ANOTHER,
        "update public.session_bookings b set status = 'cancelled' from public.session_bookings w"
        " where w.id = %(previous)s and b.session_id = w.session_id and b.status = 'booked' returning w.id"]),
    "class_session.cancelled": ("class_session", [
        _NEW_SESSION, "update public.class_sessions set status = 'cancelled' where id = %(previous)s returning id"]),
}
#: (from_status, status) in the data of each *.status_changed event above.
STATUS_CHANGES = {"lead.status_changed": ("new", "contacted"), "order.status_changed": ("pending_manager", "cancelled"),
                  "payment.status_changed": ("pending", "failed")}


def test_every_outbox_event_type_has_a_case(seeded) -> None:
    """The list above is the outbox's own: a new event type fails here until it gets a case below."""
    conn, _ = seeded
    definition = conn.execute("select pg_get_constraintdef(oid) as d from pg_constraint"
                              " where conname = 'outbox_event_type_known'").fetchone()["d"]
    # event_type = ANY ('{a.b,c.d}'::text[]) since 0020 (an IN list before).
    assert set(re.findall(r"[a-z_]+\.[a-z_]+", definition)) == set(EVENT_WRITES)
    assert {t for t in EVENT_WRITES if t.endswith(".status_changed")} == set(STATUS_CHANGES)


@pytest.mark.parametrize("event_type", sorted(EVENT_WRITES))
def test_outbox_rows_are_standard_webhook_bodies(seeded, event_type: str) -> None:
    conn, ids = seeded
    aggregate_type, writes = EVENT_WRITES[event_type]
    with conn.transaction(force_rollback=True):
        since = conn.execute("select coalesce(max(id), 0) as n from private.outbox").fetchone()["n"]
        aggregate_id = None
        for write in writes:
            aggregate_id = conn.execute(write, {**ids, "snapshot": SNAPSHOT, "previous": aggregate_id}
                                        ).fetchone()["id"]
        rows = conn.execute("select event_id, org_id, event_type, aggregate_type, aggregate_id, payload, created_at"
                            " from private.outbox where id > %s and event_type = %s", (since, event_type)).fetchall()
    assert len(rows) == 1, rows
    row = rows[0]
    assert isinstance(row["event_id"], uuid.UUID)
    assert (row["org_id"], row["aggregate_type"], row["aggregate_id"]) == (ids["org"], aggregate_type, aggregate_id)
    payload = row["payload"]
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == event_type
    # RFC 3339 in UTC with a Z, the transaction's time (what the receiver orders by).
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", payload["timestamp"])
    stamp = dt.datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
    assert stamp == row["created_at"]
    assert isinstance(payload["data"], dict)
    assert payload["data"]["id"] == str(aggregate_id) and payload["data"]["org_id"] == str(ids["org"])
    if event_type in STATUS_CHANGES:
        assert (payload["data"]["from_status"], payload["data"]["status"]) == STATUS_CHANGES[event_type]


def test_event_ids_are_unique_per_event(seeded) -> None:
    conn, ids = seeded
    with conn.transaction(force_rollback=True):
        order = _make_row(conn, ids, "order", "pending_manager")
        conn.execute("update public.orders set status = 'cancelled' where id = %s", (order,))
        rows = conn.execute("select event_id from private.outbox where aggregate_id = %s", (order,)).fetchall()
    assert len(rows) == 2 and len({r["event_id"] for r in rows}) == 2


def test_customer_events(seeded) -> None:
    """customer.created on insert, customer.updated on a meaningful change, nothing for a no-op."""
    conn, ids = seeded
    with conn.transaction(force_rollback=True):
        customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                                " values (%s, 'Olga', '+4915100000009') returning id", (ids["org"],)).fetchone()["id"]
        conn.execute("update public.customers set city = 'Berlin' where id = %s", (customer,))
        conn.execute("update public.customers set city = 'Berlin' where id = %s", (customer,))
        types = [r["event_type"] for r in conn.execute(
            "select event_type from private.outbox where aggregate_id = %s order by id", (customer,))]
    assert types == ["customer.created", "customer.updated"]

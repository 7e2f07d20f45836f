"""Payments, inspections and customer profiles (SPEC 6.8) through the PostgREST path: every write
is what PostgREST sends for `POST /payments` / `PATCH /payments?id=eq.…` (an INSERT/UPDATE …
RETURNING as `authenticated` with the caller's claims), inside a transaction that is rolled back.
The concurrency test commits, on a database of its own, from two connections at once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg
from psycopg.rows import dict_row

from tests.helpers import acting_as, make_org, make_staff

SNAPSHOT = json.dumps({"external_ref": "listing-1", "title": "Canyon Spectral 29"})
RECORD = ("insert into public.payments (org_id, order_id, kind, amount, status, method, currency, external_ref)"
          " values (%(org)s, %(order)s, %(kind)s, %(amount)s, %(status)s, 'card', %(currency)s, %(ref)s)"
          " returning *")
TRANSITION = "select * from public.transition_order(order_id => %(id)s, to_status => %(to)s, note => null)"


@dataclass
class World:
    conn: psycopg.Connection
    org: uuid.UUID
    users: dict[str, uuid.UUID]
    customer: uuid.UUID


def make_order(conn: psycopg.Connection, org: uuid.UUID, customer: uuid.UUID, status: str = "under_inspection",
               price: Any = 1000, currency: str | None = "EUR") -> uuid.UUID:
    order = conn.execute(
        "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, price_amount, currency)"
        " values (%s, %s, 'listing-1', %s, %s, %s) returning id", (org, customer, SNAPSHOT, price, currency)
    ).fetchone()["id"]
    path = ["under_inspection", "deposit_paid", "paid_out"]
    for step in path[: path.index(status) + 1] if status in path else []:
        conn.execute("update public.orders set status = %s where id = %s", (step, order))
    return order


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org = make_org(conn)
        users = {role: make_staff(conn, org, role) for role in ("admin", "manager", "agent", "viewer")}
        customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                                " values (%s, 'Anna Schmidt', '+4915123456789') returning id", (org,)).fetchone()["id"]
        yield World(conn, org, users, customer)


def record(c: psycopg.Connection, w: World, order: uuid.UUID, kind: str = "deposit", amount: Any = 200,
           status: str = "succeeded", currency: str | None = None, ref: str | None = None) -> dict[str, Any]:
    return c.execute(RECORD, {"org": w.org, "order": order, "kind": kind, "amount": amount, "status": status,
                              "currency": currency, "ref": ref}).fetchone()


def order_row(c: psycopg.Connection, order: uuid.UUID) -> dict[str, Any]:
    return c.execute("select * from public.orders where id = %s", (order,)).fetchone()


def outbox(c: psycopg.Connection, aggregate: uuid.UUID) -> list[dict[str, Any]]:
    c.execute("reset role")
    return [r["payload"] for r in c.execute(
        "select payload from private.outbox where aggregate_id = %s order by id", (aggregate,))]


# -- a succeeded deposit moves the order ------------------------------------------------------------
def test_succeeded_deposit_moves_the_order_with_its_event_and_outbox(world: World) -> None:
    manager = world.users["manager"]
    with acting_as(world.conn, "authenticated", manager) as c:
        order = make_order(c, world.org, world.customer)
        payment = record(c, world, order)
        moved = order_row(c, order)
        event = c.execute("select from_status, to_status, changed_by, change_notes from public.order_status_events"
                          " where order_id = %s order by id desc limit 1", (order,)).fetchone()
        cards = c.execute("select paid_amount from public.order_cards where id = %s", (order,)).fetchone()
        # The trigger's note is gone again: a later status change in this transaction has none.
        leftover = c.execute("select current_setting('crm.status_note', true) as note").fetchone()["note"]
        payment_events, order_events = outbox(c, payment["id"]), outbox(c, order)
    assert (payment["currency"], payment["recorded_by"], payment["status"]) == ("EUR", manager, "succeeded")
    assert payment["paid_at"] is not None
    assert moved["status"] == "deposit_paid"
    assert event["from_status"] == "under_inspection" and event["to_status"] == "deposit_paid"
    assert event["changed_by"] == manager
    assert str(payment["id"]) in event["change_notes"] and "deposit" in event["change_notes"]
    assert cards["paid_amount"] == 200
    [recorded] = payment_events
    assert recorded["type"] == "payment.recorded" and recorded["timestamp"].endswith("Z")
    assert recorded["data"]["id"] == str(payment["id"]) and recorded["data"]["order_id"] == str(order)
    data = recorded["data"]
    assert (data["kind"], data["amount"], data["currency"], data["status"]) == ("deposit", 200, "EUR", "succeeded")
    assert order_events[-1]["type"] == "order.status_changed"
    assert order_events[-1]["data"]["status"] == "deposit_paid"
    assert str(payment["id"]) in order_events[-1]["data"]["note"]
    assert not leftover


def test_pending_deposit_moves_the_order_when_it_succeeds(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        order = make_order(c, world.org, world.customer)
        payment = record(c, world, order, status="pending")
        still = order_row(c, order)["status"]
        updated = c.execute("update public.payments set status = 'succeeded' where id = %s returning *",
                            (payment["id"],)).fetchone()
        moved = order_row(c, order)["status"]
        events = outbox(c, payment["id"])
    assert still == "under_inspection" and moved == "deposit_paid"
    assert updated["paid_at"] is not None
    assert [e["type"] for e in events] == ["payment.recorded", "payment.status_changed"]
    assert (events[1]["data"]["from_status"], events[1]["data"]["status"]) == ("pending", "succeeded")


@pytest.mark.parametrize(("status", "kind", "payment_status"), [
    ("pending_manager", "deposit", "succeeded"),   # not under inspection yet: recorded, no move
    ("under_inspection", "balance", "succeeded"),  # only a deposit moves it
    ("under_inspection", "deposit", "failed"),
])
def test_other_payments_leave_the_order_where_it_is(world: World, status: str, kind: str,
                                                    payment_status: str) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer, status=status)
        record(c, world, order, kind=kind, status=payment_status)
        assert order_row(c, order)["status"] == status


# -- currency ---------------------------------------------------------------------------------------
def test_currency_mismatch_is_refused(world: World) -> None:
    with pytest.raises(psycopg.Error) as info:
        with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
            order = make_order(c, world.org, world.customer)
            record(c, world, order, status="pending", currency="USD")
    err = info.value
    assert (err.sqlstate, err.diag.message_detail, err.diag.message_hint) == ("PT422", "currency_mismatch", "currency")
    assert "EUR" in err.diag.message_primary


def test_order_without_currency_takes_no_payment(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer, currency=None, price=None)
        with pytest.raises(psycopg.Error) as info:
            record(c, world, order, currency="EUR")
    assert (info.value.sqlstate, info.value.diag.message_detail) == ("PT409", "order_currency_missing")


def test_order_currency_is_fixed_once_it_has_payments(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer)
        c.execute("update public.orders set currency = 'USD' where id = %s", (order,))  # no payments yet: fine
        record(c, world, order, status="pending")
        with pytest.raises(psycopg.Error) as info:
            c.execute("update public.orders set currency = 'EUR' where id = %s", (order,))
    assert (info.value.sqlstate, info.value.diag.message_detail) == ("PT409", "currency_has_payments")


# -- refunds ----------------------------------------------------------------------------------------
def test_refunds_are_capped_by_what_was_paid(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer)
        record(c, world, order, amount=200)
        record(c, world, order, kind="balance", amount=50, status="pending")  # not paid yet: no room
        record(c, world, order, kind="refund", amount=120)
        record(c, world, order, kind="refund", amount=500, status="failed")  # failed refunds do not count
        pending = record(c, world, order, kind="refund", amount=80, status="pending")  # 200 reserved in all
        with pytest.raises(psycopg.Error) as over:
            with c.transaction():
                record(c, world, order, kind="refund", amount="0.01")
        with pytest.raises(psycopg.Error) as raised:
            with c.transaction():
                c.execute("update public.payments set amount = 81 where id = %s", (pending["id"],))
        c.execute("update public.payments set status = 'succeeded' where id = %s", (pending["id"],))
        paid = c.execute("select paid_amount from public.order_cards where id = %s", (order,)).fetchone()
    for err in (over.value, raised.value):
        assert (err.sqlstate, err.diag.message_detail, err.diag.message_hint) == (
            "PT409", "refund_exceeds_paid", "amount")
    assert paid["paid_amount"] == 0


def test_a_refund_without_payments_is_refused(world: World) -> None:
    with acting_as(world.conn, "service_role") as c:
        order = make_order(c, world.org, world.customer)
        with pytest.raises(psycopg.Error) as info:
            record(c, world, order, kind="refund", amount=1)
    assert info.value.diag.message_detail == "refund_exceeds_paid"


# -- paid_out ---------------------------------------------------------------------------------------
def test_paid_out_is_refused_until_payments_cover_the_price(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer, price="1000.00")
        record(c, world, order, amount=300)
        assert order_row(c, order)["status"] == "deposit_paid"
        record(c, world, order, kind="balance", amount=700)
        record(c, world, order, kind="refund", amount="0.01")  # 999.99 paid
        for statement in (TRANSITION, "update public.orders set status = %(to)s where id = %(id)s returning *"):
            with pytest.raises(psycopg.Error) as info:
                with c.transaction():
                    c.execute(statement, {"id": order, "to": "paid_out"})
            assert (info.value.sqlstate, info.value.diag.message_detail) == ("PT409", "not_paid")
            assert "999.99 of 1000.00 EUR" in info.value.diag.message_primary
        record(c, world, order, kind="balance", amount="0.01")
        done = c.execute(TRANSITION, {"id": order, "to": "paid_out"}).fetchone()
    assert done["status"] == "paid_out"


def test_paid_out_without_a_price_needs_no_payment(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer, status="deposit_paid", price=None)
        assert c.execute(TRANSITION, {"id": order, "to": "paid_out"}).fetchone()["status"] == "paid_out"


def test_an_invalid_transition_is_still_the_machine_s_answer_when_paid(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer, status="pending_manager", price=10)
        record(c, world, order, amount=10)
        with pytest.raises(psycopg.Error) as info:
            c.execute(TRANSITION, {"id": order, "to": "paid_out"})
    assert (info.value.sqlstate, info.value.diag.message_detail) == ("PT409", "invalid_transition")


# -- amounts, settled payments, protected columns ---------------------------------------------------
@pytest.mark.parametrize(("amount", "constraint"), [
    (0, "payments_amount_positive"), (-5, "payments_amount_positive"), ("10.005", "payments_amount_cents"),
])
def test_amount_must_be_positive_with_at_most_two_decimals(world: World, amount: Any, constraint: str) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer)
        with pytest.raises(pg.CheckViolation) as info:
            record(c, world, order, amount=amount, status="pending")
    assert info.value.diag.constraint_name == constraint


def test_a_settled_payment_keeps_its_status_and_amount_but_details_can_be_corrected(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        order = make_order(c, world.org, world.customer)
        payment = record(c, world, order, kind="balance", amount=100)
        pending = record(c, world, order, kind="balance", amount=100, status="pending")
        corrected = c.execute("update public.payments set method = 'bank_transfer', external_ref = 'tr_1'"
                              " where id = %s returning method, external_ref, updated_at, created_at",
                              (payment["id"],)).fetchone()
        assert c.execute("update public.payments set amount = 90 where id = %s returning amount",
                         (pending["id"],)).fetchone()["amount"] == 90
        errors = []
        for change in ("status = 'failed'", "status = 'pending'", "amount = 99"):
            with pytest.raises(psycopg.Error) as info:
                with c.transaction():
                    c.execute(f"update public.payments set {change} where id = %s", (payment["id"],))
            errors.append((info.value.sqlstate, info.value.diag.message_detail))
    assert (corrected["method"], corrected["external_ref"]) == ("bank_transfer", "tr_1")
    assert errors == [("PT409", "invalid_transition"), ("PT409", "invalid_transition"), ("PT409", "payment_settled")]


@pytest.mark.parametrize("column", ["org_id", "order_id", "kind", "currency", "recorded_by"])
def test_payment_columns_are_protected_even_for_the_service_role(world: World, column: str) -> None:
    value = {"org_id": "gen_random_uuid()", "order_id": "gen_random_uuid()", "kind": "'refund'",
             "currency": "'USD'", "recorded_by": "null"}[column]
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        order = make_order(c, world.org, world.customer)
        payment = record(c, world, order, status="pending")
        c.execute("select set_config('role', 'service_role', true)")
        with pytest.raises(psycopg.Error) as info:
            c.execute(f"update public.payments set {column} = {value} where id = %s", (payment["id"],))
    assert (info.value.sqlstate, info.value.diag.message_detail, info.value.diag.message_hint) == (
        "PT422", "immutable_column", column)


def test_external_ref_is_unique_per_organization(world: World) -> None:
    with acting_as(world.conn, "service_role") as c:
        other_org = make_org(c)
        other_customer = c.execute("insert into public.customers (org_id, full_name, email) values (%s, 'B',"
                                   " 'b@example.test') returning id", (other_org,)).fetchone()["id"]
        order = make_order(c, world.org, world.customer)
        other_order = make_order(c, other_org, other_customer)
        record(c, world, order, status="pending", ref="pi_123")
        c.execute(RECORD, {"org": other_org, "order": other_order, "kind": "deposit", "amount": 1,
                           "status": "pending", "currency": None, "ref": "pi_123"})
        with pytest.raises(pg.UniqueViolation) as info:
            record(c, world, order, status="pending", ref="pi_123")
    assert info.value.diag.constraint_name == "payments_org_external_ref_key"


def test_service_writer_may_name_who_recorded_a_payment(world: World) -> None:
    with acting_as(world.conn, "service_role") as c:
        order = make_order(c, world.org, world.customer)
        row = c.execute("insert into public.payments (org_id, order_id, kind, amount, recorded_by)"
                        " values (%s, %s, 'deposit', 5, %s) returning recorded_by, currency, status",
                        (world.org, order, world.users["admin"])).fetchone()
    assert row == {"recorded_by": world.users["admin"], "currency": "EUR", "status": "pending"}


# -- inspections ------------------------------------------------------------------------------------
def test_manager_records_and_corrects_an_inspection(world: World) -> None:
    manager = world.users["manager"]
    with acting_as(world.conn, "authenticated", manager) as c:
        order = make_order(c, world.org, world.customer)
        row = c.execute("insert into public.inspections (org_id, order_id, checklist, next_action)"
                        " values (%s, %s, '{\"frame\": \"ok\", \"brakes\": \"worn\"}', 'ask for photos')"
                        " returning *", (world.org, order)).fetchone()
        fixed = c.execute("update public.inspections set stage = 'final', photos_status = 'verified'"
                          " where id = %s returning *", (row["id"],)).fetchone()
        with pytest.raises(pg.CheckViolation) as not_object:
            with c.transaction():
                c.execute("update public.inspections set checklist = '[1]' where id = %s", (row["id"],))
        c.execute("select set_config('role', 'service_role', true)")
        with pytest.raises(psycopg.Error) as moved:
            c.execute("update public.inspections set order_id = gen_random_uuid() where id = %s", (row["id"],))
    assert (row["stage"], row["photos_status"], row["inspected_by"]) == ("initial", "none", manager)
    assert (fixed["stage"], fixed["photos_status"], fixed["inspected_by"]) == ("final", "verified", manager)
    assert fixed["updated_at"] >= row["updated_at"]
    assert not_object.value.diag.constraint_name == "inspections_checklist_object"
    assert (moved.value.sqlstate, moved.value.diag.message_hint) == ("PT422", "order_id")


# -- customer_profiles ------------------------------------------------------------------------------
def test_customer_profile_figures_come_from_the_database(world: World) -> None:
    with acting_as(world.conn, "service_role") as c:
        customer = c.execute("insert into public.customers (org_id, full_name, email) values (%s, 'Olga',"
                             " 'olga@example.test') returning id", (world.org,)).fetchone()["id"]
        for status in ("new", "qualified", "lost", "converted"):
            c.execute("insert into public.leads (org_id, customer_id, source, status) values (%s, %s, 'manual', %s)",
                      (world.org, customer, status))
        first = make_order(c, world.org, customer)
        second = make_order(c, world.org, customer, status="pending_manager")
        c.execute("update public.orders set status = 'cancelled' where id = %s", (second,))
        last = make_order(c, world.org, customer, status="pending_manager")
        record(c, world, first, amount=300)
        record(c, world, first, kind="balance", amount="200.50")
        record(c, world, first, kind="balance", amount=999, status="pending")
        record(c, world, first, kind="refund", amount="50.25")
        c.execute("reset role")  # the warehouse cache has no API writer yet
        c.execute("insert into public.wms_orders (org_id, wms_order_id, crm_customer_id, status)"
                  " select %s, 'W-' || n, %s, 'shipped' from generate_series(1, 3) n", (world.org, customer))
        c.execute("insert into public.wms_orders (org_id, wms_order_id, crm_customer_id, status)"
                  " values (%s, 'W-other', gen_random_uuid(), 'shipped')", (world.org,))
        last_at = order_row(c, last)["created_at"]
        c.execute("select set_config('role', 'authenticated', true),"
                  " set_config('request.jwt.claims', %s, true)",
                  (json.dumps({"sub": str(world.users["viewer"]), "role": "authenticated"}),))
        profile = c.execute("select * from public.customer_profiles where id = %s", (customer,)).fetchone()
        # A second currency: the single figure would add euros to dollars, so it says "several".
        c.execute("select set_config('role', 'service_role', true)")
        dollars = make_order(c, world.org, customer, currency="USD")
        record(c, world, dollars, amount=10)
        mixed = c.execute("select total_spent, total_spent_currency, total_spent_by_currency"
                          " from public.customer_profiles where id = %s", (customer,)).fetchone()
        empty = c.execute("select total_orders, total_spent, total_spent_currency, last_order_at, open_leads,"
                          " wms_total_orders from public.customer_profiles where id = %s", (world.customer,)
                          ).fetchone()
    assert profile["total_orders"] == 3 and profile["open_orders"] == 2
    assert profile["total_spent"] == Decimal("450.25") and profile["total_spent_currency"] == "EUR"
    assert profile["last_order_at"] == last_at
    assert profile["open_leads"] == 2 and profile["wms_total_orders"] == 3
    assert profile["full_name"] == "Olga"
    assert mixed["total_spent"] is None and mixed["total_spent_currency"] is None
    assert {k: float(v) for k, v in mixed["total_spent_by_currency"].items()} == {"EUR": 450.25, "USD": 10.0}
    assert empty["total_spent"] == 0 and empty["total_spent_currency"] is None
    assert empty["wms_total_orders"] == 0


# -- concurrency ------------------------------------------------------------------------------------
def test_two_deposits_at_once_are_both_recorded_and_move_the_order_once(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as setup:
        org = make_org(setup)
        manager = make_staff(setup, org, "manager")
        customer = setup.execute("insert into public.customers (org_id, full_name, phone_e164)"
                                 " values (%s, 'Anna', '+4915100000009') returning id", (org,)).fetchone()["id"]
        order = make_order(setup, org, customer)
        claims = json.dumps({"sub": str(manager), "role": "authenticated", "aud": "authenticated"})
        first_in = threading.Event()
        release = threading.Event()
        results: dict[str, Any] = {}

        def deposit(name: str, hold: bool) -> None:
            try:
                with psycopg.connect(db_url, row_factory=dict_row) as c:  # one transaction, committed on exit
                    c.execute("select set_config('role', 'authenticated', true),"
                              " set_config('request.jwt.claims', %s, true)", (claims,))
                    c.execute("select set_config('application_name', %s, false)", (name,))
                    row = c.execute(RECORD, {"org": org, "order": order, "kind": "deposit", "amount": 100,
                                             "status": "succeeded", "currency": None, "ref": name}).fetchone()
                    if hold:
                        first_in.set()
                        release.wait(20)
                    results[name] = row["id"]
            except Exception as exc:  # reported by the assertion below
                results[name] = exc

        first = threading.Thread(target=deposit, args=("first", True))
        second = threading.Thread(target=deposit, args=("second", False))
        first.start()
        assert first_in.wait(20)
        second.start()
        # The second deposit waits on the order's row lock while the first is open.
        deadline = time.monotonic() + 20
        while not setup.execute("select exists (select from pg_stat_activity where application_name = 'second'"
                                " and wait_event_type = 'Lock') as waiting").fetchone()["waiting"]:
            assert time.monotonic() < deadline, "the second deposit never waited for the first"
            time.sleep(0.05)
        release.set()
        first.join(30)
        second.join(30)
        assert all(isinstance(v, uuid.UUID) for v in results.values()), results
        payments = setup.execute("select count(*) as n, sum(amount) as total from public.payments"
                                 " where order_id = %s and status = 'succeeded'", (order,)).fetchone()
        events = setup.execute("select count(*) as n from public.order_status_events"
                               " where order_id = %s and to_status = 'deposit_paid'", (order,)).fetchone()
        changed = setup.execute("select count(*) as n from private.outbox where aggregate_id = %s"
                                " and event_type = 'order.status_changed'"
                                " and payload -> 'data' ->> 'status' = 'deposit_paid'", (order,)).fetchone()
        status = setup.execute("select status from public.orders where id = %s", (order,)).fetchone()["status"]
    assert (payments["n"], payments["total"]) == (2, 200)
    assert status == "deposit_paid"
    assert events["n"] == 1 and changed["n"] == 1

"""Constraints users rely on (SPEC 6.3, 7.2): checked as the owner, one rolled-back transaction each."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg
from psycopg.rows import dict_row

from tests.helpers import acting_as, make_org, make_staff

VALID_SNAPSHOT = {
    "item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
    "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022, "size": "L",
    "price": 2450, "currency": "EUR", "main_photo_url": "https://img.example/4711/1.jpg",
    "images": ["https://img.example/4711/1.jpg"], "cached_images": [], "images_state": "pending",
}


@pytest.fixture(scope="module")
def db(clone_database) -> Iterator[tuple[psycopg.Connection, dict[str, uuid.UUID]]]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org, other = make_org(conn), make_org(conn)
        customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164, email)"
                                " values (%s, 'Anna', '+4915100000001', 'anna@example.com') returning id",
                                (org,)).fetchone()["id"]
        lead = conn.execute("insert into public.leads (org_id, customer_id, source, external_item_ref)"
                            " values (%s, %s, 'manual', 'listing-1') returning id", (org, customer)).fetchone()["id"]
        order = conn.execute("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                             " values (%s, %s, 'listing-4711', %s) returning id",
                             (org, customer, json.dumps(VALID_SNAPSHOT))).fetchone()["id"]
        yield conn, {"org": org, "other": other, "customer": customer, "lead": lead, "order": order}


def run(db, sql: str, **params: Any) -> list[dict]:
    conn, ids = db
    with conn.transaction(force_rollback=True):
        cur = conn.execute(sql, {**ids, **params})
        return cur.fetchall() if cur.description else []


def fails(db, sql: str, error: type[psycopg.Error] = psycopg.Error, **params: Any) -> psycopg.Error:
    with pytest.raises(error) as info:
        run(db, sql, **params)
    return info.value


INSERT_CUSTOMER = ("insert into public.customers (org_id, full_name, phone_e164, email, preferred_channel)"
                   " values (%(org)s, 'Bob', %(phone)s, %(email)s, %(channel)s) returning email")


@pytest.mark.parametrize(("phone", "email", "channel", "constraint"), [
    ("+491510000000x", None, None, "customers_phone_e164_format"),
    ("0151 2345678", None, None, "customers_phone_e164_format"),
    ("+0151234567", None, None, "customers_phone_e164_format"),
    ("+1234567890123456", None, None, "customers_phone_e164_format"),
    (None, None, None, "customers_contact_required"),
    (None, "not-an-email", None, "customers_email_format"),
    ("+4915100000002", None, "pigeon", "customers_preferred_channel_known"),
])
def test_customer_checks(db, phone, email, channel, constraint) -> None:
    err = fails(db, INSERT_CUSTOMER, pg.CheckViolation, phone=phone, email=email, channel=channel)
    assert err.diag.constraint_name == constraint


def test_customer_email_is_stored_lower_case_and_trimmed(db) -> None:
    rows = run(db, INSERT_CUSTOMER, phone=None, email="  Bob@Example.COM ", channel="email")
    assert rows == [{"email": "bob@example.com"}]


@pytest.mark.parametrize(("phone", "email", "constraint"), [
    ("+4915100000001", None, "customers_org_phone_key"),
    (None, "ANNA@example.com", "customers_org_email_key"),
])
def test_customer_phone_and_email_unique_per_org(db, phone, email, constraint) -> None:
    err = fails(db, INSERT_CUSTOMER, pg.UniqueViolation, phone=phone, email=email, channel=None)
    assert err.diag.constraint_name == constraint
    # The same contact in another organization is a different customer.
    assert run(db, INSERT_CUSTOMER.replace("%(org)s", "%(other)s"), phone=phone, email=email, channel=None)


INSERT_ORDER = ("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, currency,"
                " price_amount, booking_amount, exchange_rate, delivery_method)"
                " values (%(org)s, %(customer)s, 'listing-4711', %(snapshot)s, %(currency)s, %(price)s, %(booking)s,"
                " %(rate)s, %(delivery)s) returning order_code")


def _order(**overrides: Any) -> dict[str, Any]:
    values = {"snapshot": json.dumps(VALID_SNAPSHOT), "currency": "EUR", "price": 2450, "booking": 100,
              "rate": 1.1, "delivery": "pickup"}
    return {**values, **overrides}


def test_valid_order_gets_a_human_friendly_code(db) -> None:
    code = run(db, INSERT_ORDER, **_order())[0]["order_code"]
    assert re.fullmatch(r"BK-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}", code)


@pytest.mark.parametrize(("overrides", "constraint"), [
    ({"currency": "eur"}, "orders_currency_iso4217"),
    ({"currency": "ABC"}, "orders_currency_iso4217"),
    ({"currency": "EURO"}, "orders_currency_iso4217"),
    ({"price": -1}, "orders_price_amount_nonnegative"),
    ({"booking": -0.01}, "orders_booking_amount_nonnegative"),
    ({"rate": 0}, "orders_exchange_rate_positive"),
    ({"delivery": "drone"}, "orders_delivery_method_known"),
])
def test_order_checks(db, overrides, constraint) -> None:
    err = fails(db, INSERT_ORDER, pg.CheckViolation, **_order(**overrides))
    assert err.diag.constraint_name == constraint


def _without(key: str) -> dict:
    return {k: v for k, v in VALID_SNAPSHOT.items() if k != key}


@pytest.mark.parametrize("snapshot", [
    "not an object",
    _without("title"),
    _without("external_ref"),
    {**VALID_SNAPSHOT, "title": "   "},
    {**VALID_SNAPSHOT, "url": "javascript:alert(1)"},
    {**VALID_SNAPSHOT, "url": "ftp://listings.example/1"},
    {**VALID_SNAPSHOT, "year": 2022.5},
    {**VALID_SNAPSHOT, "year": "2022"},
    {**VALID_SNAPSHOT, "price": "2450"},
    {**VALID_SNAPSHOT, "brand": 7},
    {**VALID_SNAPSHOT, "images": "https://img.example/1.jpg"},
    {**VALID_SNAPSHOT, "images": ["file:///etc/passwd"]},
    {**VALID_SNAPSHOT, "images": [f"https://img.example/{i}.jpg" for i in range(21)]},
    {**VALID_SNAPSHOT, "cached_images": [1]},
    {**VALID_SNAPSHOT, "images_state": "done"},
    # The intake's rules, for every writer (issue 10 finding 1).
    {**VALID_SNAPSHOT, "main_photo_url": "javascript:alert(1)"},
    {**VALID_SNAPSHOT, "main_photo_url": "data:text/html,<script>alert(1)</script>"},
    {**VALID_SNAPSHOT, "url": "https://listings.example/" + "a" * 2048},
    {**VALID_SNAPSHOT, "images": ["https://img.example/" + "a" * 2048]},
    {**VALID_SNAPSHOT, "title": "x" * 1_000_000},
    {**VALID_SNAPSHOT, "title": "x" * 301},
    {**VALID_SNAPSHOT, "brand": "b" * 101},
    {**VALID_SNAPSHOT, "size": "s" * 21},
    {**VALID_SNAPSHOT, "item_id": "i" * 101},
    {**VALID_SNAPSHOT, "title": "Bike \u202egnp.exe"},
    {**VALID_SNAPSHOT, "title": "\u200b\u200b"},
    {**VALID_SNAPSHOT, "title": "  Canyon   Spectral "},
    {**VALID_SNAPSHOT, "model": "a\u0085b"},
    {**VALID_SNAPSHOT, "price": 2450.005},
    {**VALID_SNAPSHOT, "price": -1},
    {**VALID_SNAPSHOT, "currency": "XYZ"},
    {**VALID_SNAPSHOT, "year": 99999},
    {**VALID_SNAPSHOT, "padding": "x" * 1_000_000},
    {**VALID_SNAPSHOT, "cached_images": ["x" * 2049]},
])
def test_item_snapshot_shape_is_checked(db, snapshot) -> None:
    err = fails(db, INSERT_ORDER, pg.CheckViolation, **_order(snapshot=json.dumps(snapshot)))
    assert err.diag.constraint_name == "orders_item_snapshot_shape"


@pytest.mark.parametrize("ref", ["listing-4711 ", "other-listing", "l" * 1_000_000])
def test_snapshot_external_ref_is_the_orders_external_item_ref(db, ref) -> None:
    """A writer could store an external_ref other than the order's external_item_ref, or 1 MB of it."""
    err = fails(db, INSERT_ORDER, pg.CheckViolation, **_order(snapshot=json.dumps({**VALID_SNAPSHOT,
                                                                                   "external_ref": ref})))
    assert err.diag.constraint_name == "orders_item_snapshot_shape"


def test_a_manager_through_postgrest_gets_the_same_check(db) -> None:
    conn, ids = db
    manager = make_staff(conn, ids["org"], "manager")
    bad = {**VALID_SNAPSHOT, "main_photo_url": "javascript:alert(1)"}
    with pytest.raises(pg.CheckViolation) as info, acting_as(conn, "authenticated", manager) as c:
        c.execute(INSERT_ORDER, {**ids, **_order(snapshot=json.dumps(bad))})
    assert info.value.diag.constraint_name == "orders_item_snapshot_shape"


@pytest.mark.parametrize(("column", "value"), [("price", 2450.005), ("booking", "99.999")])
def test_money_with_more_than_cents_is_refused_not_rounded(db, column, value) -> None:
    err = fails(db, INSERT_ORDER, **_order(**{column: value}))
    field = {"price": "price_amount", "booking": "booking_amount"}[column]
    assert (err.sqlstate, err.diag.message_detail, err.diag.message_hint) == ("PT422", "too_many_decimals", field)


def test_money_is_stored_at_cents(db) -> None:
    rows = run(db, INSERT_ORDER.replace("returning order_code", "returning price_amount::text as p,"
                                        " booking_amount::text as b"), **_order(price=2450, booking="99.9"))
    assert rows == [{"p": "2450.00", "b": "99.90"}]


@pytest.mark.parametrize("snapshot", [
    {"external_ref": "listing-4711", "title": "Minimal"},
    {**VALID_SNAPSHOT, "url": None, "year": None, "price": 12.5, "images": [], "images_state": "none"},
    {**VALID_SNAPSHOT, "images": [f"https://img.example/{i}.jpg" for i in range(20)]},
])
def test_item_snapshot_variants_accepted(db, snapshot) -> None:
    assert run(db, INSERT_ORDER, **_order(snapshot=json.dumps(snapshot)))


@pytest.mark.parametrize(("sql", "field"), [
    ("update public.orders set org_id = %(other)s where id = %(order)s", "org_id"),
    ("update public.orders set external_item_ref = 'other' where id = %(order)s", "external_item_ref"),
    ("update public.orders set item_snapshot = item_snapshot || '{\"title\": \"Cheaper bike\"}' where id = %(order)s",
     "item_snapshot"),
    ("update public.orders set item_snapshot = item_snapshot - 'images' where id = %(order)s", "item_snapshot"),
    ("update public.leads set external_item_ref = 'other' where id = %(lead)s", "external_item_ref"),
    ("update public.leads set org_id = %(other)s where id = %(lead)s", "org_id"),
    ("update public.customers set org_id = %(other)s where id = %(customer)s", "org_id"),
])
def test_protected_columns_even_for_the_owner(db, sql: str, field: str) -> None:
    err = fails(db, sql)
    assert (err.sqlstate, err.diag.message_detail, err.diag.message_hint) == ("PT422", "immutable_column", field)


def test_image_cache_may_write_cached_images(db) -> None:
    rows = run(db, "update public.orders set item_snapshot = item_snapshot"
                   " || '{\"cached_images\": [\"/media/a.jpg\"], \"images_state\": \"cached\"}'"
                   " where id = %(order)s returning item_snapshot -> 'cached_images' ->> 0 as first")
    assert rows == [{"first": "/media/a.jpg"}]


def test_lead_external_item_ref_may_be_set_once(db) -> None:
    conn, ids = db
    with conn.transaction(force_rollback=True):
        lead = conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'phone_call')"
                            " returning id", (ids["org"], ids["customer"])).fetchone()["id"]
        conn.execute("update public.leads set external_item_ref = 'listing-9' where id = %s", (lead,))
        with pytest.raises(psycopg.Error, match="cannot be changed"), conn.transaction():
            conn.execute("update public.leads set external_item_ref = 'listing-10' where id = %s", (lead,))


def test_updated_at_moves_only_on_a_real_change(db) -> None:
    conn, ids = db
    with conn.transaction(force_rollback=True):
        # Age the row without triggers (as the table's owner: Supabase's postgres may not set
        # session_replication_role, a superuser setting).
        conn.execute("alter table public.orders disable trigger user")
        conn.execute("update public.orders set updated_at = '2000-01-01' where id = %s", (ids["order"],))
        conn.execute("alter table public.orders enable trigger user")
        conn.execute("update public.orders set price_amount = price_amount where id = %s", (ids["order"],))
        same = conn.execute("select updated_at from public.orders where id = %s", (ids["order"],)).fetchone()
        conn.execute("update public.orders set price_amount = 5 where id = %s", (ids["order"],))
        moved = conn.execute("select updated_at from public.orders where id = %s", (ids["order"],)).fetchone()
    assert same["updated_at"].year == 2000 and moved["updated_at"].year > 2000


@pytest.mark.parametrize(("subject", "constraint"), [
    ("order_id, lead_id", "tasks_one_subject"),
    ("", "tasks_one_subject"),
])
def test_task_has_exactly_one_subject(db, subject: str, constraint: str) -> None:
    values = {"order_id, lead_id": ", %(order)s, %(lead)s", "": ""}[subject]
    columns = f", {subject}" if subject else ""
    err = fails(db, f"insert into public.tasks (org_id, title{columns}) values (%(org)s, 'x'{values})",
                pg.CheckViolation)
    assert err.diag.constraint_name == constraint


def test_tracking_token_hash_is_a_sha256(db) -> None:
    err = fails(db, "update public.orders set tracking_token_hash = '\\x00' where id = %(order)s", pg.CheckViolation)
    assert err.diag.constraint_name == "orders_tracking_token_hash_sha256"


def test_deleting_a_lead_keeps_its_order(db) -> None:
    conn, ids = db
    with conn.transaction(force_rollback=True):
        lead = conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')"
                            " returning id", (ids["org"], ids["customer"])).fetchone()["id"]
        conn.execute("update public.orders set lead_id = %s where id = %s", (lead, ids["order"]))
        conn.execute("delete from public.leads where id = %s", (lead,))
        row = conn.execute("select org_id, lead_id from public.orders where id = %s", (ids["order"],)).fetchone()
    assert row == {"org_id": ids["org"], "lead_id": None}

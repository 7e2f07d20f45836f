"""`public.create_booking` and its private state, called as PostgREST and the function call them."""

import hashlib
import json
import secrets
import uuid

import psycopg
import pytest

from crm.booking import intake as booking
from crm.jobs import REGISTRY
from tests.helpers import acting_as, make_org

CALL = """
select * from public.create_booking(
  p_org => %(org)s, p_order_id => %(order_id)s, p_customer => %(customer)s::jsonb,
  p_item_snapshot => %(snapshot)s::jsonb,
  p_tracking_token_hash => %(hash)s, p_idempotency_key => %(key)s, p_request_hash => %(request_hash)s,
  p_client => %(client)s::inet, p_rate_limit => %(limit)s, p_rate_window_seconds => %(window)s)
"""


def call(conn, org, *, phone="+4915123456789", email=None, key=None, request=b"r", client="192.0.2.1/32",
         limit=0, window=600, role="service_role"):
    params = {
        "org": str(org), "order_id": uuid.uuid4(),
        "customer": json.dumps({"full_name": "Anna", "phone": phone, "email": email}),
        "snapshot": json.dumps({"external_ref": "ref-1", "title": "Bike", "images": [], "cached_images": [],
                                "images_state": "none"}),
        "hash": hashlib.sha256(secrets.token_bytes(16)).digest(),
        "key": key,
        "request_hash": hashlib.sha256(request).digest(),
        "client": client, "limit": limit, "window": window,
    }
    with acting_as(conn, role) as c:
        return c.execute(CALL, params).fetchone()


def commit_call(conn, org, **kw):
    """Like `call`, but committed (acting_as rolls back): as service_role in a real transaction."""
    with conn.transaction():
        conn.execute("set local role service_role")
        params = {
            "org": str(org), "order_id": kw.get("order_id", uuid.uuid4()),
            "customer": json.dumps({"full_name": "Anna", "phone": kw.get("phone", "+4915123456789"),
                                    "email": kw.get("email")}),
            "snapshot": json.dumps({"external_ref": "ref-1", "title": "Bike"}),
            "hash": kw.get("hash", hashlib.sha256(secrets.token_bytes(16)).digest()),
            "key": kw.get("key"),
            "request_hash": hashlib.sha256(kw.get("request", b"r")).digest(),
            "client": kw.get("client", "192.0.2.1/32"), "limit": kw.get("limit", 0),
            "window": kw.get("window", 600),
        }
        return conn.execute(CALL, params).fetchone()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_call_create_booking(conn, role):
    org = make_org(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(conn, org, role=role)


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_private_booking_state_is_unreachable_for_api_roles(conn, role):
    for table in ("booking_secrets", "idempotency_keys", "booking_rate_counters"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role) as c:
            c.execute(f"select * from private.{table}")


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_service_role_reads_the_org_and_token_key(conn, role):
    org = make_org(conn)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role) as c:
        c.execute("select * from private.booking_org(%s, null)", (org,))
    with acting_as(conn, "service_role") as c:
        row = c.execute("select * from private.booking_org(%s, null)", (org,)).fetchone()
    assert row["id"] == org and row["default_country"] == "DE" and len(bytes(row["token_secret"])) == 32


def test_functions_are_pinned_and_definer_only_where_needed(conn):
    rows = conn.execute("""
        select p.proname, p.prosecdef, p.proconfig, p.provolatile
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where (n.nspname, p.proname) in (('public', 'create_booking'), ('private', 'booking_org'),
                                          ('private', 'purge_booking_state'))""").fetchall()
    assert {r["proname"]: r["prosecdef"] for r in rows} == {
        "create_booking": True, "booking_org": True, "purge_booking_state": True}
    assert all(r["proconfig"] == ["search_path=\"\""] or r["proconfig"] == ["search_path=''"] for r in rows), rows


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_service_role_may_purge(conn, role):
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role) as c:
        c.execute("select * from private.purge_booking_state()")
    with acting_as(conn, "service_role") as c:
        assert c.execute("select * from private.purge_booking_state()").fetchone() == {
            "idempotency_keys": 0, "rate_counters": 0}


def test_the_order_gets_the_given_id_and_token_hash(conn):
    org = make_org(conn)
    order = uuid.uuid4()
    row = commit_call(conn, org, order_id=order, hash=b"h" * 32)
    assert row["order_id"] == order
    assert bytes(conn.execute("select tracking_token_hash from public.orders where id = %s",
                              (order,)).fetchone()["tracking_token_hash"]) == b"h" * 32
    with pytest.raises(psycopg.Error) as exc:
        commit_call(conn, org, order_id=None)
    assert exc.value.sqlstate == "PT422" and exc.value.diag.message_detail == "order_id_missing"


def test_unknown_org_is_pt404(conn):
    with pytest.raises(psycopg.Error) as exc:
        call(conn, "nobody")
    assert exc.value.sqlstate == "PT404"
    with pytest.raises(psycopg.Error) as exc:
        call(conn, uuid.uuid4())
    assert exc.value.sqlstate == "PT404"


def test_customer_found_by_phone_then_email(conn):
    org = make_org(conn)
    first = commit_call(conn, org, phone="+4915111111111", email="a@example.com")
    by_phone = commit_call(conn, org, phone="+4915111111111", email="other@example.com")
    by_email = commit_call(conn, org, phone="+4915122222222", email="a@example.com")
    new = commit_call(conn, org, phone="+4915133333333", email=None)
    assert first["customer_id"] == by_phone["customer_id"] == by_email["customer_id"]
    assert new["customer_id"] != first["customer_id"]
    # Another organization's customer with the same phone is another customer.
    assert commit_call(conn, make_org(conn), phone="+4915111111111")["customer_id"] != first["customer_id"]


def test_order_codes_are_unique_and_friendly(conn):
    org = make_org(conn)
    codes = {commit_call(conn, org)["order_code"] for _ in range(30)}
    assert len(codes) == 30
    assert all(len(c) == 11 and c.startswith("BK-") and not set(c[3:]) & set("01ILO") for c in codes)


def test_same_key_other_body_is_pt422_and_same_body_replays(conn):
    org = make_org(conn)
    first = commit_call(conn, org, key="k1", request=b"one")
    assert first["replayed"] is False
    replay = commit_call(conn, org, key="k1", request=b"one")
    assert replay["replayed"] is True
    assert {k: replay[k] for k in ("order_id", "order_code", "status", "lead_id", "customer_id")} == {
        k: first[k] for k in ("order_id", "order_code", "status", "lead_id", "customer_id")}
    with pytest.raises(psycopg.Error) as exc:
        commit_call(conn, org, key="k1", request=b"two")
    assert exc.value.sqlstate == "PT422" and exc.value.diag.message_hint == "Idempotency-Key"


def test_replay_answers_the_first_lead_after_the_order_moved_and_reads_keys_written_before_0020(conn):
    org = make_org(conn)
    first = commit_call(conn, org, key="k1", request=b"one")
    stored = conn.execute("select response from private.idempotency_keys where key = 'k1'").fetchone()["response"]
    assert stored == {"order_id": str(first["order_id"]), "status": "pending_manager", "lead_id": str(first["lead_id"])}
    # The order's lead may change afterwards (lead_id is updatable): the replay answers the first one.
    lead = conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')"
                        " returning id", (org, first["customer_id"])).fetchone()["id"]
    conn.execute("update public.orders set lead_id = %s where id = %s", (lead, first["order_id"]))
    replay = commit_call(conn, org, key="k1", request=b"one")
    assert (replay["lead_id"], replay["order_code"], replay["customer_id"], replay["replayed"]) == (
        first["lead_id"], first["order_code"], first["customer_id"], True)
    # A key written before 0020 holds the whole response; it is answered as stored.
    conn.execute("update private.idempotency_keys set response = response || jsonb_build_object("
                 "'order_code', 'BK-OLDFORM2', 'customer_id', %s::text) where key = 'k1'", (uuid.uuid4(),))
    legacy = commit_call(conn, org, key="k1", request=b"one")
    assert legacy["order_code"] == "BK-OLDFORM2" and legacy["customer_id"] != first["customer_id"]


def test_key_is_kept_a_day_then_claimed_afresh(conn):
    org = make_org(conn)
    old = commit_call(conn, org, key="old", request=b"one")
    conn.execute("update private.idempotency_keys set created_at = now() - interval '23 hours'")
    assert commit_call(conn, org, key="old", request=b"one")["replayed"] is True
    conn.execute("update private.idempotency_keys set created_at = now() - interval '25 hours'")
    renewed = commit_call(conn, org, key="old", request=b"two")
    assert renewed["replayed"] is False and renewed["order_id"] != old["order_id"]
    assert commit_call(conn, org, key="old", request=b"two")["order_id"] == renewed["order_id"]


def test_purge_job(conn, database):
    org = make_org(conn)
    commit_call(conn, org, key="stale")
    commit_call(conn, org, key="fresh", limit=5)
    conn.execute("update private.idempotency_keys set created_at = now() - interval '25 hours' where key = 'stale'")
    conn.execute("insert into private.booking_rate_counters values ('192.0.2.9/32', now() - interval '3 days', 1)")
    assert REGISTRY["purge-booking-state"].fn is booking.purge_booking_state
    summary = booking.purge_booking_state(database, {})
    assert summary == {"job": "purge-booking-state", "idempotency_keys": 1, "rate_counters": 1}
    assert [r["key"] for r in conn.execute("select key from private.idempotency_keys")] == ["fresh"]
    assert conn.execute("select count(*) as n from private.booking_rate_counters").fetchone()["n"] == 1


def test_rate_limit_counts_bookings_not_refusals(conn):
    org = make_org(conn)
    for _ in range(2):
        commit_call(conn, org, limit=2, window=3600)
    for _ in range(3):
        with pytest.raises(psycopg.Error) as exc:
            commit_call(conn, org, limit=2, window=3600)
        assert exc.value.sqlstate == "PT429" and exc.value.diag.message_detail == "rate_limited"
        assert 1 <= int(exc.value.diag.message_hint) <= 3600
    assert conn.execute("select hits from private.booking_rate_counters").fetchone()["hits"] == 2
    # Another network is not affected; a limit of 0 is no limit.
    commit_call(conn, org, limit=2, window=3600, client="192.0.2.2/32")
    commit_call(conn, org, limit=0)
    assert conn.execute("select count(*) as n from public.orders").fetchone()["n"] == 4

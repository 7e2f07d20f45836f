"""`POST /booking` over real HTTP on loopback (SPEC §7.1): what the public form and its users see."""

import copy
import json
import os
import time
import uuid

import httpx
import psycopg
import pytest

from crm.booking import intake
from crm.sealing import generate_key
from crm.tools.devserver import build_app
from tests.helpers import BOOKING_EXAMPLE as EXAMPLE
from tests.helpers import LiveServer, acting_as, assert_refuses_to_start, function_app, make_org, start_function


def booking_body(org: str, **customer) -> dict:
    doc = copy.deepcopy(EXAMPLE)
    doc["org"] = org
    doc["customer"].update(customer)
    return doc


@pytest.fixture
def org(conn):
    return make_org(conn, slug=f"bikes-{uuid.uuid4().hex[:6]}", country="DE")


@pytest.fixture
def slug(conn, org):
    return conn.execute("select slug from public.organizations where id = %s", (org,)).fetchone()["slug"]


@pytest.fixture
def http(database):
    with LiveServer(function_app("booking")) as live, httpx.Client(base_url=live.url, timeout=15) as client:
        yield client


def track(conn, token: str):
    with acting_as(conn, "anon") as c:
        return c.execute("select public.track_order(%s) as t", (token,)).fetchone()["t"]


def test_booking_end_to_end(http, conn, org, slug):
    resp = http.post("/", json=booking_body(slug))
    assert resp.status_code == 201, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Request-Id"]
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Idempotent-Replayed" not in resp.headers
    out = resp.json()
    # No customer_id: the public must not learn whether a phone or email is a customer (SPEC 7.1).
    assert set(out) == {"order_id", "order_code", "tracking_token", "status", "lead_id"}
    assert out["status"] == "pending_manager"
    assert out["order_code"].startswith("BK-") and len(out["order_code"]) == 11

    customer = conn.execute("select c.* from public.customers c join public.orders o on o.customer_id = c.id"
                            " where o.id = %s", (out["order_id"],)).fetchone()
    assert customer["org_id"] == org
    assert (customer["full_name"], customer["phone_e164"], customer["email"], customer["preferred_channel"],
            customer["city"], customer["stage"]) == ("Anna Schmidt", "+4915123456789", "anna@example.com",
                                                     "whatsapp", "Berlin", "lead")
    lead = conn.execute("select * from public.leads where id = %s", (out["lead_id"],)).fetchone()
    assert (lead["org_id"], lead["customer_id"], lead["source"], lead["status"], lead["external_item_ref"],
            lead["notes"]) == (org, customer["id"], "website_booking", "new", "listing-4711", "after 5pm")
    order = conn.execute("select * from public.orders where id = %s", (out["order_id"],)).fetchone()
    assert (order["org_id"], order["customer_id"], order["lead_id"], order["order_code"], order["status"]) == (
        org, customer["id"], lead["id"], out["order_code"], "pending_manager")
    assert (order["item_id"], order["external_item_ref"], str(order["price_amount"]), order["currency"],
            str(order["booking_amount"]), order["delivery_method"]) == (
        "4711", "listing-4711", "2450.00", "EUR", "100.00", "pickup")
    assert order["item_snapshot"] == {
        "item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
        "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022, "size": "L",
        "price": 2450, "currency": "EUR", "main_photo_url": "https://img.example/4711/1.jpg",
        "images": ["https://img.example/4711/1.jpg"], "cached_images": [], "images_state": "pending"}
    assert order["booking_meta"]["notes"] == "after 5pm"
    assert order["booking_meta"]["contact"]["phone"] == "+4915123456789"
    # Only the hash of the token is stored.
    assert bytes(order["tracking_token_hash"]) != out["tracking_token"].encode()
    stored = json.dumps({k: str(v) for k, v in order.items()})
    assert out["tracking_token"] not in stored

    events = conn.execute("select from_status, to_status from public.order_status_events where order_id = %s",
                          (order["id"],)).fetchall()
    assert events == [{"from_status": None, "to_status": "pending_manager"}]
    lead_events = conn.execute("select from_status, to_status from public.lead_status_events where lead_id = %s",
                               (lead["id"],)).fetchall()
    assert lead_events == [{"from_status": None, "to_status": "new"}]
    outbox = conn.execute("select event_type, aggregate_id from private.outbox where org_id = %s order by id",
                          (org,)).fetchall()
    assert [(r["event_type"], r["aggregate_id"]) for r in outbox] == [
        ("customer.created", customer["id"]), ("lead.created", lead["id"]), ("order.created", order["id"])]

    tracked = track(conn, out["tracking_token"])
    assert tracked["order_code"] == out["order_code"] and tracked["status"] == "pending_manager"
    assert tracked["title"] == "Canyon Spectral 29"
    assert [h["status"] for h in tracked["history"]] == ["pending_manager"]
    with pytest.raises(psycopg.Error) as wrong:
        track(conn, out["tracking_token"][:-1] + ("A" if out["tracking_token"][-1] != "A" else "B"))
    assert wrong.value.sqlstate == "PT404"


def test_org_by_id_and_second_booking_finds_the_customer(http, conn, org):
    first = http.post("/", json=booking_body(str(org))).json()
    second = http.post("/", json=booking_body(str(org), phone="+49 151 23456789", email=None)).json()
    by_email = http.post("/", json=booking_body(str(org), phone=None, email="ANNA@example.com ")).json()
    customers = conn.execute("select distinct customer_id from public.orders where id = any (%s)",
                             ([uuid.UUID(r["order_id"]) for r in (first, second, by_email)],)).fetchall()
    assert len(customers) == 1
    assert len({first["order_id"], second["order_id"], by_email["order_id"]}) == 3
    assert len({first["order_code"], second["order_code"], by_email["order_code"]}) == 3
    assert conn.execute("select count(*) as n from public.customers where org_id = %s", (org,)).fetchone()["n"] == 1


def test_idempotent_replay(http, conn, org, slug):
    headers = {"Idempotency-Key": f"form-{uuid.uuid4()}"}
    first = http.post("/", json=booking_body(slug), headers=headers)
    # Same body in another key order and spacing: the same request.
    reordered = json.dumps(dict(reversed(list(booking_body(slug).items()))), indent=2)
    again = http.post("/", content=reordered, headers={**headers, "Content-Type": "application/json"})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json() == first.json()
    assert track(conn, again.json()["tracking_token"])["order_code"] == first.json()["order_code"]
    assert conn.execute("select count(*) as n from public.orders where org_id = %s", (org,)).fetchone()["n"] == 1

    other = http.post("/", json=booking_body(slug, city="Hamburg"), headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert conn.execute("select count(*) as n from public.orders where org_id = %s", (org,)).fetchone()["n"] == 1

    # Keys are per organization.
    elsewhere = make_org(conn)
    third = http.post("/", json=booking_body(str(elsewhere)), headers=headers)
    assert third.status_code == 201 and "Idempotent-Replayed" not in third.headers


def orders_of(conn, org) -> int:
    return conn.execute("select count(*) as n from public.orders where org_id = %s", (org,)).fetchone()["n"]


@pytest.mark.parametrize("expire", ["purge_job", "age_only"])
@pytest.mark.parametrize("same_body", [True, False])
def test_key_reused_after_expiry_is_a_new_booking(http, conn, database, org, slug, expire, same_body):
    headers = {"Idempotency-Key": "form-submit-1"}
    first = http.post("/", json=booking_body(slug), headers=headers)
    assert first.status_code == 201, first.text
    conn.execute("update private.idempotency_keys set created_at = now() - interval '25 hours' where org_id = %s",
                 (org,))
    if expire == "purge_job":
        assert intake.purge_booking_state(database, {})["idempotency_keys"] == 1
        assert conn.execute("select count(*) as n from private.idempotency_keys").fetchone()["n"] == 0

    doc = booking_body(slug) if same_body else booking_body(slug, city="Hamburg")
    second = http.post("/", json=doc, headers=headers)
    assert second.status_code == 201, second.text
    assert "Idempotent-Replayed" not in second.headers
    a, b = first.json(), second.json()
    assert b["order_id"] != a["order_id"] and b["order_code"] != a["order_code"]
    assert b["tracking_token"] != a["tracking_token"]
    assert orders_of(conn, org) == 2
    # Each token still finds its own order; the key now replays the new one.
    assert track(conn, a["tracking_token"])["order_code"] == a["order_code"]
    assert track(conn, b["tracking_token"])["order_code"] == b["order_code"]
    replay = http.post("/", json=doc, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == b
    assert orders_of(conn, org) == 2


def test_replayed_token_is_the_orders_and_tracks_it(http, conn, org, slug):
    headers = {"Idempotency-Key": f"form-{uuid.uuid4()}"}
    first = http.post("/", json=booking_body(slug), headers=headers).json()
    replays = [http.post("/", json=booking_body(slug), headers=headers) for _ in range(2)]
    assert all(r.status_code == 201 and r.headers["Idempotent-Replayed"] == "true" for r in replays)
    assert all(r.json() == first for r in replays)
    tracked = track(conn, replays[-1].json()["tracking_token"])
    assert tracked["order_code"] == first["order_code"] and tracked["status"] == "pending_manager"
    stored = conn.execute("select tracking_token_hash from public.orders where id = %s",
                          (first["order_id"],)).fetchone()["tracking_token_hash"]
    assert bytes(stored) == intake.token_hash(first["tracking_token"])
    # Nothing but the hash is kept: not in the order, not with the key.
    key_row = conn.execute("select * from private.idempotency_keys where org_id = %s", (org,)).fetchone()
    assert first["tracking_token"] not in json.dumps({k: str(v) for k, v in key_row.items()})


@pytest.mark.parametrize(("name", "value"), [("CRM_TRUSTED_PROXIES", "two"), ("CRM_TRUSTED_PROXIES", "-1"),
                                             ("CRM_BOOKING_RATE_LIMIT", "30/min"),
                                             ("CRM_BOOKING_RATE_WINDOW", "10m")])
def test_malformed_abuse_setting_is_a_startup_error_naming_it(db_url, tmp_path, name, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
    env.update({"DATABASE_URL": db_url, name: value})
    log = tmp_path / "ff.log"
    # Port 0 would make a server that does start unreachable, but it must not start at all.
    proc, _ = start_function("booking", env, log, port=0)
    assert_refuses_to_start(proc, log, name)


def test_malformed_json_is_400(http, slug):
    resp = http.post("/", content=b'{"org": "x",', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.json()["code"] == "malformed_json"


def test_body_over_64_kib_is_413(http, slug):
    doc = booking_body(slug)
    doc["booking"]["notes"] = "x" * (65 * 1024)
    assert http.post("/", json=doc).status_code == 413


def test_not_json_is_415(http, slug):
    resp = http.post("/", data={"org": slug})
    assert resp.status_code == 415
    assert resp.json()["status"] == 415


def test_unknown_org_is_404(http):
    resp = http.post("/", json=booking_body("no-such-org"))
    assert resp.status_code == 404 and resp.json()["code"] == "org_not_found"
    assert http.post("/", json=booking_body(str(uuid.uuid4()))).status_code == 404


def test_invalid_fields_are_422_all_listed(http, slug):
    doc = booking_body(slug, phone="12", email="nope", preferred_channel="pigeon")
    doc["item"].update(title="", images=["ftp://img.example/1.jpg"], year=3000)
    doc["booking"]["delivery_method"] = "teleport"
    resp = http.post("/", json=doc)
    assert resp.status_code == 422
    problem = resp.json()
    assert problem["type"] and problem["title"] and problem["detail"] and problem["code"] == "validation_failed"
    assert [e["field"] for e in problem["errors"]] == [
        "customer.phone", "customer.email", "customer.preferred_channel", "item.title", "item.year",
        "item.images.0", "booking.delivery_method"]
    unknown_currency = booking_body(slug)
    unknown_currency["item"]["currency"] = unknown_currency["booking"]["currency"] = "XYZ"
    resp = http.post("/", json=unknown_currency)
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"field": "item.currency", "message": "is not an ISO 4217 currency code"}]
    missing = http.post("/", json={"customer": {}, "item": {}})
    assert {e["field"] for e in missing.json()["errors"]} == {
        "org", "customer.full_name", "item.external_ref", "item.title"}


def test_other_methods_paths_and_keys(http, slug):
    assert http.get("/").status_code == 405
    assert http.post("/nested", json=booking_body(slug)).status_code == 404
    assert http.get("/healthz").status_code == 200
    bad_key = http.post("/", json=booking_body(slug), headers={"Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 400 and bad_key.json()["code"] == "invalid_idempotency_key"


def test_too_many_bookings_from_one_address_is_429(http, conn, org, slug, monkeypatch):
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "3")
    monkeypatch.setenv("CRM_BOOKING_RATE_WINDOW", "3600")
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    statuses = [http.post("/", json=booking_body(slug), headers=key if i == 0 else {}).status_code
                for i in range(3)]
    assert statuses == [201, 201, 201]
    refused = http.post("/", json=booking_body(slug))
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # A replay is not a new booking: it is still answered.
    assert http.post("/", json=booking_body(slug), headers=key).headers["Idempotent-Replayed"] == "true"
    assert conn.execute("select count(*) as n from public.orders where org_id = %s", (org,)).fetchone()["n"] == 3
    # Behind a trusted proxy each client counts on its own, whatever it claims further left.
    monkeypatch.setenv("CRM_TRUSTED_PROXIES", "1")
    fwd = {"X-Forwarded-For": "127.0.0.1, 198.51.100.20"}
    assert http.post("/", json=booking_body(slug), headers=fwd).status_code == 201
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "0")
    monkeypatch.delenv("CRM_TRUSTED_PROXIES")
    assert http.post("/", json=booking_body(slug)).status_code == 201


def test_crm_dev_mounts_booking(database, slug, monkeypatch):
    # `crm dev` fills every function's settings before mounting them all.
    monkeypatch.setenv("CRM_JWT_SECRET", "dev-secret-" + "x" * 32)
    monkeypatch.setenv("CRM_CRON_SECRET", "cron-secret")
    monkeypatch.setenv("CRM_PUBLIC_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("CRM_SECRETS_KEY", generate_key())
    with LiveServer(build_app()) as live, httpx.Client(base_url=live.url, timeout=15) as client:
        resp = client.post("/booking", json=booking_body(slug))
        assert resp.status_code == 201, resp.text
        assert client.get("/booking/healthz").status_code == 200


def _shape(resp: httpx.Response) -> tuple:
    """What a caller can compare between two answers: status, header names, body keys and formats."""
    body = resp.json()
    formats = {k: (type(v).__name__, len(v) if k in ("order_code", "tracking_token", "status") else None)
               for k, v in body.items()}
    return resp.status_code, sorted(h for h in resp.headers if h.lower() not in ("date", "content-length")), formats


def test_known_and_unknown_customer_get_the_same_answer(http, conn, org, slug):
    """Issue 10 finding 5: the 201 told whether a phone/email already belonged to a customer."""
    first = http.post("/", json=booking_body(slug))
    # The attack: the same email alone (a known customer), and a fresh email alone (an unknown one).
    known = http.post("/", json=booking_body(slug, phone=None))
    unknown = http.post("/", json=booking_body(slug, phone=None, email="someone-else@example.com"))
    assert first.status_code == known.status_code == unknown.status_code == 201
    assert "customer_id" not in known.json() and "customer_id" not in unknown.json()
    assert _shape(known) == _shape(unknown) == _shape(first)
    assert conn.execute("select count(*) as n from public.customers where org_id = %s", (org,)).fetchone()["n"] == 2


def test_a_rate_limited_client_learns_nothing_about_orgs(http, conn, slug, monkeypatch):
    """Issue 10 finding 7: an unknown org answered 404 even to a client over the abuse limit."""
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "2")
    monkeypatch.setenv("CRM_BOOKING_RATE_WINDOW", "3600")
    # Naming unknown orgs costs the budget like bookings do.
    assert [http.post("/", json=booking_body(f"no-such-{i}")).status_code for i in range(2)] == [404, 404]
    for org in ("no-such-2", "no-such-0", slug):  # unknown, unknown and cached, known
        resp = http.post("/", json=booking_body(org))
        assert resp.status_code == 429, (org, resp.text)
        assert resp.json()["code"] == "rate_limited" and 1 <= int(resp.headers["Retry-After"]) <= 3600


def test_unknown_orgs_are_cached_negatively_for_a_short_time(database, conn, monkeypatch):
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "100")
    cache = intake.OrgCache(negative_ttl=0.5, max_entries=4)
    limit = intake.RateLimit.from_env()

    def hits() -> int:
        return conn.execute("select coalesce(sum(hits), 0) as n from private.booking_rate_counters"
                            " where client = '192.0.2.7/32'").fetchone()["n"]

    assert cache.get(database, None, "late-org", client="192.0.2.7/32", limit=limit) is None
    made = make_org(conn, slug="late-org")
    # Within the negative TTL: answered from memory (no lookup, nothing counted).
    assert cache.get(database, None, "late-org", client="192.0.2.7/32", limit=limit) is None
    assert hits() == 1
    deadline = time.monotonic() + 10
    while (found := cache.get(database, None, "late-org", client="192.0.2.7/32", limit=limit)) is None:
        assert time.monotonic() < deadline, "the negative entry never expired"
        time.sleep(0.1)
    assert found.id == made
    # Bounded: many unknown names never grow it past max_entries.
    for i in range(10):
        cache.get(database, None, f"gone-{i}", client="192.0.2.7/32", limit=limit)
    assert len(cache._entries) <= 4


def test_an_erased_customer_is_not_found_again(http, conn, org, slug):
    first = http.post("/", json=booking_body(slug)).json()
    old = conn.execute("select customer_id from public.orders where id = %s", (first["order_id"],)).fetchone()
    conn.execute("select public.erase_customer(%s)", (old["customer_id"],))
    again = http.post("/", json=booking_body(slug))
    assert again.status_code == 201, again.text
    new = conn.execute("select c.id, c.phone_e164, c.email, c.erased_at from public.customers c"
                       " join public.orders o on o.customer_id = c.id where o.id = %s",
                       (again.json()["order_id"],)).fetchone()
    assert new["id"] != old["customer_id"] and new["erased_at"] is None
    assert (new["phone_e164"], new["email"]) == ("+4915123456789", "anna@example.com")
    erased = conn.execute("select full_name, phone_e164, email, erased_at from public.customers where id = %s",
                          (old["customer_id"],)).fetchone()
    assert (erased["phone_e164"], erased["email"]) == (None, None) and erased["erased_at"] is not None

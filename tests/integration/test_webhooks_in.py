"""Webhooks in (SPEC 10, 11): real HTTP on loopback, signed as the senders sign.

wms: the standardwebhooks library; twilio: the twilio library's RequestValidator (what Twilio's
signature is, computed by the library); meta: HMAC-SHA256 as Meta documents it, and the Graph API
as a local HTTP server reached through a stubbed resolver (no public name is ever resolved).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest
from standardwebhooks import Webhook
from twilio.request_validator import RequestValidator

from crm.inbox.jobs import Inbox
from crm.net import PostPolicy, SafePoster
from crm.sealing import SecretBox, generate_key, parse_key
from tests.helpers import LiveServer, function_app, make_org, make_staff
from tests.integration.test_payments import make_order

KEY = generate_key()
TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
META_SECRET = "meta-app-secret-0123456789"
PAGE_TOKEN = "EAAB-page-access-token"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CRM_SECRETS_KEY", KEY)
    monkeypatch.setenv("CRM_WEBHOOK_ALLOW_LOOPBACK", "1")
    monkeypatch.delenv("CRM_PUBLIC_URL", raising=False)


@pytest.fixture
def server(database):
    with LiveServer(function_app("webhooks")) as live:
        yield live


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
def org(conn):
    return make_org(conn, country="DE")


def slug_of(conn, org) -> str:
    return conn.execute("select slug from public.organizations where id = %s", (org,)).fetchone()["slug"]


def create_integration(conn, org, kind, settings=None, secrets=None) -> dict:
    return conn.execute("select public.create_integration(%s, %s, %s, %s) as i",
                        (org, kind, json.dumps(settings or {}), json.dumps(secrets or {}))).fetchone()["i"]


def inbound(conn, org=None) -> list[dict]:
    return conn.execute("select * from private.inbound_events where %s::uuid is null or org_id = %s order by id",
                        (org, org)).fetchall()


def count(conn, sql, *params) -> int:
    return conn.execute(f"select count(*) as n from ({sql}) x", params).fetchone()["n"]


# -- wms: Standard Webhooks -------------------------------------------------------------------------
@pytest.fixture
def wms(conn, org):
    integ = create_integration(conn, org, "wms")
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"], "secret": integ["secrets"]["webhook_secret"]}


def wms_post(client, w, body: dict, *, secret=None, msg_id=None, at=None, tamper=None, drop=None):
    raw = json.dumps(body).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret or w["secret"]).sign(msg_id, at, raw.decode())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": signature, "content-type": "application/json"}
    if drop:
        headers.pop(drop)
    if tamper:
        raw = tamper(raw)
    return client.post(f"/wms/{w['slug']}", content=raw, headers=headers)


def inventory_event(sku, available, updated_at) -> dict:
    return {"type": "inventory.updated", "timestamp": updated_at,
            "data": {"items": [{"sku": sku, "name": "Chain", "attributes": {"size": "L"}, "available": available,
                                "reserved": 1, "total": available + 1, "unit": "pcs", "updated_at": updated_at}]}}


def test_wms_event_verified_stored_and_applied(conn, client, wms):
    r = wms_post(client, wms, inventory_event("SKU-1", 5, "2026-01-01T10:00:00Z"), msg_id="msg_1")
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0, "processed": 1, "failed": 0}
    [ev] = inbound(conn)
    assert (ev["source"], ev["event_id"], ev["event_type"], ev["status"]) == (
        "wms", "msg_1", "inventory.updated", "processed")
    item = conn.execute("select * from public.inventory_items where sku = 'SKU-1'").fetchone()
    assert (item["available"], item["total"], item["unit"], item["attributes"]) == (5, 6, "pcs", {"size": "L"})

    again = wms_post(client, wms, inventory_event("SKU-1", 99, "2026-01-02T10:00:00Z"), msg_id="msg_1")
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert conn.execute("select available from public.inventory_items").fetchone()["available"] == 5


@pytest.mark.parametrize("case", ["wrong_secret", "old_timestamp", "future_timestamp", "changed_byte",
                                  "no_id", "no_timestamp", "no_signature", "garbage_signature"])
def test_wms_refused_signatures_are_401_and_store_nothing(conn, client, wms, case):
    body = inventory_event("SKU-1", 5, "2026-01-01T10:00:00Z")
    other = "whsec_" + "QUJD" * 10 + "QUI="
    kw = {
        "wrong_secret": {"secret": other},
        "old_timestamp": {"at": datetime.now(UTC) - timedelta(minutes=6)},
        "future_timestamp": {"at": datetime.now(UTC) + timedelta(minutes=6)},
        "changed_byte": {"tamper": lambda raw: raw.replace(b'"available": 5', b'"available": 6')},
        "no_id": {"drop": "webhook-id"},
        "no_timestamp": {"drop": "webhook-timestamp"},
        "no_signature": {"drop": "webhook-signature"},
    }.get(case, {})
    if case == "garbage_signature":
        raw = json.dumps(body).encode()
        r = client.post(f"/wms/{wms['slug']}", content=raw, headers={
            "webhook-id": "m", "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
            "webhook-signature": "v1,%%%not-base64 v2 ,", "content-type": "application/json"})
    else:
        r = wms_post(client, wms, body, **kw)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert inbound(conn) == []
    assert count(conn, "select from public.inventory_items") == 0


def test_a_refused_signature_names_its_scheme(conn, client, wms, twilio):
    """RFC 9110: every 401 carries `WWW-Authenticate`; for a signed webhook the scheme is the signature."""
    wms_refused = wms_post(client, wms, inventory_event("SKU-1", 5, "2026-01-01T10:00:00Z"), drop="webhook-signature")
    twilio_refused = twilio_post(client, twilio, call(), signature="")
    for resp in (wms_refused, twilio_refused):
        assert (resp.status_code, resp.json()["code"]) == (401, "bad_signature"), resp.text
        assert resp.headers["WWW-Authenticate"] == 'Signature realm="crm"'


def test_unknown_org_source_or_disabled_integration_is_404_and_stores_nothing(conn, client, wms):
    body = inventory_event("SKU-1", 5, "2026-01-01T10:00:00Z")
    assert wms_post(client, {**wms, "slug": "no-such-org"}, body).status_code == 404
    assert client.post(f"/sftp/{wms['slug']}", content=b"{}").status_code == 404
    assert client.post(f"/twilio/{wms['slug']}", content=b"a=b",
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 404
    conn.execute("update public.integrations set enabled = false where id = %s", (wms["id"],))
    r = wms_post(client, wms, body)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert inbound(conn) == []
    conn.execute("update public.integrations set enabled = true where id = %s", (wms["id"],))
    assert wms_post(client, wms, body).status_code == 200
    # by id as well as by slug
    assert wms_post(client, {**wms, "slug": str(wms["org"])}, body).status_code == 200


def test_rotation_old_and_new_secret_both_verify_until_old_expires(conn, client, wms):
    old = wms["secret"]
    rotated = conn.execute("select public.rotate_integration_secret(%s, 'webhook_secret') as r",
                           (wms["id"],)).fetchone()["r"]
    new = rotated["value"]
    assert new.startswith("whsec_") and new != old
    assert wms_post(client, wms, inventory_event("A", 1, "2026-01-01T10:00:00Z"), secret=old).status_code == 200
    assert wms_post(client, wms, inventory_event("B", 1, "2026-01-01T10:00:00Z"), secret=new).status_code == 200
    conn.execute("update private.integration_secrets set expires_at = now() - interval '1 second'"
                 " where expires_at is not null")
    assert wms_post(client, wms, inventory_event("C", 1, "2026-01-01T10:00:00Z"), secret=old).status_code == 401
    assert wms_post(client, wms, inventory_event("D", 1, "2026-01-01T10:00:00Z"), secret=new).status_code == 200


def test_sealed_secrets_open_after_process_inbox_seals_them(conn, database, client, wms):
    summary = run_inbox(database)
    assert summary["sealed_secrets"] == 1
    row = conn.execute("select sealed, pending from private.integration_secrets").fetchone()
    assert row["pending"] is None and wms["secret"].encode() not in bytes(row["sealed"])
    assert wms_post(client, wms, inventory_event("A", 1, "2026-01-01T10:00:00Z")).status_code == 200


def test_same_event_twenty_times_at_once_has_one_effect(conn, client, wms):
    customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                            " values (%s, 'Anna', '+4915123456789') returning id", (wms["org"],)).fetchone()["id"]
    body = {"type": "order.created", "timestamp": "2026-01-01T10:00:00Z",
            "data": {"wms_order_id": "W-1", "crm_customer_id": str(customer), "status": "created",
                     "lines": [{"sku": "A", "qty": 1}], "updated_at": "2026-01-01T10:00:00Z"}}
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: wms_post(client, wms, body, msg_id="msg_same"), range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert sum(a.json()["accepted"] for a in answers) == 1
    assert sum(a.json()["duplicates"] for a in answers) == 19
    assert count(conn, "select from private.inbound_events") == 1
    assert count(conn, "select from public.activities where customer_id = %s", customer) == 1
    w = conn.execute("select * from public.wms_orders").fetchone()
    assert (w["wms_order_id"], w["status"], w["crm_customer_id"], w["lines"]) == (
        "W-1", "created", customer, [{"sku": "A", "qty": 1}])
    [entry] = conn.execute("select * from public.timeline where customer_id = %s", (customer,)).fetchall()
    assert entry["kind"] == "wms_event" and "order.created" in entry["summary"]


def test_out_of_order_inventory_update_does_not_regress_the_cache(conn, client, wms):
    newer = inventory_event("SKU-9", 3, "2026-01-01T12:00:00Z")
    older = inventory_event("SKU-9", 10, "2026-01-01T11:00:00Z")
    assert wms_post(client, wms, newer).status_code == 200
    assert wms_post(client, wms, older).status_code == 200
    item = conn.execute("select available, source_updated_at from public.inventory_items").fetchone()
    assert item["available"] == 3
    assert item["source_updated_at"] == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert [e["status"] for e in inbound(conn)] == ["processed", "processed"]  # received, nothing lost
    # And wms_orders alike: an older order event leaves the newer status.
    for status, at in (("fulfilled", "2026-01-02T12:00:00Z"), ("created", "2026-01-02T11:00:00Z")):
        wms_post(client, wms, {"type": f"order.{status}", "data": {"wms_order_id": "W-2", "updated_at": at}})
    w2 = conn.execute("select status from public.wms_orders where wms_order_id = 'W-2'").fetchone()
    assert w2["status"] == "fulfilled"


def test_shipment_posted_ships_a_paid_out_order_with_status_event_and_outbox(conn, client, wms):
    org = wms["org"]
    customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                            " values (%s, 'Anna', '+4915123456789') returning id", (org,)).fetchone()["id"]
    order = make_order(conn, org, customer, status="paid_out", price=None, currency=None)
    body = {"type": "shipment.posted", "timestamp": "2026-01-03T09:00:00Z",
            "data": {"crm_customer_id": str(customer), "crm_order_id": str(order), "wms_order_id": "W-7",
                     "provider": "DHL", "tracking_number": "JJD000123", "delivery_status": "in_transit",
                     "estimated_delivery": "2026-01-06", "updated_at": "2026-01-03T09:00:00Z"}}
    r = wms_post(client, wms, body)
    assert r.status_code == 200 and r.json()["processed"] == 1, r.text
    o = conn.execute("select status, wms_order_id from public.orders where id = %s", (order,)).fetchone()
    assert (o["status"], o["wms_order_id"]) == ("shipped", "W-7")
    event = conn.execute("select from_status, to_status, change_notes from public.order_status_events"
                         " where order_id = %s order by id desc limit 1", (order,)).fetchone()
    assert (event["from_status"], event["to_status"]) == ("paid_out", "shipped")
    assert "DHL" in event["change_notes"]
    outbox = conn.execute("select payload from private.outbox where aggregate_id = %s"
                          " and event_type = 'order.status_changed' order by id desc limit 1", (order,)).fetchone()
    assert (outbox["payload"]["data"]["from_status"], outbox["payload"]["data"]["status"]) == ("paid_out", "shipped")
    s = conn.execute("select provider, tracking_number, delivery_status, estimated_delivery::text"
                     " from public.shipments where order_id = %s", (order,)).fetchall()
    assert s == [{"provider": "DHL", "tracking_number": "JJD000123", "delivery_status": "in_transit",
                  "estimated_delivery": "2026-01-06"}]
    kinds = [e["kind"] for e in conn.execute("select kind from public.timeline where order_id = %s"
                                             " order by occurred_at", (order,)).fetchall()]
    assert "wms_event" in kinds and kinds.count("status") >= 4

    # The next shipment.posted (delivered) updates the same shipment row; the order stays shipped.
    body["data"] |= {"delivery_status": "delivered", "updated_at": "2026-01-05T09:00:00Z"}
    assert wms_post(client, wms, body).status_code == 200
    assert count(conn, "select from public.shipments where order_id = %s", order) == 1
    assert conn.execute("select delivery_status from public.shipments").fetchone()["delivery_status"] == "delivered"


def test_processing_failure_is_kept_visible_and_retried(conn, database, client, wms):
    admin = make_staff(conn, wms["org"], "admin")
    bad = {"type": "inventory.updated", "data": {"items": [{"sku": "X", "available": "lots",
                                                             "updated_at": "2026-01-01T10:00:00Z"}]}}
    r = wms_post(client, wms, bad, msg_id="msg_bad")
    assert r.status_code == 200 and r.json()["failed"] == 1
    from tests.helpers import acting_as

    with acting_as(conn, "authenticated", admin) as c:
        [row] = c.execute("select * from public.integration_events").fetchall()
    assert (row["event_id"], row["status"], row["attempts"]) == ("msg_bad", "failed", 1)
    assert "lots" in row["error"] and "payload" not in row
    # Due again (as after the backoff): process-inbox retries it; still failing, still visible.
    conn.execute("update private.inbound_events set next_attempt_at = now()")
    summary = run_inbox(database)
    assert summary["failed"] == 1
    assert conn.execute("select attempts, status from private.inbound_events").fetchone() == {
        "attempts": 2, "status": "failed"}


def test_bodies_over_256_kib_are_413_and_malformed_are_400(conn, client, wms):
    big = {"type": "inventory.updated", "data": {"items": [], "pad": "x" * (256 * 1024)}}
    assert wms_post(client, wms, big).status_code == 413
    raw = b"not json"
    msg_id, at = "msg_x", datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": Webhook(wms["secret"]).sign(msg_id, at, raw.decode())}
    assert client.post(f"/wms/{wms['slug']}", content=raw, headers=headers).status_code == 400
    assert wms_post(client, wms, {"type": "order.created", "data": []}).status_code == 400
    assert inbound(conn) == []


# -- twilio -----------------------------------------------------------------------------------------
@pytest.fixture
def twilio(conn, org):
    integ = create_integration(conn, org, "twilio", secrets={"auth_token": TWILIO_TOKEN})
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"]}


def twilio_post(client, t, form: dict, *, url=None, token=TWILIO_TOKEN, signature=None):
    url = url or f"{client.base_url}".rstrip("/") + f"/twilio/{t['slug']}"
    sig = signature if signature is not None else RequestValidator(token).compute_signature(url, form)
    return client.post(f"/twilio/{t['slug']}", content=urlencode(form).encode(),
                       headers={"X-Twilio-Signature": sig, "content-type": "application/x-www-form-urlencoded"})


def call(sid="CA" + "0" * 32, status="completed", frm="+4915123456789", direction="inbound", **kw) -> dict:
    return {"CallSid": sid, "AccountSid": "AC" + "1" * 32, "CallStatus": status, "From": frm, "To": "+4930123456",
            "Direction": direction, "CallDuration": "42", "Timestamp": "Tue, 01 Dec 2026 08:00:00 +0000", **kw}


def test_twilio_call_creates_customer_phone_call_lead_and_activity(conn, client, twilio):
    r = twilio_post(client, twilio, call())
    assert r.status_code == 200 and r.json()["processed"] == 1, r.text
    [ev] = inbound(conn)
    assert ev["event_id"] == "CA" + "0" * 32 + ":completed"
    [customer] = conn.execute("select * from public.customers").fetchall()
    assert customer["phone_e164"] == "+4915123456789"
    [lead] = conn.execute("select * from public.leads").fetchall()
    assert (lead["source"], lead["status"], lead["customer_id"]) == ("phone_call", "new", customer["id"])
    [act] = conn.execute("select * from public.activities").fetchall()
    assert (act["kind"], act["lead_id"]) == ("call", lead["id"])
    assert act["occurred_at"] == datetime(2026, 12, 1, 8, tzinfo=UTC)
    # A second status of the same call: the same activity, updated; a new call: a new activity, same lead.
    assert twilio_post(client, twilio, call(status="no-answer")).status_code == 200
    assert twilio_post(client, twilio, call(sid="CA" + "2" * 32)).status_code == 200
    assert count(conn, "select from public.activities") == 2
    assert count(conn, "select from public.leads") == 1
    # Outbound: the customer is the callee (To).
    assert twilio_post(client, twilio, call(sid="CA" + "3" * 32, direction="outbound-api", frm="+4930123456",
                                            To="+4917612345678")).status_code == 200
    assert count(conn, "select from public.customers where phone_e164 = '+4917612345678'") == 1


def test_twilio_signatures(conn, client, twilio, monkeypatch):
    assert twilio_post(client, twilio, call(), token="another-token-0123456789").status_code == 401
    assert twilio_post(client, twilio, call(), signature="").status_code == 401
    url = f"{client.base_url}".rstrip("/") + f"/twilio/{twilio['slug']}"
    sig = RequestValidator(TWILIO_TOKEN).compute_signature(url, call())
    tampered = client.post(f"/twilio/{twilio['slug']}", content=urlencode(call(CallDuration="43")).encode(),
                           headers={"X-Twilio-Signature": sig, "content-type": "application/x-www-form-urlencoded"})
    assert tampered.status_code == 401
    assert inbound(conn) == []
    # Behind a proxy Twilio signs the public URL: CRM_PUBLIC_URL + path.
    monkeypatch.setenv("CRM_PUBLIC_URL", "https://crm.example.test")
    public = f"https://crm.example.test/twilio/{twilio['slug']}"
    assert twilio_post(client, twilio, call()).status_code == 401  # signed for the inner URL
    assert twilio_post(client, twilio, call(), url=public).status_code == 200


def test_twenty_concurrent_calls_from_one_new_number_make_one_customer_and_one_open_lead(conn, client, twilio):
    calls = [call(sid=f"CA{i:032d}", status="ringing") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda form: twilio_post(client, twilio, form), calls))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert count(conn, "select from public.customers") == 1
    assert count(conn, "select from public.leads where status in ('new', 'contacted', 'qualified')") == 1
    assert count(conn, "select from public.activities where kind = 'call'") == 20


def test_a_number_written_five_ways_is_one_customer(conn, client, twilio):
    ways = ["+49 151 23456789", "0151 23456789", "0049151 23456789", "+49 (0151) 234-567-89", "01512/3456789"]
    for i, number in enumerate(ways):
        r = twilio_post(client, twilio, call(sid=f"CA{i:032d}", frm=number))
        assert r.status_code == 200 and r.json()["processed"] == 1, (number, r.text)
    assert [c["phone_e164"] for c in conn.execute("select phone_e164 from public.customers").fetchall()] == [
        "+4915123456789"]
    assert count(conn, "select from public.leads") == 1


def test_an_anonymous_caller_is_kept_and_ignored(conn, client, twilio):
    assert twilio_post(client, twilio, call(frm="anonymous")).status_code == 200
    [ev] = inbound(conn)
    assert ev["status"] == "ignored" and "anonymous" in ev["error"]
    assert count(conn, "select from public.customers") == 0


def test_erasing_a_caller_scrubs_their_calls_and_the_raw_events(conn, client, twilio, wms):
    from tests.integration.test_erasure import rows_holding

    number = "+4915100000077"
    assert twilio_post(client, twilio, call(frm=number)).status_code == 200
    customer = conn.execute("select id from public.customers where phone_e164 = %s", (number,)).fetchone()["id"]
    wms_post(client, wms, {"type": "inquiry.created", "data": {"crm_customer_id": str(customer),
                                                               "note": f"call {number}"}})
    assert "private.inbound_events" in rows_holding(conn, number.lstrip("+"))
    conn.execute("select public.erase_customer(%s)", (customer,))
    assert rows_holding(conn, number.lstrip("+")) == []
    assert count(conn, "select from public.activities where customer_id = %s", customer) == 2  # history stays
    # The next call from that number is a new customer: the erased one is never found again.
    assert twilio_post(client, twilio, call(sid="CA" + "9" * 32, frm=number)).status_code == 200
    assert count(conn, "select from public.customers where phone_e164 = %s", number) == 1
    assert conn.execute("select id from public.customers where phone_e164 = %s", (number,)).fetchone()["id"] != customer


# -- meta -------------------------------------------------------------------------------------------
class Graph:
    """Meta's Graph API on loopback: `GET /{leadgen_id}?access_token=` -> the lead; records requests."""

    def __init__(self):
        self.leads: dict[str, dict] = {}
        self.fail_with: int | None = None
        self.requests: list[tuple[str, dict]] = []
        graph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                parsed = urlparse(self.path)
                graph.requests.append((parsed.path, parse_qs(parsed.query)))
                lead = graph.leads.get(parsed.path.rsplit("/", 1)[-1])
                status = graph.fail_with or (200 if lead else 404)
                body = json.dumps(lead if status == 200 else {"error": {"message": "nope"}}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def graph(monkeypatch):
    g = Graph()
    # A name, not an address: the client resolves it through the stub below, never through DNS.
    monkeypatch.setenv("CRM_META_GRAPH_URL", f"http://graph.facebook.test:{g.port}/v21.0")
    yield g
    g.close()


def stub_resolver(host: str, port: int) -> list[str]:
    assert host == "graph.facebook.test", host
    return ["127.0.0.1"]


def run_inbox(database) -> dict:
    """One process-inbox run, its Graph client pinned through the stub resolver."""
    client = SafePoster(PostPolicy(allow_loopback=True, timeout=5, max_response_bytes=256 * 1024),
                        resolver=stub_resolver)
    inbox = Inbox(database, box=SecretBox(parse_key(KEY)), client=client)
    try:
        return inbox.run_once()
    finally:
        inbox.close()


@pytest.fixture
def meta(conn, org):
    integ = create_integration(conn, org, "meta", settings={"verify_token": "verify-me-123"},
                               secrets={"app_secret": META_SECRET, "page_access_token": PAGE_TOKEN})
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"]}


def meta_post(client, m, body: dict, secret=META_SECRET):
    raw = json.dumps(body).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return client.post(f"/meta/{m['slug']}", content=raw,
                       headers={"X-Hub-Signature-256": sig, "content-type": "application/json"})


def leadgen(*ids) -> dict:
    return {"object": "page", "entry": [{"id": "page-1", "time": 1764576000, "changes": [
        {"field": "leadgen", "value": {"leadgen_id": i, "page_id": "page-1", "form_id": "form-9",
                                       "created_time": 1764576000}} for i in ids] + [
        {"field": "feed", "value": {"item": "status"}}]}]}


def graph_lead(phone=None, email=None, name="Jana Nováková") -> dict:
    fields = [{"name": "full_name", "values": [name]}]
    if phone:
        fields.append({"name": "phone_number", "values": [phone]})
    if email:
        fields.append({"name": "email", "values": [email]})
    return {"id": "x", "created_time": "2026-12-01T08:00:00+0000", "form_id": "form-9", "field_data": fields}


def test_meta_handshake(conn, client, meta):
    ok = client.get(f"/meta/{meta['slug']}", params={"hub.mode": "subscribe", "hub.verify_token": "verify-me-123",
                                                     "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444" and ok.headers["content-type"].startswith("text/plain")
    for params in ({"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
                   {"hub.mode": "unsubscribe", "hub.verify_token": "verify-me-123", "hub.challenge": "1"},
                   {}):
        assert client.get(f"/meta/{meta['slug']}", params=params).status_code == 403
    assert client.get("/meta/no-such-org", params={"hub.mode": "subscribe"}).status_code == 404


def test_meta_leads_fetched_by_process_inbox_customer_by_phone_then_email(conn, database, client, meta, graph):
    existing = conn.execute("insert into public.customers (org_id, full_name, email)"
                            " values (%s, 'Jana', 'jana@example.com') returning id", (meta["org"],)).fetchone()["id"]
    graph.leads = {"111": graph_lead(phone="0151 2345 6789", email="Jana@Example.com"),
                   "222": graph_lead(phone="+49 151 23456789"),
                   "333": graph_lead(email="other@example.com", name="Other")}
    assert meta_post(client, meta, leadgen("111", "222"), secret="wrong-secret").status_code == 401
    r = meta_post(client, meta, leadgen("111", "222", "333"))
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    assert meta_post(client, meta, leadgen("111")).json()["duplicates"] == 1
    assert [e["status"] for e in inbound(conn)] == ["pending"] * 3

    summary = run_inbox(database)
    assert summary["processed"] == 3, summary
    assert {p for p, _ in graph.requests} == {"/v21.0/111", "/v21.0/222", "/v21.0/333"}
    assert all(q["access_token"] == [PAGE_TOKEN] for _, q in graph.requests)
    leads = conn.execute("select customer_id, source from public.leads order by created_at").fetchall()
    assert [lead["source"] for lead in leads] == ["ads_form"] * 3
    # 111: its phone belongs to no one, its email to `existing` -> that customer (found by email);
    # 222: the phone again, still no one's (111 did not add it to `existing`) -> a new customer;
    # 333: a new email -> a new customer.
    by_lead = [lead["customer_id"] for lead in leads]
    assert by_lead[0] == existing
    assert count(conn, "select from public.customers") == 3
    assert count(conn, "select from public.activities where kind = 'ad_lead'") == 3
    assert run_inbox(database)["claimed"] == 0  # nothing left; one lead per leadgen


def test_a_failing_graph_fetch_is_visible_and_retried_with_backoff(conn, database, client, meta, graph):
    admin = make_staff(conn, meta["org"], "admin")
    graph.leads = {"444": graph_lead(phone="+4915199999999")}
    graph.fail_with = 500
    assert meta_post(client, meta, leadgen("444")).status_code == 200
    assert run_inbox(database)["failed"] == 1
    from tests.helpers import acting_as

    with acting_as(conn, "authenticated", admin) as c:
        [row] = c.execute("select * from public.integration_events").fetchall()
    assert (row["source"], row["event_id"], row["status"], row["attempts"]) == ("meta", "444", "failed", 1)
    assert "HTTP 500" in row["error"] and PAGE_TOKEN not in row["error"]
    assert row["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=20)
    assert run_inbox(database)["claimed"] == 0  # not due yet
    graph.fail_with = None
    conn.execute("update public.integrations set enabled = false where id = %s", (meta["id"],))
    conn.execute("update private.inbound_events set next_attempt_at = now()")
    assert run_inbox(database)["failed"] == 1
    assert "disabled" in conn.execute("select error from private.inbound_events").fetchone()["error"]
    conn.execute("update public.integrations set enabled = true where id = %s", (meta["id"],))
    conn.execute("update private.inbound_events set next_attempt_at = now()")
    assert run_inbox(database)["processed"] == 1
    assert count(conn, "select from public.leads where source = 'ads_form'") == 1


def test_an_event_failing_its_eighth_attempt_is_dead_and_stays_visible(conn, database, client, meta, graph):
    graph.fail_with = 503
    assert meta_post(client, meta, leadgen("555")).status_code == 200
    conn.execute("update private.inbound_events set attempts = 7")
    assert run_inbox(database)["dead"] == 1
    row = conn.execute("select status, attempts, next_attempt_at, error from private.inbound_events").fetchone()
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("dead", 8, None)
    assert "HTTP 503" in row["error"]
    assert run_inbox(database)["claimed"] == 0


# -- integrations -----------------------------------------------------------------------------------
def test_create_integration_rules(conn, org):
    from tests.helpers import acting_as

    admin, manager = make_staff(conn, org, "admin"), make_staff(conn, org, "manager")
    with acting_as(conn, "authenticated", manager) as c, pytest.raises(Exception, match="only admins"):
        c.execute("select public.create_integration(%s, 'wms')", (org,))
    with acting_as(conn, "authenticated", make_staff(conn, make_org(conn), "admin")) as c, \
            pytest.raises(Exception, match="not found"):
        c.execute("select public.create_integration(%s, 'wms')", (org,))
    with acting_as(conn, "authenticated", admin) as c:
        made = c.execute("select public.create_integration(%s, 'wms', %s) as i",
                         (org, json.dumps({"base_url": "https://wms.example.test/api"}))).fetchone()["i"]
        assert made["secrets"]["webhook_secret"].startswith("whsec_")
        assert "webhook_secret" not in json.dumps(made["settings"])
        # The same URL rule holds for an admin changing settings directly (PostgREST PATCH), not only the RPC.
        with pytest.raises(Exception, match="base_url names a private"):
            c.execute("update public.integrations set settings = %s where id = %s",
                      (json.dumps({"base_url": "https://10.0.0.1/api"}), made["id"]))
    for kind, settings, secrets, message in (
            ("ftp", {}, {}, "kind must be"),
            ("wms", {"base_url": "https://10.0.0.1/api"}, {}, "base_url names a private"),
            ("twilio", {"auth_token": "x" * 10}, {}, "never in settings"),
            ("twilio", {}, {"app_secret": "x" * 10}, "has no secret"),
            ("meta", {}, {"app_secret": 5}, "must be a string")):
        with acting_as(conn, "authenticated", admin) as c, pytest.raises(Exception, match=message):
            c.execute("select public.create_integration(%s, %s, %s, %s)",
                      (org, kind, json.dumps(settings), json.dumps(secrets)))
    create_integration(conn, org, "wms")  # (the one above was rolled back with its transaction)
    with pytest.raises(Exception, match="already has a wms"):
        create_integration(conn, org, "wms")
    meta = create_integration(conn, org, "meta")
    assert len(meta["settings"]["verify_token"]) >= 20  # generated, a setting (not a secret)
    with pytest.raises(Exception, match="give the new value"):
        conn.execute("select public.rotate_integration_secret(%s, 'app_secret')", (meta["id"],))


def test_crm_dev_mounts_webhooks_and_twilio_signs_the_public_url(conn, database, org, monkeypatch):
    """`crm dev` serves the function under /webhooks; its CRM_PUBLIC_URL + that path is what Twilio signs."""
    from crm.tools.devserver import build_app

    monkeypatch.setenv("CRM_JWT_SECRET", "dev-secret-" + "x" * 32)
    monkeypatch.setenv("CRM_CRON_SECRET", "cron-secret")
    monkeypatch.setenv("CRM_PUBLIC_URL", "http://127.0.0.1:1")  # the real one is known once it listens
    integ = create_integration(conn, org, "twilio", secrets={"auth_token": TWILIO_TOKEN})
    slug = slug_of(conn, org)
    with LiveServer(build_app()) as live, httpx.Client(base_url=live.url, timeout=15) as http:
        monkeypatch.setenv("CRM_PUBLIC_URL", live.url)
        form = call()
        sig = RequestValidator(TWILIO_TOKEN).compute_signature(f"{live.url}/webhooks/twilio/{slug}", form)
        r = http.post(f"/webhooks/twilio/{slug}", content=urlencode(form).encode(),
                      headers={"X-Twilio-Signature": sig, "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200, r.text
        assert http.get("/webhooks/healthz").status_code == 200
    assert [e["integration_id"] for e in inbound(conn)] == [uuid.UUID(integ["id"])]

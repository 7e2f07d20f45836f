"""API keys and the machine API (SPEC 11): `functions/api` served as deployed, on loopback."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.helpers import LiveServer, function_app, make_org, make_staff
from tests.integration.test_payments import make_order


@pytest.fixture
def api(database):
    with LiveServer(function_app("api")) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture
def orgs(conn):
    a, b = make_org(conn, country="DE"), make_org(conn, country="DE")
    return {"a": a, "b": b, "admin": make_staff(conn, a, "admin"), "manager": make_staff(conn, a, "manager")}


def create_key(conn, org, scopes, user=None, expires_at=None) -> dict:
    """As the admin `user` through PostgREST's path (committed), else as the owner (CLI)."""
    with conn.transaction():
        if user:
            conn.execute("select set_config('role', 'authenticated', true),"
                         " set_config('request.jwt.claims', %s, true)",
                         (json.dumps({"sub": str(user), "role": "authenticated"}),))
        return conn.execute("select public.create_api_key(%s, 'warehouse', %s, %s) as k",
                            (org, scopes, expires_at)).fetchone()["k"]


def customer(conn, org, name="Anna Schmidt", phone="+4915123456789", email=None) -> uuid.UUID:
    return conn.execute("insert into public.customers (org_id, full_name, phone_e164, email) values (%s, %s, %s, %s)"
                        " returning id", (org, name, phone, email)).fetchone()["id"]


def test_create_api_key_is_admin_only_shown_once_and_stored_as_a_hash(conn, orgs):
    k = create_key(conn, orgs["a"], ["orders:read", "customers:read", "orders:read"], user=orgs["admin"])
    assert k["key"].startswith("crm_") and len(k["key"]) > 40
    assert k["prefix"] == k["key"][:12] and k["scopes"] == ["customers:read", "orders:read"]
    row = conn.execute("select * from public.api_keys where id = %s", (k["id"],)).fetchone()
    assert "key" not in row and row["created_by"] == orgs["admin"]
    stored = conn.execute("select key_hash from private.api_key_hashes where key_id = %s", (k["id"],)).fetchone()
    assert bytes(stored["key_hash"]) == hashlib.sha256(k["key"].encode()).digest()
    for user, state in ((orgs["manager"], "PT403"), (make_staff(conn, orgs["b"], "admin"), "PT404")):
        with pytest.raises(psycopg.Error) as info:
            create_key(conn, orgs["a"], ["orders:read"], user=user)
        assert info.value.sqlstate == state
    for scopes in ([], ["customers:write"], None):
        with pytest.raises(psycopg.Error) as info:
            create_key(conn, orgs["a"], scopes, user=orgs["admin"])
        assert info.value.sqlstate == "PT422"
    for name in ("", "   ", "\u200b", "x\u202ey", "x" * 201):
        with pytest.raises(psycopg.Error) as info:
            conn.execute("select public.create_api_key(%s, %s, '{orders:read}')", (orgs["a"], name))
        assert info.value.sqlstate == "PT422" and info.value.diag.message_hint == "name"
    spaced = conn.execute("select public.create_api_key(%s, '  Warehouse   one ', '{orders:read}') as k",
                          (orgs["a"],)).fetchone()["k"]
    assert spaced["name"] == "Warehouse one"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update public.api_keys set name = ' x ' where id = %s", (spaced["id"],))
    with pytest.raises(psycopg.Error, match="future"):
        conn.execute("select public.create_api_key(%s, 'x', '{orders:read}', now() - interval '1 day')", (orgs["a"],))


def test_right_scope_200_missing_scope_403_revoked_or_expired_401_other_org_404(conn, api, orgs):
    mine = customer(conn, orgs["a"])
    theirs = customer(conn, orgs["b"], name="Boris")
    reader = create_key(conn, orgs["a"], ["customers:read"])
    orders_only = create_key(conn, orgs["a"], ["orders:read"])

    r = api.get(f"/api/customers/{mine}", headers={"X-Api-Key": reader["key"]})
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["phone"], r.json()["full_name"]) == (str(mine), "+4915123456789", "Anna Schmidt")
    assert api.get(f"/customers/{mine}", headers={"X-Api-Key": reader["key"]}).status_code == 200  # deployed alone

    def problem(resp, status, code):
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == code and resp.headers["X-Request-Id"]

    problem(api.get(f"/api/customers/{mine}", headers={"X-Api-Key": orders_only["key"]}), 403, "missing_scope")
    problem(api.get(f"/api/customers/{theirs}", headers={"X-Api-Key": reader["key"]}), 404, "not_found")
    problem(api.get(f"/api/customers/{uuid.uuid4()}", headers={"X-Api-Key": reader["key"]}), 404, "not_found")
    problem(api.get(f"/api/customers/{mine}"), 401, "api_key_missing")
    problem(api.get(f"/api/customers/{mine}", headers={"X-Api-Key": "crm_" + "x" * 43}), 401, "api_key_invalid")
    problem(api.get(f"/api/customers/{mine}", headers={"X-Api-Key": "hello"}), 401, "api_key_invalid")
    problem(api.post(f"/api/customers/{mine}", headers={"X-Api-Key": reader["key"]}), 405, "method_not_allowed")
    problem(api.get("/api/nothing", headers={"X-Api-Key": reader["key"]}), 404, "not_found")

    conn.execute("select public.revoke_api_key(%s)", (reader["id"],))
    problem(api.get(f"/api/customers/{mine}", headers={"X-Api-Key": reader["key"]}), 401, "api_key_revoked")

    expiring = create_key(conn, orgs["a"], ["customers:read"])
    assert api.get(f"/api/customers/{mine}", headers={"X-Api-Key": expiring["key"]}).status_code == 200
    conn.execute("update public.api_keys set expires_at = now() - interval '1 second' where id = %s", (expiring["id"],))
    problem(api.get(f"/api/customers/{mine}", headers={"X-Api-Key": expiring["key"]}), 401, "api_key_expired")
    used = conn.execute("select last_used_at from public.api_keys where id = %s", (expiring["id"],)).fetchone()
    assert used["last_used_at"] is not None


def test_every_refused_key_is_challenged_whether_python_or_sql_refused_it(conn, api, orgs):
    """RFC 9110: a 401 names the scheme. A missing or malformed key is refused in Python; an unknown,
    revoked or expired one by `private.api_authenticate` (PT401): the same challenge either way."""
    mine = customer(conn, orgs["a"])
    revoked = create_key(conn, orgs["a"], ["customers:read"])
    conn.execute("select public.revoke_api_key(%s)", (revoked["id"],))
    refusals = {
        "api_key_missing": {},  # Python
        "api_key_invalid": {"X-Api-Key": "hello"},  # Python
        "api_key_revoked": {"X-Api-Key": revoked["key"]},  # SQL
    }
    for code, headers in refusals.items():
        resp = api.get(f"/api/customers/{mine}", headers=headers)
        assert (resp.status_code, resp.json()["code"]) == (401, code), resp.text
        assert resp.headers["WWW-Authenticate"] == "ApiKey", code
    unknown = api.get(f"/api/customers/{mine}", headers={"X-Api-Key": "crm_" + "x" * 43})  # SQL: no such key
    assert (unknown.status_code, unknown.json()["code"], unknown.headers["WWW-Authenticate"]) == (
        401, "api_key_invalid", "ApiKey")


def test_customer_search_matches_as_search_customers_within_the_keys_org(conn, api, orgs):
    mine = customer(conn, orgs["a"], name="Иванов Пётр", phone="+4915123456789", email="petr@example.com")
    customer(conn, orgs["b"], name="Ivanov Other", phone="+4915123456780")
    key = create_key(conn, orgs["a"], ["customers:read"])["key"]
    for q in ("0151 2345 6789", "Ivanov", "PETR@example.com"):
        r = api.get("/api/customers", params={"q": q}, headers={"X-Api-Key": key})
        assert r.status_code == 200, r.text
        assert [c["id"] for c in r.json()["items"]] == [str(mine)], q
    assert api.get("/api/customers", headers={"X-Api-Key": key}).status_code == 400
    assert api.get("/api/customers", params={"q": "x", "limit": "500"}, headers={"X-Api-Key": key}).status_code == 422


def test_orders_by_id_or_code_only_in_the_keys_org(conn, api, orgs):
    order = make_order(conn, orgs["a"], customer(conn, orgs["a"]))
    other = make_order(conn, orgs["b"], customer(conn, orgs["b"]))
    code = conn.execute("select order_code from public.orders where id = %s", (order,)).fetchone()["order_code"]
    other_code = conn.execute("select order_code from public.orders where id = %s", (other,)).fetchone()["order_code"]
    key = create_key(conn, orgs["a"], ["orders:read"])["key"]
    for ref in (str(order), code, code.lower()):
        r = api.get(f"/api/orders/{ref}", headers={"X-Api-Key": key})
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["order_code"], r.json()["status"]) == (str(order), code, "under_inspection")
    for ref in (str(other), other_code, "nonsense"):
        assert api.get(f"/api/orders/{ref}", headers={"X-Api-Key": key}).status_code == 404
    assert api.get(f"/api/customers/{uuid.uuid4()}", headers={"X-Api-Key": key}).status_code == 403


def test_post_leads_finds_or_creates_the_customer_by_phone_then_email(conn, api, orgs):
    key = create_key(conn, orgs["a"], ["leads:write"])["key"]
    body = {"customer": {"full_name": "Jana Nováková", "phone": "0151 2345 6789", "email": "Jana@Example.com"},
            "notes": "asked about a Canyon frame", "external_item_ref": "listing-4711"}
    first = api.post("/api/leads", json=body, headers={"X-Api-Key": key})
    assert first.status_code == 201, first.text
    assert first.json()["customer_created"] is True and first.json()["status"] == "new"
    again = api.post("/api/leads", json={"customer": {"full_name": "J. N.", "phone": "+49 151 23456789"}},
                     headers={"X-Api-Key": key})
    assert again.status_code == 201 and again.json()["customer_id"] == first.json()["customer_id"]
    assert again.json()["customer_created"] is False
    by_email = api.post("/api/leads", json={"customer": {"full_name": "Jana", "email": "jana@example.com"}},
                        headers={"X-Api-Key": key})
    assert by_email.json()["customer_id"] == first.json()["customer_id"]
    leads = conn.execute("select source, notes, external_item_ref from public.leads where org_id = %s"
                         " order by created_at", (orgs["a"],)).fetchall()
    assert [lead["source"] for lead in leads] == ["manual"] * 3
    assert leads[0]["external_item_ref"] == "listing-4711"
    outbox = conn.execute("select event_type from private.outbox where org_id = %s order by id",
                          (orgs["a"],)).fetchall()
    assert [e["event_type"] for e in outbox].count("lead.created") == 3

    bad = api.post("/api/leads", json={"customer": {"full_name": "X", "phone": "12"}}, headers={"X-Api-Key": key})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "customer.phone"
    assert api.post("/api/leads", json={"customer": {"full_name": "X"}}, headers={"X-Api-Key": key}).status_code == 422
    assert api.post("/api/leads", content=b"{", headers={"X-Api-Key": key,
                                                         "content-type": "application/json"}).status_code == 400
    reader = create_key(conn, orgs["a"], ["customers:read"])["key"]
    assert api.post("/api/leads", json=body, headers={"X-Api-Key": reader}).status_code == 403


def test_a_key_never_appears_in_clear_in_any_table_or_log(conn, api, orgs, caplog):
    caplog.set_level(logging.DEBUG)
    k = create_key(conn, orgs["a"], ["customers:read", "leads:write"], user=orgs["admin"])
    mine = customer(conn, orgs["a"])
    headers = {"X-Api-Key": k["key"]}
    assert api.get(f"/api/customers/{mine}", headers=headers).status_code == 200
    assert api.get("/api/orders/BK-AAAAAAAA", headers=headers).status_code == 403
    assert api.post("/api/leads", json={"customer": {"full_name": "Z", "phone": "0151 2345 6780"}},
                    headers=headers).status_code == 201
    conn.execute("select public.revoke_api_key(%s)", (k["id"],))
    assert api.get(f"/api/customers/{mine}", headers=headers).status_code == 401

    secret_part = k["key"][12:]
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema')"
        "   and n.nspname not like 'pg_toast%'").fetchall()
    assert len(tables) > 20
    for t in tables:
        found = conn.execute(sql.SQL("select count(*) as n from {}.{} x where x::text like %s").format(
            sql.Identifier(t["nspname"]), sql.Identifier(t["relname"])), (f"%{secret_part}%",)).fetchone()["n"]
        assert found == 0, f"{t['nspname']}.{t['relname']} holds the key"
    assert secret_part not in caplog.text


def test_crm_dev_serves_the_api_under_api(conn, database, orgs, monkeypatch, tmp_path):
    from crm.sealing import generate_key
    from crm.tools.devserver import build_app

    for name, value in {"CRM_JWT_SECRET": "dev-test-secret-of-at-least-32-bytes!", "CRM_CRON_SECRET": "cron",
                        "CRM_PUBLIC_URL": "http://127.0.0.1", "CRM_STORAGE_DIR": str(tmp_path),
                        "CRM_SECRETS_KEY": generate_key()}.items():
        monkeypatch.setenv(name, value)
    key = create_key(conn, orgs["a"], ["customers:read"])["key"]
    mine = customer(conn, orgs["a"])
    with LiveServer(build_app(tmp_path)) as live:
        assert httpx.get(f"{live.url}/api/customers/{mine}").json()["code"] == "api_key_missing"
        r = httpx.get(f"{live.url}/api/customers/{mine}", headers={"X-Api-Key": key})
    assert r.status_code == 200 and r.json()["id"] == str(mine)

"""`openapi.yaml` (SPEC 7): a valid OpenAPI 3.1 document, served by `crm dev` at `/openapi.json`,
naming exactly the routes the code answers, and every real answer of every route conforms to it.

`crm dev`'s app (every function mounted as deployed) runs on loopback; each response the tests get
goes through openapi-core's response validator (status documented, headers, content type, body).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_spec_validator import validate as validate_spec
from standardwebhooks import Webhook
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as WsgiRequest
from werkzeug.wrappers import Response as WsgiResponse

from crm.auth import mint_token
from crm.sealing import generate_key
from crm.tools import openapi
from crm.tools.devserver import FUNCTIONS, build_app
from tests.helpers import BOOKING_EXAMPLE, LiveServer, make_org, make_staff

JWT_SECRET = "openapi-test-jwt-secret-0123456789abcdef"
CRON_SECRET = "openapi-test-cron-secret"
META_SECRET = "meta-app-secret-0123456789"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
NO_ROUTE = re.compile(r"^No (\w+ )?route")


def test_the_document_is_valid_openapi_3_1():
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate_spec(doc)


# -- crm dev on loopback, every response validated ------------------------------------------------
class Contract:
    """An httpx client whose every response is checked against the document (raises on a mismatch)."""

    def __init__(self, base_url: str):
        doc = copy.deepcopy(openapi.document())
        doc["servers"] = [{"url": base_url}]
        self.spec = OpenAPI.from_dict(doc, config=Config(
            extra_media_type_deserializers={"application/problem+json": json.loads}))
        self.checked: list[tuple[str, str, int]] = []
        self.http = httpx.Client(base_url=base_url, timeout=30, event_hooks={"response": [self._check]})

    def _check(self, resp: httpx.Response) -> None:
        resp.read()
        req = resp.request
        environ = EnvironBuilder(method=req.method, base_url=f"{req.url.scheme}://{req.url.netloc.decode()}",
                                 path=req.url.path, query_string=req.url.query.decode(),
                                 headers=list(req.headers.items()), data=req.content).get_environ()
        wsgi_resp = WsgiResponse(resp.content, status=resp.status_code, headers=list(resp.headers.items()))
        try:
            self.spec.validate_response(WerkzeugOpenAPIRequest(WsgiRequest(environ)),
                                        WerkzeugOpenAPIResponse(wsgi_resp))
        except (OperationNotFound, PathNotFound):
            # Not a documented operation: the answer must be the documented refusal of one.
            assert resp.status_code in (404, 405), (req.method, req.url.path, resp.status_code)
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.headers["X-Request-Id"]
        self.checked.append((req.method, req.url.path, resp.status_code))

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def dev_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CRM_JWT_SECRET", JWT_SECRET)
    monkeypatch.delenv("CRM_JWKS_URL", raising=False)
    monkeypatch.delenv("CRM_JWT_ISSUER", raising=False)
    monkeypatch.setenv("CRM_CRON_SECRET", CRON_SECRET)
    monkeypatch.setenv("CRM_SECRETS_KEY", generate_key())
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "1000")
    monkeypatch.setenv("CRM_PUBLIC_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("CRM_STORAGE_DIR", str(tmp_path / "media"))


@pytest.fixture
def dev(dev_env, database, tmp_path):
    with LiveServer(build_app(tmp_path / "media")) as live:
        contract = Contract(live.url)
        try:
            yield contract
        finally:
            contract.close()


@pytest.fixture
def world(conn):
    org = make_org(conn, slug=f"oa-{uuid.uuid4().hex[:8]}", country="DE")
    slug = conn.execute("select slug from public.organizations where id = %s", (org,)).fetchone()["slug"]
    return {"org": org, "slug": slug, "manager": make_staff(conn, org, "manager"),
            "viewer": make_staff(conn, org, "viewer")}


def booking(slug: str, **customer) -> dict:
    body = copy.deepcopy(BOOKING_EXAMPLE)
    body["org"] = slug
    body["customer"].update(customer)
    return body


# -- the route table ------------------------------------------------------------------------------
def _operations() -> list[tuple[str, str, re.Pattern]]:
    """(method, path template, path regex) for every operation of the document."""
    out = []
    for template, item in openapi.document()["paths"].items():
        shared = item.get("parameters", [])
        for method, op in item.items():
            if method.upper() not in METHODS:
                continue
            params = {p["name"]: p for p in shared + op.get("parameters", []) if p.get("in") == "path"}

            def segment(match: re.Match, params=params) -> str:
                enum = params[match.group(1)]["schema"].get("enum")
                return "(" + "|".join(map(re.escape, enum)) + ")" if enum else "[^/]+"

            pattern = re.sub(r"\\\{(\w+)\\\}", segment, re.escape(template))
            out.append((method.upper(), template, re.compile(f"^{pattern}$")))
    return out


SAMPLES = {"id": str(uuid.UUID(int=7)), "source": "wms", "org": "no-such-org", "job": "purge-booking-state",
           "ref": "BK-AAAAAAAA", "name": "nothing.webp"}


def test_document_paths_are_exactly_crm_devs_mounts():
    doc_prefixes = {"/" + path.split("/")[1] for path in openapi.document()["paths"]}
    root_routes = {"/healthz", "/openapi.json", "/media"}  # crm dev's root app
    assert doc_prefixes == set(FUNCTIONS) | root_routes


def test_every_documented_operation_is_routed_and_nothing_else_is(dev, world):
    """Each documented (method, path) reaches a handler (no 405, no 'no route' 404), without
    credentials; every other method on the mounted paths, and deeper or shorter paths, is 405/404."""
    operations = _operations()
    for method, template, _ in operations:
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], template)
        resp = dev.http.request(method, path)
        routed = resp.status_code != 405 and not (resp.status_code == 404 and NO_ROUTE.match(resp.json()["detail"]))
        assert routed, (method, path, resp.status_code, resp.text)

    shapes = ["/x", "/healthz/x", "/media", "/media/x/y", "/openapi.json/x"]
    for prefix in FUNCTIONS:
        shapes += [prefix, f"{prefix}/x", f"{prefix}/wms/x", f"{prefix}/x/y/z", f"{prefix}/customers",
                   f"{prefix}/customers/x", f"{prefix}/orders/x", f"{prefix}/leads", f"{prefix}/meta/x"]
    for path in shapes:
        for method in METHODS:
            if any(m == method and p.match(path) for m, _, p in operations):
                continue
            resp = dev.http.request(method, path)
            assert resp.status_code in (404, 405), (method, path, resp.status_code, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json")


# -- each route's answers, validated ----------------------------------------------------------------
def test_crm_dev_serves_the_document_as_json(dev):
    resp = dev.http.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json() == json.loads(json.dumps(openapi.document()))
    assert dev.http.post("/openapi.json").status_code == 405
    assert dev.http.get("/healthz").json() == {"status": "ok", "database": "up"}


def test_booking_answers(dev, world, monkeypatch):
    key = {"Idempotency-Key": f"oa-{uuid.uuid4()}"}
    first = dev.http.post("/booking", json=booking(world["slug"]), headers=key)
    assert first.status_code == 201, first.text
    again = dev.http.post("/booking", json=booking(world["slug"]), headers=key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert dev.http.post("/booking", json=booking(world["slug"], city="Hamburg"), headers=key).status_code == 422
    assert dev.http.post("/booking", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert dev.http.post("/booking", content=b"org=x").status_code == 415
    assert dev.http.post("/booking", json=booking("no-such-org")).status_code == 404
    bad = dev.http.post("/booking", json=booking(world["slug"], phone="12", email="nope"))
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["errors"]} >= {"customer.phone", "customer.email"}
    assert dev.http.post("/booking", json={"pad": "x" * 70_000}).status_code == 413
    assert dev.http.post("/booking", headers={"Idempotency-Key": "bad key"}, json={}).status_code == 400
    assert dev.http.get("/booking").status_code == 405
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "1")
    limited = [dev.http.post("/booking", json=booking(world["slug"])) for _ in range(2)]
    assert limited[-1].status_code == 429 and limited[-1].headers["Retry-After"]


def test_leads_answers(dev, world, conn):
    made = dev.http.post("/booking", json=booking(world["slug"])).json()
    auth = {"Authorization": f"Bearer {mint_token(world['manager'], None, JWT_SECRET)}"}
    ok = dev.http.patch(f"/leads/{made['lead_id']}", json={"status": "contacted", "note": "called"}, headers=auth)
    assert ok.status_code == 200, ok.text
    assert dev.http.patch(f"/leads/{made['lead_id']}", json={"status": "new"}, headers=auth).status_code == 409
    assert dev.http.patch(f"/leads/{made['lead_id']}", json={"status": "won"}, headers=auth).status_code == 422
    assert dev.http.patch(f"/leads/{made['lead_id']}", json={}, headers=auth).status_code == 400
    assert dev.http.patch("/leads/not-an-id", json={"status": "lost"}, headers=auth).status_code == 400
    assert dev.http.patch(f"/leads/{uuid.uuid4()}", json={"status": "lost"}, headers=auth).status_code == 404
    assert dev.http.patch(f"/leads/{made['lead_id']}", json={"status": "lost"}).status_code == 401
    viewer = {"Authorization": f"Bearer {mint_token(world['viewer'], None, JWT_SECRET)}"}
    assert dev.http.patch(f"/leads/{made['lead_id']}", json={"note": "hi"}, headers=viewer).status_code == 403
    assert dev.http.patch(f"/leads/{made['lead_id']}", content=b"x", headers=auth).status_code == 415


def test_reconcile_answers(dev):
    cron = {"X-Cron-Secret": CRON_SECRET}
    assert dev.http.post("/reconcile/purge-booking-state", headers=cron).json()["job"] == "purge-booking-state"
    assert dev.http.post("/reconcile/purge-booking-state").status_code == 401
    assert dev.http.post("/reconcile/no-such-job", headers=cron).status_code == 404
    assert dev.http.post("/reconcile/cache-images?limit=many", headers=cron).status_code == 400
    assert dev.http.get("/reconcile/cache-images", headers=cron).status_code == 405


def test_webhooks_answers(dev, world, conn):
    wms = conn.execute("select public.create_integration(%s, 'wms', '{}', '{}') as i", (world["org"],)).fetchone()["i"]
    conn.execute("select public.create_integration(%s, 'meta', %s, %s)",
                 (world["org"], json.dumps({"verify_token": "verify-me-123"}),
                  json.dumps({"app_secret": META_SECRET, "page_access_token": "EAAB-page-access-token"})))
    raw = json.dumps({"type": "inventory.updated", "timestamp": "2026-12-01T09:00:00Z",
                      "data": {"items": [{"sku": "BIKE-1", "name": "Bike", "available": 1, "reserved": 0,
                                          "total": 1, "updated_at": "2026-12-01T09:00:00Z"}]}})
    msg_id, at = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
    signed = {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "content-type": "application/json",
              "webhook-signature": Webhook(wms["secrets"]["webhook_secret"]).sign(msg_id, at, raw)}
    ok = dev.http.post(f"/webhooks/wms/{world['slug']}", content=raw, headers=signed)
    assert ok.status_code == 200 and ok.json()["accepted"] == 1, ok.text
    assert dev.http.post(f"/webhooks/wms/{world['slug']}", content=raw, headers=signed).json()["duplicates"] == 1
    assert dev.http.post(f"/webhooks/wms/{world['slug']}", content=raw).status_code == 401
    assert dev.http.post(f"/webhooks/twilio/{world['slug']}", content=raw).status_code == 404
    assert dev.http.post(f"/webhooks/wms/{world['slug']}", content=b"x" * 300_000).status_code == 413
    body = b'{"object": "page"}'
    sig = "sha256=" + hmac.new(META_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert dev.http.post(f"/webhooks/meta/{world['slug']}", content=body,
                         headers={"X-Hub-Signature-256": sig, "content-type": "application/json"}).status_code == 400
    shake = {"hub.mode": "subscribe", "hub.verify_token": "verify-me-123", "hub.challenge": "1158201444"}
    ok = dev.http.get(f"/webhooks/meta/{world['slug']}", params=shake)
    assert ok.status_code == 200 and ok.text == "1158201444"
    wrong = {**shake, "hub.verify_token": "no"}
    assert dev.http.get(f"/webhooks/meta/{world['slug']}", params=wrong).status_code == 403
    assert dev.http.get(f"/webhooks/wms/{world['slug']}", params=shake).status_code == 404
    assert dev.http.delete(f"/webhooks/wms/{world['slug']}").status_code == 405


def test_api_answers(dev, world, conn):
    made = dev.http.post("/booking", json=booking(world["slug"])).json()
    made["customer_id"] = conn.execute("select customer_id from public.leads where id = %s",
                                       (made["lead_id"],)).fetchone()["customer_id"]
    key = conn.execute("select public.create_api_key(%s, 'warehouse', %s, null) as k",
                       (world["org"], ["customers:read", "orders:read", "leads:write"])).fetchone()["k"]["key"]
    narrow = conn.execute("select public.create_api_key(%s, 'narrow', %s, null) as k",
                          (world["org"], ["orders:read"])).fetchone()["k"]["key"]
    h = {"X-Api-Key": key}
    assert dev.http.get(f"/api/customers/{made['customer_id']}", headers=h).status_code == 200
    assert dev.http.get(f"/api/customers/{uuid.uuid4()}", headers=h).status_code == 404
    assert dev.http.get(f"/api/customers/{made['customer_id']}", headers={"X-Api-Key": narrow}).status_code == 403
    assert dev.http.get(f"/api/customers/{made['customer_id']}").status_code == 401
    found = dev.http.get("/api/customers", params={"q": "0151 2345 6789"}, headers=h)
    assert found.status_code == 200 and found.json()["items"], found.text
    assert dev.http.get("/api/customers", headers=h).status_code == 400
    assert dev.http.get("/api/customers", params={"q": "x", "limit": "lots"}, headers=h).status_code == 400
    assert dev.http.get(f"/api/orders/{made['order_code']}", headers=h).status_code == 200
    assert dev.http.get(f"/api/orders/{made['order_id']}", headers=h).status_code == 200
    assert dev.http.get("/api/orders/BK-AAAAAAAA", headers=h).status_code == 404
    lead = dev.http.post("/api/leads", json={"customer": {"full_name": "Jana", "phone": "0151 2345 6780"},
                                             "notes": "asked at the counter"}, headers=h)
    assert lead.status_code == 201, lead.text
    assert dev.http.post("/api/leads", json={"customer": {"full_name": "Jana"}}, headers=h).status_code == 422
    as_json = {**h, "content-type": "application/json"}
    assert dev.http.post("/api/leads", content=b"{", headers=as_json).status_code == 400
    assert dev.http.post("/api/leads", content=b"x", headers=h).status_code == 415
    assert dev.http.post("/api/leads", json={"customer": {"full_name": "J", "email": "j@example.com"}},
                         headers={"X-Api-Key": narrow}).status_code == 403
    assert dev.http.delete("/api/leads", headers=h).status_code == 405
    statuses = {(m, s) for m, _, s in dev.checked}
    assert ("GET", 200) in statuses and ("POST", 201) in statuses

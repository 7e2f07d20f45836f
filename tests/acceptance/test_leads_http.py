"""`PATCH /leads/{id}` over real HTTP (SPEC §7.3): every status code, as deployed.

The function runs as functions-framework deploys it (`function_app('leads')`) behind a real HTTP
server on 127.0.0.1, against a migrated database. Tokens come from `crm token` (the real CLI, as
a subprocess) or `crm.auth.mint_token`, which the CLI uses; fixtures are inserted as superuser.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest

from crm.auth import mint_token
from crm.db import Database, get_database, set_database
from crm.errors import ConfigError
from tests.helpers import LiveServer, function_app, make_org, make_staff, make_user, refused_port
from tests.integration.test_auth import KeyServer, SigningKey

SECRET = "acceptance-secret-that-is-long-enough-for-hs256-42"

#: SPEC §6.4, the lead machine: (from, to) pairs that exist.
LEAD_MOVES = {
    ("new", "contacted"), ("contacted", "qualified"), ("qualified", "converted"),
    ("new", "lost"), ("contacted", "lost"), ("qualified", "lost"),
    ("new", "junk"), ("contacted", "junk"), ("qualified", "junk"),
    ("lost", "new"),
}


@pytest.fixture
def jwt_env(monkeypatch):
    monkeypatch.setenv("CRM_JWT_SECRET", SECRET)
    monkeypatch.delenv("CRM_JWKS_URL", raising=False)
    monkeypatch.delenv("CRM_JWT_ISSUER", raising=False)


@pytest.fixture
def live(jwt_env, database):
    with LiveServer(function_app("leads")) as server, \
            httpx.Client(base_url=server.url, timeout=20) as http:
        yield http


class World:
    """One org with a customer and staff of every role, and an outsider org."""

    def __init__(self, conn):
        self.conn = conn
        self.org = make_org(conn)
        self.other_org = make_org(conn)
        self.admin = make_staff(conn, self.org, "admin")
        self.manager = make_staff(conn, self.org, "manager")
        self.manager2 = make_staff(conn, self.org, "manager")
        self.agent = make_staff(conn, self.org, "agent")
        self.viewer = make_staff(conn, self.org, "viewer")
        self.outsider = make_staff(conn, self.other_org, "manager")
        self.nobody = make_user(conn)
        self.customer = self.make_customer(self.org)
        self.other_customer = self.make_customer(self.other_org)
        self._legacy = 7000 + int(uuid.uuid4().int % 1000) * 1000

    def make_customer(self, org) -> uuid.UUID:
        phone = "+4915" + str(uuid.uuid4().int)[:9]
        return self.conn.execute(
            "insert into public.customers (org_id, full_name, phone_e164) values (%s, %s, %s) returning id",
            (org, "Anna Schmidt", phone)).fetchone()["id"]

    def lead(self, *, status: str = "new", org=None, assigned_to=None, legacy: bool = True) -> dict:
        org = org or self.org
        customer = self.customer if org == self.org else self.other_customer
        self._legacy += 1
        row = self.conn.execute(
            "insert into public.leads (org_id, customer_id, source, legacy_id, assigned_to)"
            " values (%s, %s, 'manual', %s, %s) returning id, legacy_id",
            (org, customer, self._legacy if legacy else None, assigned_to)).fetchone()
        path = {"new": [], "contacted": ["contacted"], "qualified": ["contacted", "qualified"],
                "lost": ["lost"], "junk": ["junk"], "converted": ["contacted", "qualified", "converted"]}
        for step in path[status]:
            self.conn.execute("update public.leads set status = %s where id = %s", (step, row["id"]))
        return row

    def token(self, user, **kw) -> str:
        return mint_token(user, None, SECRET, **kw)

    def auth(self, user) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def state(self, lead_id) -> dict:
        """What a refused request must leave untouched (creation already wrote an event)."""
        return self.conn.execute(
            "select l.status::text, l.notes, l.assigned_to, l.updated_at,"
            " (select count(*) from public.lead_status_events e where e.lead_id = l.id) as events,"
            " (select coalesce(max(e.id), 0) from public.lead_status_events e where e.lead_id = l.id)"
            "   as last_event,"
            " (select count(*) from private.outbox o where o.aggregate_id = l.id"
            "   and o.event_type = 'lead.status_changed') as outbox"
            " from public.leads l where l.id = %s", (lead_id,)).fetchone()

    def events_since(self, lead_id, before: dict) -> list[dict]:
        return self.conn.execute(
            "select from_status::text, to_status::text, changed_by, note from public.lead_status_events"
            " where lead_id = %s and id > %s order by id", (lead_id, before["last_event"])).fetchall()


@pytest.fixture
def world(conn):
    return World(conn)


def problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["X-Request-Id"]
    body = resp.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["code"]
    return body


def cli_token(db_url: str, user) -> str:
    crm = Path(sys.executable).with_name("crm")
    env = {**os.environ, "DATABASE_URL": db_url, "CRM_JWT_SECRET": SECRET}
    done = subprocess.run([str(crm), "token", "--user", str(user), "--ttl", "300"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


# -- 200 --------------------------------------------------------------------------------------------

def test_manager_moves_a_lead_with_a_cli_token_and_one_event_and_outbox_row_commit(live, world, db_url):
    lead = world.lead()
    before = world.state(lead["id"])
    token = cli_token(db_url, world.manager)
    resp = live.patch(f"/{lead['id']}", json={"status": "contacted", "note": "called back"},
                      headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["id"] == str(lead["id"])
    assert body["status"] == "contacted"
    assert body["legacy_id"] == lead["legacy_id"]
    assert body["org_id"] == str(world.org)

    assert world.events_since(lead["id"], before) == [
        {"from_status": "new", "to_status": "contacted", "changed_by": world.manager, "note": "called back"}]
    outbox = world.conn.execute(
        "select org_id, aggregate_type, payload from private.outbox"
        " where aggregate_id = %s and event_type = 'lead.status_changed'", (lead["id"],)).fetchall()
    assert len(outbox) == 1
    assert outbox[0]["org_id"] == world.org
    assert outbox[0]["payload"]["type"] == "lead.status_changed"


def test_legacy_id_addresses_the_same_lead(live, world):
    lead = world.lead()
    resp = live.patch(f"/{lead['legacy_id']}", json={"status": "junk"}, headers=world.auth(world.admin))
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == str(lead["id"])
    assert world.state(lead["id"])["status"] == "junk"


def test_path_with_the_function_prefix_works_standalone(live, world):
    lead = world.lead()
    resp = live.patch(f"/leads/{lead['id']}/", json={"status": "lost"}, headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "lost"


def test_note_only_is_kept_without_a_status_event(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    resp = live.patch(f"/{lead['id']}", json={"note": "prefers WhatsApp"}, headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text
    state = world.state(lead["id"])
    assert "prefers WhatsApp" in state["notes"]
    assert resp.json()["notes"] == state["notes"]
    assert (state["status"], state["events"], state["outbox"]) == ("new", before["events"], before["outbox"])


def test_assigning_to_staff_and_the_agent_may_then_move_it(live, world):
    lead = world.lead()
    resp = live.patch(f"/{lead['id']}", json={"assigned_to": str(world.agent)},
                      headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text
    assert resp.json()["assigned_to"] == str(world.agent)
    resp = live.patch(f"/{lead['id']}", json={"status": "contacted"}, headers=world.auth(world.agent))
    assert resp.status_code == 200, resp.text
    assert world.state(lead["id"])["status"] == "contacted"


def test_same_status_is_a_no_op_without_an_event(live, world):
    lead = world.lead(status="contacted")
    before = world.state(lead["id"])
    resp = live.patch(f"/{lead['id']}", json={"status": "contacted"}, headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text
    after = world.state(lead["id"])
    assert after["status"] == "contacted"
    assert (after["events"], after["outbox"]) == (before["events"], before["outbox"])


def test_uppercase_uuid_in_the_path(live, world):
    lead = world.lead()
    resp = live.patch(f"/{str(lead['id']).upper()}", json={"status": "contacted"},
                      headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text


# -- 400 --------------------------------------------------------------------------------------------

# One database per test is the slow part; the many inputs of one kind share it.

MALFORMED_IDS = [
    "abc", "0", "-1", "1.5", "1e3", "99999999999999999999", "9223372036854775808",
    "12345678-1234-1234-1234-12345678901", "{12345678-1234-1234-1234-123456789012}",
    "123456781234123412341234567890ab", "%C2%B2", "%20", "null",
]


def test_malformed_ids_are_400(live, world):
    for bad_id in MALFORMED_IDS:
        resp = live.patch(f"/{bad_id}", json={"status": "contacted"}, headers=world.auth(world.manager))
        assert problem(resp, 400)["code"] == "malformed_id", bad_id
    assert problem(live.patch("/", json={"status": "contacted"}, headers=world.auth(world.manager)), 404)


def test_malformed_or_empty_bodies_are_400(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    for content in (b"", b"{", b"[1, 2]", b'"contacted"', b"null", b"{}", b"NaN", b"\xff\xfe"):
        resp = live.patch(f"/{lead['id']}", content=content,
                          headers={**world.auth(world.manager), "Content-Type": "application/json"})
        assert resp.status_code == 400, (content, resp.text)
        problem(resp, 400)
    assert world.state(lead["id"]) == before


def test_largest_legacy_id_is_well_formed(live, world):
    body = problem(live.patch("/9223372036854775807", json={"status": "contacted"},
                              headers=world.auth(world.manager)), 404)
    assert body["code"] == "lead_not_found"


# -- 401 --------------------------------------------------------------------------------------------

def unauthorized(resp: httpx.Response) -> dict:
    body = problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    return body


def test_missing_token_is_401(live, world):
    lead = world.lead()
    unauthorized(live.patch(f"/{lead['id']}", json={"status": "contacted"}))
    unauthorized(live.patch(f"/{lead['id']}", json={"status": "contacted"},
                            headers={"Authorization": "Basic bWFuYWdlcjpwdw=="}))
    assert world.state(lead["id"])["status"] == "new"


def test_bad_tokens_are_401(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    now = int(time.time())
    good = {"sub": str(world.manager), "role": "authenticated", "aud": "authenticated", "exp": now + 300}
    tokens = {
        "malformed": "not.a.jwt",
        "wrong_secret": mint_token(world.manager, None, "someone-else-s-secret-that-is-long-enough-00"),
        "expired": jwt.encode({**good, "exp": now - 3600}, SECRET, algorithm="HS256"),
        "wrong_aud": jwt.encode({**good, "aud": "anon"}, SECRET, algorithm="HS256"),
        "anon_role": jwt.encode({**good, "role": "anon"}, SECRET, algorithm="HS256"),
        "alg_none": jwt.encode(good, None, algorithm="none"),
        "sub_not_uuid": jwt.encode({**good, "sub": "manager"}, SECRET, algorithm="HS256"),
        "alg_not_a_string": ".".join(
            base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
            for part in ({"alg": ["HS256"], "typ": "JWT"}, good)) + ".c2ln",
    }
    for kind, token in tokens.items():
        resp = live.patch(f"/{lead['id']}", json={"status": "contacted"},
                          headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, kind
        assert unauthorized(resp)["code"] == "invalid_token", kind
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], kind
    assert world.state(lead["id"]) == before


def test_expired_cli_token_is_401(live, world, db_url):
    lead = world.lead()
    token = cli_token(db_url, world.manager)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    stale = jwt.encode({**claims, "exp": int(time.time()) - 120}, SECRET, algorithm="HS256")
    unauthorized(live.patch(f"/{lead['id']}", json={"status": "contacted"},
                            headers={"Authorization": f"Bearer {stale}"}))


# -- 403 --------------------------------------------------------------------------------------------

def test_viewer_may_see_but_not_change(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    for body in ({"status": "contacted"}, {"note": "hi"}, {"assigned_to": str(world.viewer)}):
        problem(live.patch(f"/{lead['id']}", json=body, headers=world.auth(world.viewer)), 403)
    assert world.state(lead["id"]) == before


def test_agent_may_not_change_a_lead_assigned_to_someone_else(live, world):
    mine = world.lead(assigned_to=world.agent)
    theirs = world.lead(assigned_to=world.manager)
    unassigned = world.lead()
    for lead in (theirs, unassigned):
        before = world.state(lead["id"])
        problem(live.patch(f"/{lead['id']}", json={"status": "contacted"},
                           headers=world.auth(world.agent)), 403)
        problem(live.patch(f"/{lead['legacy_id']}", json={"status": "contacted"},
                           headers=world.auth(world.agent)), 403)
        assert world.state(lead["id"]) == before
    assert live.patch(f"/{mine['id']}", json={"status": "contacted"},
                      headers=world.auth(world.agent)).status_code == 200


# -- 404 --------------------------------------------------------------------------------------------

def test_absent_and_hidden_leads_are_404(live, world):
    foreign = world.lead(org=world.other_org)
    for path in (f"/{uuid.uuid4()}", "/424242424242", f"/{foreign['id']}", f"/{foreign['legacy_id']}"):
        problem(live.patch(path, json={"status": "contacted"}, headers=world.auth(world.manager)), 404)
    assert world.state(foreign["id"])["status"] == "new"
    # The foreign org's own manager can change it: 404 above was RLS, not absence.
    assert live.patch(f"/{foreign['id']}", json={"status": "contacted"},
                      headers=world.auth(world.outsider)).status_code == 200


def test_a_user_on_no_staff_sees_nothing(live, world):
    lead = world.lead()
    problem(live.patch(f"/{lead['id']}", json={"status": "contacted"}, headers=world.auth(world.nobody)), 404)


# -- 409 --------------------------------------------------------------------------------------------

def test_refused_transitions_are_409_naming_both_and_write_nothing(live, world):
    for start, target in [("new", "converted"), ("new", "qualified"), ("converted", "lost"),
                          ("junk", "new"), ("lost", "contacted")]:
        lead = world.lead(status=start)
        before = world.state(lead["id"])
        body = problem(live.patch(f"/{lead['legacy_id']}", json={"status": target, "note": "try"},
                                  headers=world.auth(world.manager)), 409)
        assert start in body["detail"] and target in body["detail"], body
        assert world.state(lead["id"]) == before


# -- 422 --------------------------------------------------------------------------------------------

BAD_FIELDS = [
    ({"status": "won"}, "status"),
    ({"status": "NEW"}, "status"),
    ({"status": 3}, "status"),
    ({"status": None}, "status"),
    ({"stage": "client"}, "stage"),
    ({"status": "contacted", "org_id": str(uuid.uuid4())}, "org_id"),
    ({"note": "x" * 2001}, "note"),
    ({"note": "   "}, "note"),
    ({"note": 5}, "note"),
    ({"note": "a\u0000b"}, "note"),
    ({"assigned_to": "bob"}, "assigned_to"),
    ({"assigned_to": 12}, "assigned_to"),
    ({"assigned_to": None, "note": "ok"}, "assigned_to"),
]


def test_bad_fields_are_422_naming_the_field(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    for body, field in BAD_FIELDS:
        resp = live.patch(f"/{lead['id']}", json=body, headers=world.auth(world.manager))
        assert resp.status_code == 422, (body, resp.text)
        assert field in [e["field"] for e in problem(resp, 422)["errors"]], body
    assert world.state(lead["id"]) == before


def test_longest_note_is_accepted(live, world):
    lead = world.lead()
    resp = live.patch(f"/{lead['id']}", json={"note": "x" * 2000}, headers=world.auth(world.manager))
    assert resp.status_code == 200, resp.text


def test_assigning_to_a_non_member_is_422_and_rolls_back_the_status(live, world):
    lead = world.lead()
    before = world.state(lead["id"])
    for who in (world.outsider, world.nobody, uuid.uuid4()):
        resp = live.patch(f"/{lead['id']}", json={"status": "contacted", "assigned_to": str(who)},
                          headers=world.auth(world.manager))
        body = problem(resp, 422)
        assert body["code"] == "assigned_to_not_staff"
        assert [e["field"] for e in body["errors"]] == ["assigned_to"]
    assert world.state(lead["id"]) == before


# -- 405, 415, 503 ----------------------------------------------------------------------------------

def test_other_methods_are_405(live, world):
    lead = world.lead()
    for method in ("GET", "POST", "PUT", "DELETE"):
        resp = live.request(method, f"/{lead['id']}", headers=world.auth(world.manager))
        assert resp.status_code == 405, method
        problem(resp, 405)
        assert resp.headers["Allow"] == "PATCH"


def test_non_json_body_is_415(live, world):
    lead = world.lead()
    problem(live.patch(f"/{lead['id']}", content=b"status=contacted",
                       headers={**world.auth(world.manager),
                                "Content-Type": "application/x-www-form-urlencoded"}), 415)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_64_kib_is_413_and_changes_nothing(live, world, chunked):
    """SPEC 7: the limit is the same for PATCH /leads as for /booking, announced or streamed, and it
    comes before authentication details or field validation (a 70 KB note is 413, not 422)."""
    lead = world.lead()
    before = world.state(lead["id"])
    body = json.dumps({"status": "contacted", "note": "x" * 70_000}).encode()
    content = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
    resp = live.patch(f"/{lead['id']}", content=content,
                      headers={**world.auth(world.manager), "Content-Type": "application/json"})
    assert problem(resp, 413)["code"]
    assert world.state(lead["id"]) == before
    # Just under the limit the same kind of patch is read, and refused on its merits.
    small = json.dumps({"note": "x" * 60_000})
    assert len(small) < 64 * 1024
    assert problem(live.patch(f"/{lead['id']}", content=small, headers={
        **world.auth(world.manager), "Content-Type": "application/json"}), 422)["errors"][0]["field"] == "note"
    assert world.state(lead["id"]) == before


def test_database_down_is_503_with_retry_after(live, world):
    lead = world.lead()
    working = get_database()
    with refused_port() as port:
        down = Database(f"postgresql://postgres@127.0.0.1:{port}/none", min_size=0, max_size=1)
        down.open()
        set_database(down)
        try:
            started = time.monotonic()
            resp = live.patch(f"/{lead['id']}", json={"status": "contacted"}, headers=world.auth(world.manager))
            assert time.monotonic() - started < 10
        finally:
            set_database(working)
            down.close()
    problem(resp, 503)
    assert int(resp.headers["Retry-After"]) > 0


# -- concurrency ------------------------------------------------------------------------------------

def race(live, world, db_url, lead_id, patches: list[tuple[uuid.UUID, dict]]) -> list[httpx.Response]:
    """Send the patches at once and make them really overlap: a lock held on the lead keeps every
    one of them in flight, waiting inside its transaction, until all are; then they go."""
    results: list[httpx.Response | None] = [None] * len(patches)

    def send(i, user, body):
        results[i] = live.patch(f"/{lead_id}", json=body, headers=world.auth(user))

    with psycopg.connect(db_url) as blocker:
        blocker.execute("select 1 from public.leads where id = %s for update", (lead_id,))
        threads = [threading.Thread(target=send, args=(i, user, body)) for i, (user, body) in enumerate(patches)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            waiting = world.conn.execute(
                "select count(*) as n from pg_stat_activity where datname = current_database()"
                " and application_name = 'crm' and wait_event_type = 'Lock'").fetchone()["n"]
            if waiting == len(patches):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the patches never waited on the lead together")
        blocker.commit()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in results)
    return results


def test_concurrent_patches_end_in_a_reachable_state_with_one_event_per_change(live, world, db_url):
    for start, first, second in [("contacted", "qualified", "lost"), ("new", "contacted", "junk"),
                                 ("qualified", "converted", "lost"), ("new", "lost", "contacted")]:
        lead = world.lead(status=start)
        baseline = world.state(lead["id"])
        by = {first: world.manager, second: world.manager2}
        responses = race(live, world, db_url, lead["id"],
                         [(by[first], {"status": first, "note": f"to {first}"}),
                          (by[second], {"status": second, "note": f"to {second}"})])
        results = dict(zip((first, second), responses, strict=True))
        codes = sorted(r.status_code for r in responses)
        assert codes in ([200, 200], [200, 409]), {k: r.text for k, r in results.items()}
        succeeded = {target for target, r in results.items() if r.status_code == 200}
        new_events = world.events_since(lead["id"], baseline)
        assert len(new_events) == len(succeeded)
        assert {e["to_status"] for e in new_events} == succeeded
        assert all((e["from_status"], e["to_status"]) in LEAD_MOVES for e in new_events), new_events
        assert new_events[0]["from_status"] == start
        assert all(a["to_status"] == b["from_status"] for a, b in zip(new_events, new_events[1:], strict=False))
        assert all(e["changed_by"] == by[e["to_status"]] and e["note"] == f"to {e['to_status']}"
                   for e in new_events)
        state = world.state(lead["id"])
        assert state["status"] == new_events[-1]["to_status"]
        assert state["outbox"] - baseline["outbox"] == len(new_events)
        for target, r in results.items():
            if r.status_code == 409:
                assert target in r.json()["detail"]


def test_concurrent_patches_to_the_same_status_keep_both_notes(live, world, db_url):
    lead = world.lead()
    baseline = world.state(lead["id"])
    responses = race(live, world, db_url, lead["id"],
                     [(world.manager, {"status": "contacted", "note": "note from one"}),
                      (world.manager2, {"status": "contacted", "note": "note from two"})])
    assert [r.status_code for r in responses] == [200, 200]
    new_events = world.events_since(lead["id"], baseline)
    assert [(e["from_status"], e["to_status"]) for e in new_events] == [("new", "contacted")]
    recorded = " ".join(filter(None, [new_events[0]["note"], world.state(lead["id"])["notes"]]))
    assert "note from one" in recorded and "note from two" in recorded


# -- JWKS -------------------------------------------------------------------------------------------

def test_token_signed_by_a_jwks_key_is_accepted(monkeypatch, database, world):
    keys = KeyServer()
    key = SigningKey("ec")
    keys.keys = [key.jwk]
    monkeypatch.setenv("CRM_JWKS_URL", keys.url)
    monkeypatch.delenv("CRM_JWT_SECRET", raising=False)
    try:
        with LiveServer(function_app("leads")) as server, \
                httpx.Client(base_url=server.url, timeout=20) as http:
            lead = world.lead()
            before = world.state(lead["id"])
            now = int(time.time())
            token = key.sign({"sub": str(world.manager), "role": "authenticated", "aud": "authenticated",
                              "exp": now + 300, "iat": now})
            resp = http.patch(f"/{lead['id']}", json={"status": "contacted"},
                              headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200, resp.text
            forged = SigningKey("ec", kid=key.kid).sign({"sub": str(world.manager), "role": "authenticated",
                                                         "aud": "authenticated", "exp": now + 300})
            unauthorized(http.patch(f"/{lead['id']}", json={"status": "lost"},
                                    headers={"Authorization": f"Bearer {forged}"}))
            hs = mint_token(world.manager, None, SECRET)
            unauthorized(http.patch(f"/{lead['id']}", json={"status": "lost"},
                                    headers={"Authorization": f"Bearer {hs}"}))
        assert world.state(lead["id"])["status"] == "contacted"
        assert [e["changed_by"] for e in world.events_since(lead["id"], before)] == [world.manager]
    finally:
        keys.close()


# -- startup ----------------------------------------------------------------------------------------

def test_standalone_function_refuses_to_start_without_a_jwt_secret(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/unused")
    monkeypatch.delenv("CRM_JWT_SECRET", raising=False)
    monkeypatch.delenv("CRM_JWKS_URL", raising=False)
    with pytest.raises(ConfigError, match="CRM_JWT_SECRET"):
        function_app("leads")

"""pull-leads (SPEC 13): Twilio's call log and Meta's form leads as local HTTP servers (names resolved by
a stub, never by DNS), fed through the inbox with the webhooks' event ids: a lead pulled after its
webhook arrived, and the other way round, exists once; the cursor's look-back re-reads the last second."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from crm.imports.pull import Puller
from crm.inbox.jobs import Inbox
from crm.net import PostPolicy, SafePoster
from crm.sealing import SecretBox, parse_key
from tests.integration.json_server import JsonServer
from tests.integration.test_webhooks_in import (
    KEY,
    META_SECRET,
    PAGE_TOKEN,
    TWILIO_TOKEN,
    _env,  # noqa: F401 — autouse: CRM_SECRETS_KEY, loopback allowed, no CRM_PUBLIC_URL
    call,
    client,  # noqa: F401 — fixtures: the webhooks function on loopback
    create_integration,
    leadgen,
    meta_post,
    org,  # noqa: F401
    server,  # noqa: F401
    slug_of,
    twilio_post,
)

ACCOUNT = "AC" + "1" * 32
HOSTS = {"api.twilio.test", "graph.facebook.test"}


def stub_resolver(host: str, port: int) -> list[str]:
    assert host in HOSTS, host
    return ["127.0.0.1"]


def rfc2822(when: datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S +0000")


class Providers(JsonServer):
    """Twilio's REST API and Meta's Graph API on one loopback port, with pages of two rows."""

    def __init__(self):
        self.calls: list[dict] = []  # newest first, as Twilio lists them
        self.form_leads: dict[str, list[dict]] = {}
        self.next_override: str | None = None
        super().__init__(self.answer)

    def answer(self, path: str, query: dict, auth: str | None) -> tuple[int, dict]:
        page = int(query.get("Page", ["0"])[0])
        if path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json":
            if auth != "Basic " + base64.b64encode(f"{ACCOUNT}:{TWILIO_TOKEN}".encode()).decode():
                return 401, {"message": "Authenticate"}
            since = datetime.strptime(query["StartTime>"][0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            rows = [c for c in self.calls if c["_start"] >= since]
            chunk = rows[page * 2:page * 2 + 2]
            more = len(rows) > page * 2 + 2
            return 200, {"calls": [{k: v for k, v in c.items() if k != "_start"} for c in chunk],
                         "next_page_uri": (f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json?PageSize=2&Page={page + 1}"
                                           f"&StartTime%3E={query['StartTime>'][0]}") if more else None}
        parts = path.strip("/").split("/")
        if query.get("access_token") != [PAGE_TOKEN]:
            return 400, {"error": {"message": "Invalid OAuth access token"}}
        if len(parts) == 3 and parts[2] == "leads":
            [filtering] = json.loads(query["filtering"][0])
            assert (filtering["field"], filtering["operator"]) == ("time_created", "GREATER_THAN")
            rows = [lead for lead in self.form_leads.get(parts[1], [])
                    if datetime.fromisoformat(lead["created_time"]).timestamp() > filtering["value"]]
            after = int(query.get("after", ["0"])[0])
            chunk = rows[after:after + 2]
            paging = {}
            if len(rows) > after + 2:
                paging["next"] = self.next_override or (
                    f"http://graph.facebook.test:{self.port}/v21.0/{parts[1]}/leads?access_token={PAGE_TOKEN}"
                    f"&filtering={query['filtering'][0]}&after={after + 2}")
            return 200, {"data": chunk, "paging": paging}
        if len(parts) == 2:
            for leads in self.form_leads.values():
                for lead in leads:
                    if lead["id"] == parts[1]:
                        return 200, lead
        return 404, {"error": {"message": "Unsupported get request"}}


@pytest.fixture
def providers(monkeypatch):
    p = Providers()
    monkeypatch.setenv("CRM_TWILIO_API_URL", f"http://api.twilio.test:{p.port}")
    monkeypatch.setenv("CRM_META_GRAPH_URL", f"http://graph.facebook.test:{p.port}/v21.0")
    monkeypatch.setenv("CRM_PULL_LOOKBACK_SECONDS", "600")
    yield p
    p.close()


def client_for_providers() -> SafePoster:
    return SafePoster(PostPolicy(allow_loopback=True, timeout=5, max_response_bytes=1024 * 1024),
                      resolver=stub_resolver)


def pull(database) -> dict:
    puller = Puller(database, box=SecretBox(parse_key(KEY)), client=client_for_providers())
    try:
        return puller.run()
    finally:
        puller.close()


def process_inbox(database) -> dict:
    inbox = Inbox(database, box=SecretBox(parse_key(KEY)), client=client_for_providers())
    try:
        return inbox.run_once()
    finally:
        inbox.close()


def state(conn) -> dict:
    q = {"customers": "select count(*) n from customers", "leads": "select count(*) n from leads",
         "activities": "select count(*) n from activities", "events": "select count(*) n from private.inbound_events",
         "outbox": "select count(*) n from private.outbox",
         "versions": "select coalesce(sum(xmin::text::bigint), 0) n from leads"}
    return {k: conn.execute(v).fetchone()["n"] for k, v in q.items()}


def log_call(sid: str, start: datetime, frm: str = "+4915123456789", status: str = "completed") -> dict:
    return {"sid": sid, "account_sid": ACCOUNT, "status": status, "from": frm, "to": "+4930123456",
            "direction": "inbound", "duration": "42", "start_time": rfc2822(start),
            "end_time": rfc2822(start + timedelta(seconds=42)), "_start": start}


@pytest.fixture
def twilio(conn, org):  # noqa: F811
    integ = create_integration(conn, org, "twilio", settings={"account_sid": ACCOUNT},
                               secrets={"auth_token": TWILIO_TOKEN})
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"]}


def test_twilio_call_pulled_after_its_webhook_and_before_it_exists_once(conn, database, client, twilio,  # noqa: F811
                                                                         providers):
    now = datetime.now(UTC).replace(microsecond=0)
    sid_a, sid_b, sid_c = ("CA" + c * 32 for c in "abc")
    # A: the webhook arrives first.
    r = twilio_post(client, twilio, call(sid=sid_a, frm="+4915123456789"))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    providers.calls = [log_call(sid_c, now - timedelta(minutes=1), frm="+4917612345678"),
                       log_call(sid_b, now - timedelta(minutes=2), frm="+4916012345678"),
                       log_call(sid_a, now - timedelta(minutes=3), frm="+4915123456789"),
                       log_call("CA" + "d" * 32, now, status="in-progress", frm="+4917000000001")]
    providers.calls.sort(key=lambda c: c["_start"], reverse=True)
    summary = pull(database)
    assert summary["errors"] == []
    assert (summary["fetched"], summary["accepted"], summary["duplicates"], summary["processed"]) == (3, 2, 1, 2)
    assert len([p for p, _, _ in providers.requests if p.endswith("/Calls.json")]) == 2  # next_page_uri followed
    # One customer, one phone_call lead and one call activity per caller; A counted once.
    assert conn.execute("select count(*) n from leads where source = 'phone_call'").fetchone()["n"] == 3
    assert conn.execute("select count(*) n from activities where kind = 'call'").fetchone()["n"] == 3
    pulled = conn.execute("select payload from private.inbound_events where event_id = %s",
                          (f"{sid_b}:completed",)).fetchone()["payload"]
    assert pulled["crm"]["caller_e164"] == "+4916012345678" and pulled["crm"]["pulled"] is True

    # B: pulled first; its webhook then changes nothing.
    before = state(conn)
    again = twilio_post(client, twilio, call(sid=sid_b, frm="+4916012345678"))
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert state(conn) == before
    # The cursor stays before the unfinished call; a second pull reads the overlap and changes nothing.
    cursor = conn.execute("select cursor_at from private.pull_cursors").fetchone()["cursor_at"]
    assert cursor == now - timedelta(minutes=1)
    second = pull(database)
    assert (second["accepted"], second["duplicates"]) == (0, 3)
    assert state(conn) == before
    since = providers.requests[-1][1]["StartTime>"][0]
    assert since == (cursor - timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_call_sharing_the_last_timestamp_is_not_missed(conn, database, twilio, providers):
    now = datetime.now(UTC).replace(microsecond=0)
    providers.calls = [log_call("CA" + "1" * 32, now, frm="+4915123456789")]
    assert pull(database)["accepted"] == 1
    # Another call started in the same second shows up in the log only after the first pull.
    providers.calls.append(log_call("CA" + "2" * 32, now, frm="+4916012345678"))
    later = pull(database)
    assert (later["accepted"], later["duplicates"]) == (1, 1)
    assert conn.execute("select count(*) n from leads").fetchone()["n"] == 2


@pytest.fixture
def meta(conn, org):  # noqa: F811
    integ = create_integration(conn, org, "meta", settings={"verify_token": "verify-me-123", "form_ids": ["form-9"]},
                               secrets={"app_secret": META_SECRET, "page_access_token": PAGE_TOKEN})
    return {"org": org, "slug": slug_of(conn, org), "id": integ["id"]}


def form_lead(leadgen_id: str, when: datetime, phone: str | None = None, email: str | None = None,
              name: str = "Jana Nováková") -> dict:
    fields = [{"name": "full_name", "values": [name]}]
    if phone:
        fields.append({"name": "phone_number", "values": [phone]})
    if email:
        fields.append({"name": "email", "values": [email]})
    return {"id": leadgen_id, "created_time": when.strftime("%Y-%m-%dT%H:%M:%S+0000"), "form_id": "form-9",
            "field_data": fields}


def test_meta_lead_pulled_after_its_webhook_and_before_it_exists_once(conn, database, client, meta,  # noqa: F811
                                                                      providers):
    now = datetime.now(UTC).replace(microsecond=0)
    providers.form_leads["form-9"] = [
        form_lead("9001", now - timedelta(minutes=3), phone="0151 2345 6789"),
        form_lead("9002", now - timedelta(minutes=2), email="Ola@Example.com", name="Ola"),
        form_lead("9003", now - timedelta(minutes=1), phone="+49 160 1234 5678", name="Per"),
    ]
    # 9001: the webhook first, finished by process-inbox (which fetches it from the Graph API).
    r = meta_post(client, meta, leadgen("9001"))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert process_inbox(database)["processed"] == 1
    summary = pull(database)
    assert summary["errors"] == []
    assert (summary["fetched"], summary["accepted"], summary["duplicates"], summary["processed"]) == (3, 2, 1, 2)
    assert conn.execute("select count(*) n from leads where source = 'ads_form'").fetchone()["n"] == 3
    assert conn.execute("select count(*) n from activities where kind = 'ad_lead'").fetchone()["n"] == 3
    ola = conn.execute("select full_name, email from customers where email is not null").fetchone()
    assert ola == {"full_name": "Ola", "email": "ola@example.com"}
    # 9003: pulled first; its webhook is a duplicate and process-inbox has nothing to do.
    before = state(conn)
    again = meta_post(client, meta, leadgen("9003"))
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert process_inbox(database)["claimed"] == 0
    assert state(conn) == before
    cursor = conn.execute("select stream, cursor_at from private.pull_cursors").fetchone()
    assert cursor == {"stream": "form:form-9", "cursor_at": now - timedelta(minutes=1)}
    assert (pull(database)["duplicates"], state(conn)) == (3, before)


def test_paging_that_leaves_the_graph_api_is_refused_and_the_cursor_stays(conn, database, meta, providers):
    now = datetime.now(UTC).replace(microsecond=0)
    providers.form_leads["form-9"] = [form_lead(str(9100 + i), now - timedelta(minutes=i), email=f"p{i}@example.com")
                                      for i in range(3)]
    providers.next_override = "http://evil.example/steal"
    summary = pull(database)
    assert [e["error"] for e in summary["errors"]] == ["paging.next leaves the Graph API"]
    assert summary["accepted"] == 2  # the first page is in; the rest waits for the next pull
    assert conn.execute("select count(*) n from private.pull_cursors").fetchone()["n"] == 0
    assert all("evil" not in path for path, _, _ in providers.requests)


def test_a_twilio_integration_without_account_sid_is_reported(conn, database, org, providers):  # noqa: F811
    create_integration(conn, org, "twilio", secrets={"auth_token": TWILIO_TOKEN})
    summary = pull(database)
    assert summary["streams"] == 1 and "settings.account_sid" in summary["errors"][0]["error"]
    assert providers.requests == []


def test_pull_leads_is_a_job_and_needs_no_key_without_integrations(db_url, monkeypatch, capsys):
    from crm.tools.cli import main

    monkeypatch.delenv("CRM_SECRETS_KEY")
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["jobs", "run", "pull-leads"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["job"] == "pull-leads" and summary["streams"] == 0 and summary["errors"] == []

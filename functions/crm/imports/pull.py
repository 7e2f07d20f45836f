"""`pull-leads` (SPEC 8, 13): the backup pull of what the providers' webhooks may have missed.

Per enabled integration: the Twilio call log (`{CRM_TWILIO_API_URL}/2010-04-01/Accounts/{account_sid}/
Calls.json`, basic auth AccountSid:auth_token, `StartTime>=`, paging by `next_page_uri`) and each
Meta form's leads (`{CRM_META_GRAPH_URL}/{form_id}/leads`, `filtering` on `time_created`, paging by
`paging.next`), read from a cursor kept per integration and stream minus a look-back window, so
rows that share the last timestamp (or arrive late in the provider's index) are read again rather
than missed. Every row goes into the inbox under the webhook's event id (Twilio `CallSid:CallStatus`,
Meta `leadgen_id`): whichever of push and pull stores it first wins, the other changes nothing.
The cursor moves only after a stream was read to its end; no transaction is open during a request.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from crm import config
from crm.db import Database
from crm.errors import NotFound
from crm.inbox.jobs import graph_url
from crm.inbox.receive import load_integration
from crm.inbox.sources import Integration, call_event, meta_lead, rfc2822_time
from crm.jobs import JobOptions, job
from crm.net import PostPolicy, SafePoster
from crm.sealing import SecretBox, check_key, check_key_if_set

log = logging.getLogger("crm.pull")

TWILIO_DEFAULT = "https://api.twilio.com"
FIRST_PULL = timedelta(days=7)  # how far back the first pull of a stream reads
MAX_PAGES = 1000
MAX_PAGE_BYTES = 4 * 1024 * 1024
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_FORM_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class PullError(Exception):
    """A stream that could not be read to its end (its cursor stays)."""


def twilio_url() -> str:
    return (config.env("CRM_TWILIO_API_URL") or TWILIO_DEFAULT).rstrip("/")


def lookback() -> timedelta:
    raw = config.env("CRM_PULL_LOOKBACK_SECONDS") or "3600"
    try:
        return timedelta(seconds=max(0, int(raw)))
    except ValueError:
        return timedelta(hours=1)


def _iso_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def twilio_call_event(call: dict[str, Any], country: str | None) -> dict[str, Any]:
    """A call of the call log as the status callback of its final status would have stored it."""
    fields = {"CallSid": call["sid"], "AccountSid": call.get("account_sid"), "CallStatus": call["status"],
              "From": call.get("from"), "To": call.get("to"), "Direction": call.get("direction"),
              "CallDuration": None if call.get("duration") is None else str(call["duration"]),
              "Timestamp": call.get("end_time") or call.get("start_time")}
    return call_event({k: v for k, v in fields.items() if v is not None}, country, pulled=True).as_json()


class Puller:
    def __init__(self, db: Database, *, box: SecretBox | None = None, client: SafePoster | None = None):
        self.db = db
        self._box = box
        self.client = client or SafePoster(PostPolicy(
            allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"), timeout=30.0,
            max_response_bytes=MAX_PAGE_BYTES, user_agent="crm-pull/1.0"))
        self.summary: dict[str, Any] = {"job": "pull-leads", "streams": 0, "fetched": 0, "accepted": 0,
                                        "duplicates": 0, "processed": 0, "failed": 0, "errors": []}

    def close(self) -> None:
        self.client.close()

    @property
    def box(self) -> SecretBox:
        # Only needed once there is an integration to read: an installation without any runs the job
        # (under crm worker, every 5 min) without CRM_SECRETS_KEY.
        if self._box is None:
            self._box = SecretBox.from_env()
        return self._box

    # -- plumbing --------------------------------------------------------------------------------
    def _get_json(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        result = self.client.get(url, {"Accept": "application/json", **headers})
        if not result.ok:
            raise PullError(result.error or f"HTTP {result.status_code}")
        if len(result.body) >= self.client.policy.max_response_bytes:
            raise PullError("a page larger than the client's cap")
        try:
            body = json.loads(result.body)
        except ValueError:
            raise PullError("the answer is not JSON") from None
        if not isinstance(body, dict):
            raise PullError("the answer is not a JSON object")
        return body

    def _since(self, integ: Integration, stream: str) -> datetime:
        with self.db.transaction("service_role") as s:
            row = s.fetch_one("pull_cursor_get", {"integration_id": integ.id, "stream": stream})
        cursor = row["cursor_at"] if row else None
        return (cursor - lookback()) if cursor else datetime.now(UTC) - FIRST_PULL

    def _feed(self, integ: Integration, events: list[dict[str, Any]]) -> None:
        self.summary["fetched"] += len(events)
        if not events:
            return
        with self.db.transaction("service_role") as s:
            result = s.fetch_one("pull_receive", {"integration_id": integ.id, "events": json.dumps(events)})["result"]
        for key in ("accepted", "duplicates", "processed", "failed"):
            self.summary[key] += result[key]

    def _advance(self, integ: Integration, stream: str, when: datetime | None) -> None:
        if when is not None:
            with self.db.transaction("service_role") as s:
                s.fetch_one("pull_cursor_set", {"integration_id": integ.id, "stream": stream, "cursor_at": when})

    # -- providers -------------------------------------------------------------------------------
    def pull_twilio(self, integ: Integration) -> None:
        sid = str(integ.settings.get("account_sid") or "")
        if not _ACCOUNT_SID.match(sid):
            raise PullError("the twilio integration needs settings.account_sid (AC + 32 hex digits)")
        tokens = integ.values("auth_token")
        if not tokens:
            raise PullError("no auth_token: add it with rotate_integration_secret")
        auth = "Basic " + base64.b64encode(f"{sid}:{tokens[0]}".encode()).decode()
        since = self._since(integ, "calls")
        base = twilio_url()
        url: str | None = (f"{base}/2010-04-01/Accounts/{sid}/Calls.json?"
                           + urlencode({"StartTime>": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "PageSize": 100}))
        newest: datetime | None = None
        unfinished: datetime | None = None  # the cursor stays before a call that has not ended yet
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page = self._get_json(url, {"Authorization": auth})
            events = []
            for call in page.get("calls") or []:
                if not isinstance(call, dict) or not call.get("sid") or not call.get("status"):
                    continue
                started = rfc2822_time(call.get("start_time")) or rfc2822_time(call.get("date_created"))
                if call["status"] not in FINAL_CALL_STATUSES:
                    if started and (unfinished is None or started < unfinished):
                        unfinished = started
                    continue
                if started and (newest is None or started > newest):
                    newest = started
                events.append(twilio_call_event(call, integ.country))
            self._feed(integ, events)
            nxt = page.get("next_page_uri")
            if nxt and (not isinstance(nxt, str) or not nxt.startswith("/2010-04-01/")):
                raise PullError("next_page_uri is not a path of the Twilio API")
            url = f"{base}{nxt}" if nxt else None
        if url is not None:
            raise PullError(f"more than {MAX_PAGES} pages")
        if unfinished is not None:
            newest = min(newest or unfinished, unfinished)
        self._advance(integ, "calls", newest)

    def pull_meta_form(self, integ: Integration, form_id: str) -> None:
        tokens = integ.values("page_access_token")
        if not tokens:
            raise PullError("no page_access_token: add it with rotate_integration_secret")
        stream = f"form:{form_id}"
        since = self._since(integ, stream)
        base = graph_url()
        filtering = [{"field": "time_created", "operator": "GREATER_THAN", "value": int(since.timestamp())}]
        url: str | None = f"{base}/{quote(form_id, safe='')}/leads?" + urlencode({
            "access_token": tokens[0], "fields": "id,created_time,field_data,ad_id,form_id", "limit": 100,
            "filtering": json.dumps(filtering, separators=(",", ":"))})
        newest: datetime | None = None
        for _ in range(MAX_PAGES):
            if url is None:
                break
            page = self._get_json(url, {})
            events = []
            for lead in page.get("data") or []:
                if not isinstance(lead, dict) or not re.match(r"^[0-9A-Za-z_-]{1,64}$", str(lead.get("id", ""))):
                    continue
                created = _iso_time(lead.get("created_time"))
                if created and (newest is None or created > newest):
                    newest = created
                leadgen = str(lead["id"])
                events.append({
                    "event_id": leadgen, "event_type": "leadgen", "process": False,
                    "payload": {k: v for k, v in {"leadgen_id": leadgen, "form_id": form_id,
                                                  "created_time": lead.get("created_time"),
                                                  "ad_id": lead.get("ad_id"), "pulled": True}.items()
                                if v is not None},
                    "extra": meta_lead({**lead, "form_id": lead.get("form_id") or form_id}, integ.country)})
            self._feed(integ, events)
            nxt = (page.get("paging") or {}).get("next") if isinstance(page.get("paging"), dict) else None
            if nxt and (not isinstance(nxt, str) or not nxt.startswith(base + "/")):
                raise PullError("paging.next leaves the Graph API")  # it carries our access token
            url = nxt or None
        if url is not None:
            raise PullError(f"more than {MAX_PAGES} pages")
        self._advance(integ, stream, newest)

    def run(self) -> dict[str, Any]:
        with self.db.transaction("service_role") as s:
            integrations = s.fetch_all("pull_integrations")
        for row in integrations:
            with self.db.transaction("service_role") as s:
                try:
                    integ = load_integration(s, self.box, row["kind"], str(row["org_id"]))
                except NotFound:  # disabled meanwhile: nothing to pull
                    continue
            if integ.kind == "twilio":
                streams = [("calls", lambda i=integ: self.pull_twilio(i))]
            else:
                forms = integ.settings.get("form_ids") or []
                forms = [str(f) for f in forms] if isinstance(forms, list) else []
                streams = [(f"form:{f}", lambda i=integ, f=f: self.pull_meta_form(i, f))
                           for f in forms if _FORM_ID.match(f)]
            for stream, pull in streams:
                self.summary["streams"] += 1
                try:
                    pull()
                except PullError as exc:
                    log.warning("pull-leads: %s %s: %s", integ.id, stream, exc)
                    self.summary["errors"].append({"integration_id": integ.id, "kind": integ.kind,
                                                   "stream": stream, "error": str(exc)})
        return self.summary


@job("pull-leads", every_seconds=300, check=check_key_if_set, deployed_check=check_key,
     description="Backup pull of Twilio calls and Meta form leads since a cursor, deduplicated with the webhooks.")
def pull_leads(db: Database, options: JobOptions) -> dict[str, Any]:
    puller = Puller(db)
    try:
        return puller.run()
    finally:
        puller.close()

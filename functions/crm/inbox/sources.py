"""Webhooks in (SPEC 10): each source's signature check on the exact bytes, then its events.

Verification comes first and sees only raw bytes and headers; nothing is parsed before it passes.
Every comparison is constant-time (`hmac.compare_digest`, the libraries' own compares), and every
live secret of the integration is tried (several are live during a rotation).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from crm import contacts
from crm.errors import BadRequest, SignatureRefused
from crm.http import parse_form, parse_json

SOURCES = ("wms", "twilio", "meta")
_EVENT_ID = re.compile(r"^[\x21-\x7e]{1,300}$")
_LEADGEN_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


@dataclass
class Integration:
    id: str
    org_id: str
    kind: str
    enabled: bool
    settings: dict[str, Any]
    country: str | None
    #: secret name -> live values, newest first
    secrets: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        return self.secrets.get(name, [])


@dataclass(frozen=True)
class Event:
    event_id: str
    event_type: str
    payload: dict[str, Any]
    process: bool = True  # processed in the receiving transaction; False: left to process-inbox

    def as_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "event_type": self.event_type, "payload": self.payload,
                "process": self.process}


def unauthorized(detail: str) -> SignatureRefused:
    return SignatureRefused(detail)


# -- wms: Standard Webhooks ------------------------------------------------------------------------
def wms_events(integ: Integration, raw: bytes, headers: Mapping[str, str]) -> list[Event]:
    wanted = {k: headers.get(k, "") for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    if not all(wanted.values()):
        raise unauthorized("Missing webhook-id, webhook-timestamp or webhook-signature.")
    for secret in integ.values("webhook_secret"):
        try:
            # The library checks the ±5 min tolerance and compares in constant time.
            Webhook(secret).verify(raw, wanted, json_parse=False)
            break
        except Exception:  # noqa: BLE001, S112 — WebhookVerificationError, or a malformed header/body
            continue
    else:
        raise unauthorized("No valid signature for a live secret, or a timestamp outside ±5 minutes.")
    body = parse_json(raw)
    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not isinstance(body.get("data"), dict):
        raise BadRequest("A warehouse event is an object with a string type and an object data.",
                         code="malformed_event")
    if not _EVENT_ID.match(wanted["webhook-id"]):
        raise BadRequest("webhook-id must be 1 to 300 visible ASCII characters.", code="malformed_event")
    if not 1 <= len(body["type"]) <= 100:
        raise BadRequest("type must be 1 to 100 characters.", code="malformed_event")
    return [Event(wanted["webhook-id"], body["type"], body)]


# -- twilio: X-Twilio-Signature over the URL and the form ----------------------------------------
def twilio_events(integ: Integration, raw: bytes, headers: Mapping[str, str], url: str) -> list[Event]:
    signature = headers.get("X-Twilio-Signature", "")
    if not signature:
        raise unauthorized("Missing X-Twilio-Signature.")
    try:
        form = parse_form(raw)
    except BadRequest:
        raise unauthorized("No valid X-Twilio-Signature.") from None  # unverifiable: not judged further
    params = MultiDict([(k, v) for k, values in form.items() for v in values])
    if not any(RequestValidator(token).validate(url, params, signature) for token in integ.values("auth_token")):
        raise unauthorized("No valid X-Twilio-Signature for this URL and body.")
    fields = {k: values[0] for k, values in form.items()}
    sid, status = fields.get("CallSid", ""), fields.get("CallStatus", "")
    if not sid or not status or not _EVENT_ID.match(f"{sid}:{status}"):
        raise BadRequest("A call status callback carries CallSid and CallStatus.", code="malformed_event")
    return [call_event(fields, integ.country)]


def rfc2822_time(value: Any) -> datetime | None:
    """Twilio's times (`Tue, 01 Dec 2026 08:00:00 +0000`); a zone given as unknown (-0000) is UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def call_event(fields: dict[str, Any], country: str | None, **reading: Any) -> Event:
    """A Twilio call as the inbox stores it, whether its status callback brought it or pull-leads read
    it from the call log: the callback's fields (`CallSid`, `CallStatus`, `From`, `To`, `Direction`,
    `Timestamp`, ...) and, under `crm`, what the CRM reads from them, plus `reading` (`pulled=True`)."""
    sid, status = fields["CallSid"], fields["CallStatus"]
    direction = "inbound" if str(fields.get("Direction") or "inbound").lower() == "inbound" else "outbound"
    caller = fields.get("From") if direction == "inbound" else fields.get("To")
    when = rfc2822_time(fields.get("Timestamp"))
    crm = {"caller": caller, "caller_e164": contacts.phone_e164(caller, country), "direction": direction,
           "occurred_at": when.isoformat() if when else None, **reading}
    return Event(f"{sid}:{status}", f"call.{status}"[:100], {**fields, "crm": crm})


# -- meta: X-Hub-Signature-256, one event per leadgen change ------------------------------------------
def meta_signature_ok(raw: bytes, header: str, secrets: list[str]) -> bool:
    given = header.removeprefix("sha256=").strip().lower() if header.startswith("sha256=") else ""
    if not given:
        return False
    return any(hmac.compare_digest(hmac.new(s.encode(), raw, hashlib.sha256).hexdigest(), given) for s in secrets)


def meta_events(integ: Integration, raw: bytes, headers: Mapping[str, str]) -> list[Event]:
    if not meta_signature_ok(raw, headers.get("X-Hub-Signature-256", ""), integ.values("app_secret")):
        raise unauthorized("Missing or invalid X-Hub-Signature-256.")
    body = parse_json(raw)
    if not isinstance(body, dict) or not isinstance(body.get("entry"), list):
        raise BadRequest("A Meta notification is an object with an entry list.", code="malformed_event")
    events = []
    for entry in body["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            raise BadRequest("Each entry carries a changes list.", code="malformed_event")
        for change in changes:
            if not isinstance(change, dict) or change.get("field") != "leadgen":
                continue
            value = change.get("value")
            leadgen = str(value.get("leadgen_id", "")) if isinstance(value, dict) else ""
            if not _LEADGEN_ID.match(leadgen):
                raise BadRequest("A leadgen change carries a leadgen_id.", code="malformed_event")
            payload = {k: value.get(k) for k in ("leadgen_id", "page_id", "form_id", "ad_id", "adgroup_id",
                                                 "created_time") if value.get(k) is not None}
            payload["leadgen_id"] = leadgen
            events.append(Event(leadgen, "leadgen", payload, process=False))
    return events


def meta_handshake(integ: Integration, args: Mapping[str, str]) -> str | None:
    """The challenge to echo when Meta's subscription handshake names our verify_token, else None."""
    expected = str(integ.settings.get("verify_token") or "")
    given = args.get("hub.verify_token", "")
    if args.get("hub.mode") != "subscribe" or not expected or not given:
        return None
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return None
    challenge = args.get("hub.challenge", "")
    return challenge if 0 < len(challenge) <= 1000 else None


def _iso_time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.isoformat() if when.tzinfo else None


def meta_lead(graph: dict[str, Any], country: str | None) -> dict[str, Any]:
    """The Graph API's lead (`field_data`: [{name, values}]) as find_or_create_customer needs it."""
    fields: dict[str, str] = {}
    for item in graph.get("field_data") or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            values = item.get("values") or []
            if isinstance(values, list) and values and isinstance(values[0], str | int | float):
                fields[item["name"][:100]] = str(values[0])[:1000]
    name = fields.get("full_name") or " ".join(p for p in (fields.get("first_name"), fields.get("last_name")) if p)
    phone = fields.get("phone_number") or fields.get("phone")
    return {
        "full_name": contacts.name(name),
        "phone_e164": contacts.phone_e164(phone, country),
        "email": contacts.email(fields.get("email")),
        "created_time": _iso_time(graph.get("created_time")),
        "form_id": str(graph["form_id"]) if graph.get("form_id") is not None else None,
        "ad_id": str(graph["ad_id"]) if graph.get("ad_id") is not None else None,
        "fields": fields,
    }

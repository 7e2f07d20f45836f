"""The inbox's pure rules: contact normalisation, form parsing, Meta's signature and handshake."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from crm import contacts
from crm.errors import BadRequest
from crm.http import parse_form
from crm.imports.pull import twilio_call_event
from crm.inbox.sources import Integration, meta_handshake, meta_lead, meta_signature_ok, twilio_events


@pytest.mark.parametrize("raw", ["+49 151 23456789", "0151 23456789", "0049151 23456789", "+49 (0151) 234-567-89",
                                 "01512/3456789", "+4915123456789"])
def test_one_number_in_any_writing_is_one_e164(raw):
    assert contacts.phone_e164(raw, "DE") == "+4915123456789"


@pytest.mark.parametrize("raw", ["anonymous", "", "123", "+99 1", None, 4915123456789, "1" * 41])
def test_what_is_not_a_number_is_none(raw):
    assert contacts.phone_e164(raw, "DE") is None


def test_emails_and_names():
    assert contacts.email("  Jana@Example.COM ") == "jana@example.com"
    assert contacts.email("not an email") is None and contacts.email("a@b") is None
    assert contacts.name("  Jana\u202e  Nováková\x00 ") == "Jana Nováková"
    assert contacts.name("\u200b") is None


def test_forms_keep_every_value_and_refuse_garbage():
    assert parse_form(b"a=1&b=&a=2") == {"a": ["1", "2"], "b": [""]}
    assert parse_form(b"") == {}
    for raw in (b"a=%ff", b"&&novalue"):
        with pytest.raises(BadRequest):
            parse_form(raw)


def test_meta_signature_tries_every_live_secret_and_needs_the_prefix():
    body = b'{"entry": []}'
    sig = hmac.new(b"new-secret", body, hashlib.sha256).hexdigest()
    assert meta_signature_ok(body, f"sha256={sig}", ["old-secret", "new-secret"])
    assert meta_signature_ok(body, f"sha256={sig.upper()}", ["new-secret"])
    assert not meta_signature_ok(body, sig, ["new-secret"])
    assert not meta_signature_ok(body + b" ", f"sha256={sig}", ["new-secret"])
    assert not meta_signature_ok(body, "sha256=", ["new-secret"])


def test_meta_handshake_echoes_only_for_our_token():
    integ = Integration("i", "o", "meta", True, {"verify_token": "tok"}, "DE")
    args = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "42"}
    assert meta_handshake(integ, args) == "42"
    assert meta_handshake(integ, {**args, "hub.verify_token": "tok2"}) is None
    assert meta_handshake(integ, {**args, "hub.mode": "unsubscribe"}) is None
    assert meta_handshake(Integration("i", "o", "meta", True, {}, "DE"), {**args, "hub.verify_token": ""}) is None


def test_a_graph_lead_becomes_contact_fields():
    lead = meta_lead({"created_time": "2026-12-01T08:00:00+0000", "form_id": 9, "field_data": [
        {"name": "first_name", "values": ["Jana"]}, {"name": "last_name", "values": ["Nováková"]},
        {"name": "phone_number", "values": ["0151 2345 6789"]}, {"name": "email", "values": ["J@X.CZ"]},
        {"name": "bad", "values": [{"nested": 1}]}, "junk"]}, "DE")
    assert (lead["full_name"], lead["phone_e164"], lead["email"], lead["form_id"]) == (
        "Jana Nováková", "+4915123456789", "j@x.cz", "9")
    assert lead["created_time"] == "2026-12-01T08:00:00+00:00" and "bad" not in lead["fields"]


@pytest.mark.parametrize("ended", ["Tue, 01 Dec 2026 08:00:42 +0000", "Tue, 01 Dec 2026 08:00:42 -0000"])
@pytest.mark.parametrize("direction", ["inbound", "outbound-api"])
def test_a_call_pulled_from_the_log_is_the_event_its_status_callback_stores(ended, direction):
    """One call, by webhook and by pull-leads: the same event id, fields and reading (crm), but `pulled`."""
    token, url, sid = "twilio-token", "https://crm.example.com/webhooks/twilio/acme", "CA" + "5" * 32
    integ = Integration("i", "o", "twilio", True, {}, "DE", {"auth_token": [token]})
    form = {"CallSid": sid, "AccountSid": "AC" + "1" * 32, "CallStatus": "completed", "From": "0151 23456789",
            "To": "+4930123456", "Direction": direction, "CallDuration": "42", "Timestamp": ended}
    headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}
    [pushed] = twilio_events(integ, urlencode(form).encode(), headers, url)
    log_row = {"sid": sid, "account_sid": form["AccountSid"], "status": "completed", "from": form["From"],
               "to": form["To"], "direction": direction, "duration": 42,
               "start_time": "Tue, 01 Dec 2026 08:00:00 +0000", "end_time": ended}
    pulled = twilio_call_event(log_row, "DE")
    assert (pulled["event_id"], pulled["event_type"]) == (pushed.event_id, pushed.event_type) == (
        f"{sid}:completed", "call.completed")
    crm_pulled = dict(pulled["payload"].pop("crm"))
    assert crm_pulled.pop("pulled") is True
    crm_pushed = pushed.payload.pop("crm")
    assert crm_pulled == crm_pushed
    assert crm_pushed["occurred_at"] == "2026-12-01T08:00:42+00:00"  # -0000 (zone unknown) read as UTC
    assert crm_pushed["caller_e164"] == ("+4915123456789" if direction == "inbound" else "+4930123456")
    assert pulled["payload"] == pushed.payload

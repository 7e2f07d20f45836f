"""`POST /webhooks/{source}/{org}` and Meta's `GET` handshake (SPEC 10), as the webhooks function
runs them: one service_role transaction reads the integration and its live secrets, the source's
check verifies the raw bytes, and one SQL call stores (and, where cheap, processes) the events.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any

import flask

from crm import config
from crm.db import Database, Session
from crm.errors import NotFound, UnsupportedMediaType
from crm.http import read_body
from crm.inbox import sources
from crm.inbox.sources import Integration
from crm.sealing import SealError, SecretBox

log = logging.getLogger("crm.inbox")

MAX_BODY_BYTES = 256 * 1024  # SPEC 7: webhooks up to 256 KiB


def secret_context(integration_id: str, secret_id: str) -> str:
    """The AES-GCM associated data of an integration secret: it opens only on its own row."""
    return f"integration:{integration_id}:{secret_id}"


def parse_route(path: str) -> tuple[str, str]:
    """`/{source}/{org}` -> (source, org); 404 for anything else."""
    parts = [p for p in path.split("/") if p]
    if len(parts) != 2 or parts[0] not in sources.SOURCES or not 1 <= len(parts[1]) <= 100:
        raise NotFound(f"No webhook route {path!r}: use /webhooks/{{wms|twilio|meta}}/{{org}}.")
    return parts[0], parts[1]


def load_integration(session: Session, box: SecretBox, source: str, org: str) -> Integration:
    """The enabled integration of that org and source, its secrets opened; 404 otherwise."""
    try:
        org_id, slug = uuid.UUID(org), None
    except ValueError:
        org_id, slug = None, org
    row = session.fetch_one("inbox_integration", {"source": source, "org_id": org_id, "slug": slug})
    if row is None or not row["enabled"]:
        raise NotFound("No such webhook source for this organization.")
    integ = Integration(id=str(row["id"]), org_id=str(row["org_id"]), kind=row["kind"], enabled=row["enabled"],
                        settings=row["settings"] or {}, country=row["default_country"])
    for secret in row["secrets"]:
        value = secret["pending"]
        if value is None:
            try:
                value = box.open(base64.b64decode(secret["sealed"]), secret_context(integ.id, secret["id"]))
            except (SealError, binascii.Error):
                log.error("integration %s: secret %s does not open under CRM_SECRETS_KEY; skipped",
                          integ.id, secret["id"])
                continue
        integ.secrets.setdefault(secret["name"], []).append(value)
    return integ


def public_url(request: flask.Request) -> str:
    """The URL as the provider called it: `CRM_PUBLIC_URL` + path (behind a proxy), else as received."""
    base = config.env("CRM_PUBLIC_URL")
    path = request.script_root + request.path
    query = request.query_string.decode("latin-1")
    if base is None:
        return request.root_url.rstrip("/") + request.path + (f"?{query}" if query else "")
    return base.rstrip("/") + path + (f"?{query}" if query else "")


def receive(db: Database, box: SecretBox, request: flask.Request) -> dict[str, Any]:
    source, org = parse_route(request.path)
    raw = read_body(request, max_bytes=MAX_BODY_BYTES)
    with db.transaction("service_role") as session:
        integ = load_integration(session, box, source, org)
        if source == "wms":
            events = sources.wms_events(integ, raw, request.headers)
        elif source == "twilio":
            if (request.mimetype or "").lower() != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType("Twilio posts application/x-www-form-urlencoded.")
            events = sources.twilio_events(integ, raw, request.headers, public_url(request))
        else:
            events = sources.meta_events(integ, raw, request.headers)
        if not events:
            return {"accepted": 0, "duplicates": 0, "processed": 0, "failed": 0}
        row = session.fetch_one("inbox_receive", {"integration_id": integ.id,
                                                  "events": _json([e.as_json() for e in events])})
    return row["result"]


def handshake(db: Database, box: SecretBox, request: flask.Request) -> str | None:
    source, org = parse_route(request.path)
    if source != "meta":
        raise NotFound("Only the meta source has a GET handshake.")
    with db.transaction("service_role") as session:
        integ = load_integration(session, box, source, org)
    return sources.meta_handshake(integ, request.args)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

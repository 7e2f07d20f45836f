"""The machine API (SPEC 11, `functions/api`): the warehouse (or any machine client) reads CRM
customers and orders and creates leads with an API key (`X-Api-Key`).

Only the key's SHA-256 travels to the database, where `private.api_authenticate` checks it and the
route's scope (401 unknown/revoked/expired, 403 scope missing) in the same transaction as the
route's query, which always filters by the key's organization (another org's row: 404). Runs as
`service_role`, like webhooks. The key is never logged: log lines name its prefix at most.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Annotated, Any

import flask
from pydantic import BaseModel, ConfigDict, ValidationError

from crm.contacts import CustomerIn
from crm.db import Database, Session
from crm.errors import ApiKeyRefused, BadRequest, FieldError, MethodNotAllowed, NotFound, Unauthorized, Unprocessable
from crm.http import json_response, read_json
from crm.textrules import Notes, choice, field_errors, identifier

KEY_HEADER = "X-Api-Key"
_KEY_SHAPE = re.compile(r"^crm_[A-Za-z0-9_-]{8,200}$")
_ORDER_CODE = re.compile(r"^BK-[A-Z0-9]{8}$")
LEAD_SOURCES = ("manual", "phone_call", "walk_in", "ads_form")


def key_hash(raw: str | None) -> bytes:
    """The SHA-256 the database knows the key by; 401 for a missing or malformed header (no query)."""
    key = (raw or "").strip()
    if not key:
        raise ApiKeyRefused(f"Send the API key in the {KEY_HEADER} header.", code="api_key_missing")
    if not _KEY_SHAPE.match(key):
        raise ApiKeyRefused("invalid API key")
    return hashlib.sha256(key.encode()).digest()


def authenticate(session: Session, digest: bytes, scope: str) -> dict[str, Any]:
    try:
        return session.fetch_one("api_authenticate", {"key_hash": digest, "scope": scope})
    except Unauthorized as exc:  # PT401: unknown, revoked or expired; the credential is the API key
        raise ApiKeyRefused(exc.detail, code=exc.code) from exc


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: CustomerIn
    notes: Notes = None
    external_item_ref: Annotated[str | None, identifier("external_ref")] = None
    source: Annotated[str | None, choice(LEAD_SOURCES)] = None


def parse_lead(body: Any, country: str | None) -> LeadIn:
    if not isinstance(body, dict):
        raise Unprocessable("The body must be a JSON object.", errors=[FieldError("body", "must be a JSON object")])
    try:
        return LeadIn.model_validate(body, context={"country": country})
    except ValidationError as exc:
        errors = field_errors(exc)
    raise Unprocessable(f"{len(errors)} field(s) are invalid." if len(errors) > 1 else
                        f"{errors[0].field} {errors[0].message}.", errors=errors)


def _route(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "api":  # crm dev mounts the function under /api; deployed alone it may not be
        parts = parts[1:]
    return parts


def handle(db: Database, request: flask.Request) -> flask.Response:
    parts = _route(request.path)
    if not parts or parts[0] not in ("customers", "orders", "leads") or len(parts) > 2:
        raise NotFound(f"No route {request.path!r}: GET /api/customers/{{id}}, GET /api/customers?q=, "
                       "GET /api/orders/{id or order_code}, POST /api/leads.")
    resource, ref = parts[0], (parts[1] if len(parts) == 2 else None)
    method = "POST" if resource == "leads" else "GET"
    if resource == "leads" and ref is not None:
        raise NotFound("POST /api/leads takes no id.")
    if resource == "orders" and ref is None:
        raise NotFound("Use GET /api/orders/{id or order_code}.")
    if request.method != method and not (method == "GET" and request.method == "HEAD"):
        raise MethodNotAllowed(f"Use {method}.", allowed=(method,))
    digest = key_hash(request.headers.get(KEY_HEADER))

    if resource == "customers":
        with db.transaction("service_role") as s:
            key = authenticate(s, digest, "customers:read")
            if ref is not None:
                row = s.fetch_one("api_customer", {"org_id": key["org_id"], "customer_id": _uuid_or_404(ref)})
                if row is None:
                    raise NotFound("No such customer.")
                return json_response(row)
            q = request.args.get("q")
            if q is None or not q.strip():
                raise BadRequest("Give a search in ?q= (phone digits, email or name).", code="q_required")
            try:
                limit = int(request.args.get("limit", "20"))
            except ValueError:
                raise BadRequest("limit must be a whole number.") from None
            rows = s.fetch_all("api_search_customers", {"org_id": key["org_id"], "q": q, "max_rows": limit})
        return json_response({"items": rows})

    if resource == "orders":
        assert ref is not None
        order_id, code = _order_ref(ref)
        with db.transaction("service_role") as s:
            key = authenticate(s, digest, "orders:read")
            row = s.fetch_one("api_order", {"org_id": key["org_id"], "order_id": order_id, "order_code": code})
        if row is None:
            raise NotFound("No such order.")
        return json_response(row)

    body = read_json(request)
    with db.transaction("service_role") as s:
        key = authenticate(s, digest, "leads:write")
        lead = parse_lead(body, key["default_country"])
        c = lead.customer
        row = s.fetch_one("api_create_lead", {
            "org_id": key["org_id"], "phone": c.phone, "email": c.email, "full_name": c.full_name,
            "fields": _json({"preferred_channel": c.preferred_channel, "city": c.city}),
            "source": lead.source or "manual", "notes": lead.notes, "external_item_ref": lead.external_item_ref})
    return json_response(row, status=201)


def _json(value: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in value.items() if v is not None})


def _uuid_or_404(ref: str) -> uuid.UUID:
    try:
        return uuid.UUID(ref)
    except ValueError:
        raise NotFound("No such customer.") from None


def _order_ref(ref: str) -> tuple[uuid.UUID | None, str | None]:
    try:
        return uuid.UUID(ref), None
    except ValueError:
        code = ref.strip().upper()
        if not _ORDER_CODE.match(code):
            raise NotFound("No such order.") from None
        return None, code


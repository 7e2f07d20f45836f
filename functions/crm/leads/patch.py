"""`PATCH /leads/{id}` (SPEC §7.3): parse and validate here, decide in the database.

The handler holds no permission logic: the change runs as `authenticated` with the caller's
verified claims, so RLS and `public.update_lead` answer 404/403/409/422 exactly as they would
to the same call through PostgREST.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from crm import textrules
from crm.db import Database
from crm.errors import BadRequest, FieldError, NotFound, Unprocessable

#: Values of the `lead_status` enum (SPEC §6.3), checked here so an unknown one is a field error.
LeadStatus = Literal["new", "contacted", "qualified", "converted", "lost", "junk"]
BIGINT_MAX = 2**63 - 1
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_DIGITS = re.compile(r"^[0-9]{1,19}\Z")


class LeadPatch(pydantic.BaseModel):
    """The body: each field optional, at least one; omit a field to leave it unchanged."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    status: LeadStatus | None = None
    note: str | None = None
    assigned_to: uuid.UUID | None = None

    @pydantic.field_validator("status", "note", "assigned_to", mode="before")
    @classmethod
    def _no_explicit_null(cls, value: Any) -> Any:
        # `update_lead` reads null as "leave unchanged"; a client sending null to clear a field
        # would otherwise be silently ignored.
        if value is None:
            raise ValueError("must not be null; omit the field to leave it unchanged")
        return value

    @pydantic.field_validator("note")
    @classmethod
    def _note_text_rules(cls, value: str) -> str:
        # The text rules of hidden.check_note (crm.textrules mirrors them), as a field error here.
        value = textrules.normalize(value, "note")
        if not value:
            raise ValueError("must not be empty")
        if problem := textrules.problem(value, "note"):
            raise ValueError(textrules.message(problem, "note"))
        return value


def lead_ref(segment: str) -> tuple[uuid.UUID | None, int | None]:
    """`(uuid, None)` or `(None, legacy_id)` for the id in the path; 400 for anything else."""
    if _UUID.match(segment):
        return uuid.UUID(segment), None
    if _DIGITS.match(segment) and 0 < int(segment) <= BIGINT_MAX:
        return None, int(segment)
    raise BadRequest("The lead id must be a uuid or a positive numeric legacy id.", code="malformed_id")


def parse_patch(body: Any) -> LeadPatch:
    if not isinstance(body, Mapping):
        raise BadRequest("The body must be a JSON object.", code="malformed_body")
    if not body:
        raise BadRequest("Send at least one of status, note, assigned_to.", code="empty_patch")
    try:
        return LeadPatch.model_validate(body)
    except pydantic.ValidationError as exc:
        raise Unprocessable("Some fields are invalid.", errors=_field_errors(exc)) from None


def _field_errors(exc: pydantic.ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        message = "is not a known field" if err["type"] == "extra_forbidden" else err["msg"]
        errors.append(FieldError(field, message.removeprefix("Value error, ")))
    return errors


def patch_lead(db: Database, claims: Mapping[str, Any], ref: tuple[uuid.UUID | None, int | None],
               patch: LeadPatch) -> dict[str, Any]:
    """Apply the patch in one transaction as the caller: the change, its event and outbox row."""
    lead_id, legacy_id = ref
    with db.transaction("authenticated", claims) as s:
        if lead_id is None:
            row = s.fetch_one("lead_id_by_legacy_id", {"legacy_id": legacy_id})
            if row is None:
                raise NotFound(f"No lead with legacy id {legacy_id}.", code="lead_not_found")
            lead_id = row["id"]
        lead = s.fetch_one("update_lead", {
            "lead_id": lead_id,
            "status": patch.status,
            "note": patch.note,
            "assigned_to": patch.assigned_to,
        })
    if lead is None or lead.get("id") is None:
        raise NotFound("No such lead.", code="lead_not_found")
    return lead_json(lead)


def lead_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _jsonable(value) for key, value in row.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value

"""What an operator does to webhooks out (`crm webhooks add | retry | replay`), on a connection the
caller owns, as the migrations owner: the same SQL cores as the admins' RPCs, without their admin
check (the owner is no API role). Database refusals (PT404 for an unknown delivery or endpoint,
PT422 for a refused URL) propagate to the caller, which reports them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from crm import queries


def add_endpoint(conn: psycopg.Connection, org: str, url: str, *, event_types: Sequence[str] = (),
                 description: str | None = None, allow_loopback: bool = False) -> dict[str, Any] | None:
    """A new endpoint of the org with slug `org`, with its signing secret (shown once); None when
    there is no such org. `allow_loopback` lets the URL name this machine (tests, `crm dev`)."""
    row = conn.execute(queries.get("outbox_cli_add_endpoint"), {
        "org": org, "url": url, "event_types": list(event_types), "description": description,
        "allow_loopback": "on" if allow_loopback else "off"}).fetchone()
    return None if row is None else row["endpoint"]


def retry_delivery(conn: psycopg.Connection, delivery_id: str | uuid.UUID) -> dict[str, Any]:
    """The delivery, queued to be sent again now (the same webhook-id)."""
    return conn.execute(queries.get("outbox_cli_retry"), {"delivery_id": delivery_id}).fetchone()["delivery"]


def replay(conn: psycopg.Connection, endpoint_id: str | uuid.UUID, since: str, until: str | None = None) -> int:
    """Queues the endpoint's events from `since` to `until` (default: now) again; how many."""
    return conn.execute(queries.get("outbox_cli_replay"),
                        {"endpoint_id": endpoint_id, "since": since, "until": until}).fetchone()["queued"]

"""Class sessions (SPEC 12): the rules live in Postgres (db/migrations/*_class_sessions.sql,
db/triggers/class_sessions.sql, db/triggers/session_bookings.sql); this module holds the
`mark-no-shows` job."""

from __future__ import annotations

from typing import Any

from crm.db import Database
from crm.jobs import JobOptions, job

BATCH = 500


@job("mark-no-shows", description="Bookings still booked 24 h after their session ended become no_show.",
     every_seconds=3600)
def mark_no_shows(db: Database, options: JobOptions) -> dict[str, Any]:
    marked = 0
    while True:
        # One transaction per batch (as service_role): short locks, progress kept if interrupted.
        with db.transaction("service_role") as s:
            rows = s.fetch_all("mark_no_shows", {"batch": BATCH})
        marked += len(rows)
        if len(rows) < BATCH:
            return {"job": "mark-no-shows", "marked": marked}

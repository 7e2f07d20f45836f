"""The outbox's jobs: `dispatch-outbox` (once, or continuously under `crm worker`) and `purge-outbox`."""

from __future__ import annotations

import threading
from typing import Any

from crm import config
from crm.db import Database
from crm.errors import ConfigError
from crm.jobs import LimitOptions, job
from crm.outbox.dispatch import Dispatcher, DispatchSettings
from crm.sealing import check_key

PURGE_BATCH = 500


def serve_dispatch(db: Database, stop: threading.Event) -> None:
    dispatcher = Dispatcher(db)
    try:
        dispatcher.serve(stop)
    finally:
        dispatcher.close()


def check_dispatch() -> None:
    DispatchSettings.from_env()
    check_key()


def retention_days() -> int:
    days = config.env_int("CRM_OUTBOX_RETENTION_DAYS", 30)
    if days < 1:
        raise ConfigError(f"CRM_OUTBOX_RETENTION_DAYS must be at least 1, got {days}")
    return days


@job("dispatch-outbox", serve=serve_dispatch, options=LimitOptions, check=check_dispatch,
     description="Deliver outbox events to webhook endpoints: signed, retried on the SPEC 9 schedule.")
def dispatch_outbox(db: Database, options: LimitOptions) -> dict[str, Any]:
    dispatcher = Dispatcher(db)
    try:
        return dispatcher.run_once(limit=options.limit, progress=options.progress)
    finally:
        dispatcher.close()


@job("purge-outbox", every_seconds=3600, options=LimitOptions, check=retention_days,
     description="Delete delivered outbox events and finished deliveries past the retention (default 30 days).")
def purge_outbox(db: Database, options: LimitOptions) -> dict[str, Any]:
    days = retention_days()
    totals = {"deliveries": 0, "events": 0}
    limit = options.limit
    # Small batches, each its own short transaction: few locks, and autovacuum can keep up.
    while limit is None or totals["deliveries"] + totals["events"] < limit:
        with db.transaction("service_role") as s:
            row = s.fetch_one("outbox_purge", {"retention_days": days, "batch": PURGE_BATCH})
        totals["deliveries"] += row["deliveries"]
        totals["events"] += row["events"]
        if row["deliveries"] == 0 and row["events"] == 0:
            break
    return {"job": "purge-outbox", "retention_days": days, "deleted_deliveries": totals["deliveries"],
            "deleted_events": totals["events"]}

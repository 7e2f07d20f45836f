"""`process-inbox` (SPEC 8, 10): seal parked integration secrets, then finish inbound events that
need more work (Meta leads fetched from the Graph API) or failed, with backoff (db/functions/inbox.sql).

Each claim is one short transaction with a lease (`for update skip locked`), every fetch runs with
no transaction open, and each result is its own transaction: any number of copies may run at once.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

from crm import config
from crm.db import Database
from crm.errors import NotFound
from crm.jobs import LimitOptions, job
from crm.net import PostPolicy, SafePoster
from crm.sealing import SecretBox, check_key

log = logging.getLogger("crm.inbox")

GRAPH_DEFAULT = "https://graph.facebook.com/v21.0"
BATCH = 50
LEASE_SECONDS = 120


def graph_url() -> str:
    return (config.env("CRM_META_GRAPH_URL") or GRAPH_DEFAULT).rstrip("/")


def seal_pending(db: Database, box: SecretBox) -> int:
    from crm.inbox.receive import secret_context

    with db.transaction("service_role") as s:
        rows = s.fetch_all("inbox_pending_secrets")
        for row in rows:
            sealed = box.seal(row["pending"], secret_context(str(row["integration_id"]), str(row["id"])))
            s.execute("inbox_seal_secret", {"id": row["id"], "sealed": sealed})
    return len(rows)


class Inbox:
    def __init__(self, db: Database, *, box: SecretBox | None = None, client: SafePoster | None = None):
        self.db = db
        self.box = box or SecretBox.from_env()
        self.client = client or SafePoster(PostPolicy(
            allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"), timeout=15.0,
            max_response_bytes=256 * 1024, user_agent="crm-inbox/1.0"))
        self._secrets: dict[tuple[str, str], dict[str, list[str]]] = {}
        self.token = uuid.uuid4()  # this run's lease token (db/functions/000_work_queue.sql)

    def close(self) -> None:
        self.client.close()

    def secrets(self, source: str, org_id: str) -> dict[str, list[str]]:
        from crm.inbox.receive import load_integration

        key = (source, org_id)
        if key not in self._secrets:
            with self.db.transaction("service_role") as s:
                self._secrets[key] = load_integration(s, self.box, source, org_id).secrets
        return self._secrets[key]

    def fetch_meta_lead(self, event: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        from crm.inbox.sources import meta_lead

        try:
            tokens = self.secrets("meta", str(event["org_id"])).get("page_access_token", [])
        except NotFound:
            return None, "the meta integration is disabled or gone: enable it and the event is retried"
        if not tokens:
            return None, "no page_access_token: add it with rotate_integration_secret"
        url = f"{graph_url()}/{quote(event['event_id'], safe='')}?access_token={quote(tokens[0], safe='')}"
        result = self.client.get(url, {"Accept": "application/json"})
        if not result.ok:
            return None, f"Graph API: {result.error or f'HTTP {result.status_code}'}"
        if len(result.body) >= self.client.policy.max_response_bytes:
            return None, "Graph API: the answer is larger than 256 KiB"
        try:
            graph = json.loads(result.body)
        except ValueError:
            return None, "Graph API: the answer is not JSON"
        if not isinstance(graph, dict):
            return None, "Graph API: the answer is not an object"
        return meta_lead(graph, event["default_country"]), None

    def run_once(self, limit: int | None = None) -> dict[str, Any]:
        summary: dict[str, Any] = {"job": "process-inbox", "sealed_secrets": seal_pending(self.db, self.box),
                                   "claimed": 0, "processed": 0, "ignored": 0, "failed": 0, "dead": 0}
        while limit is None or summary["claimed"] < limit:
            size = BATCH if limit is None else min(BATCH, limit - summary["claimed"])
            with self.db.transaction("service_role") as s:
                claimed = s.fetch_all("inbox_claim", {"limit": size, "lease_seconds": LEASE_SECONDS,
                                                      "token": self.token})
            if not claimed:
                break
            summary["claimed"] += len(claimed)
            for event in claimed:
                extra, error = None, None
                if event["source"] == "meta":
                    try:
                        extra, error = self.fetch_meta_lead(event)
                    except Exception as exc:  # noqa: BLE001 — recorded on the event, retried later
                        log.exception("process-inbox: fetching %s failed", event["event_id"])
                        error = f"fetch failed: {type(exc).__name__}: {exc}"
                with self.db.transaction("service_role") as s:
                    row = s.fetch_one("inbox_finish", {"id": event["id"], "error": error, "token": self.token,
                                                       "extra": None if extra is None else json.dumps(extra)})
                outcome = row["outcome"]
                if outcome in summary:
                    summary[outcome] += 1
        return summary


def check_config() -> None:
    """process-inbox seals parked integration secrets on every run: it always needs the key."""
    check_key()


@job("process-inbox", every_seconds=5, options=LimitOptions, check=check_config,
     description="Finish inbound webhook events: fetch Meta leads, retry failures with backoff.")
def process_inbox(db: Database, options: LimitOptions) -> dict[str, Any]:
    inbox = Inbox(db)
    try:
        return inbox.run_once(limit=options.limit)
    finally:
        inbox.close()

"""`reconcile-inventory` and `reconcile-wms-orders` (SPEC 8, 11): compare the warehouse caches with
the warehouse, heal them, and record each run in `private.sync_runs`.

For every enabled wms integration: start a run (none when another one is under way for that
integration: the database says so, under a transaction-scoped lock), then page through the source
with no transaction open during a request, and hand each page's raw bytes to one SQL call that
compares and heals it in its own short transaction (db/functions/warehouse.sql). Memory is two
pages at most (the next is fetched while one is applied). After the last page the run is finished:
cache rows the source never listed are removed (a complete full pass only). A source failing
mid-run fails the run with where it stopped; what was healed stays, and the next run starts over
and completes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crm import config
from crm.db import Database
from crm.errors import CrmError, NotFound
from crm.inbox.receive import load_integration
from crm.jobs import JobOptions, job
from crm.progress import progress_bar
from crm.sealing import SecretBox, check_key, check_key_if_set
from crm.wms.client import ClientPolicy, Page, WarehouseClient, WarehouseError

log = logging.getLogger("crm.wms")


@dataclass(frozen=True)
class SyncType:
    name: str  # private.sync_runs.sync_type
    resource: str  # the warehouse API path
    job: str
    incremental: bool  # the source takes `updated_since` (SPEC 11: orders)


INVENTORY = SyncType("inventory", "inventory", "reconcile-inventory", incremental=False)
WMS_ORDERS = SyncType("wms_orders", "orders", "reconcile-wms-orders", incremental=True)


@dataclass(frozen=True)
class Settings:
    page_size: int = 1000
    lease_seconds: int = 300
    allow_loopback: bool = False
    #: wms orders: a full pass at least this often, else only what changed (0: always full)
    full_pass_hours: int = 24

    @classmethod
    def from_env(cls) -> Settings:
        return cls(page_size=max(1, min(config.env_int("CRM_WMS_PAGE_SIZE", 1000), 5000)),
                   lease_seconds=max(30, config.env_int("CRM_WMS_LEASE_SECONDS", 300)),
                   allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"),
                   full_pass_hours=max(0, config.env_int("CRM_WMS_FULL_PASS_HOURS", 24)))


def prefetched(pages: Iterator[Page]) -> Iterator[Page]:
    """The pages, the next one fetched while the caller applies this one (at most two in memory).

    The warehouse request and the database call each wait on a socket, so overlapping them makes a
    run take about as long as the slower of the two instead of their sum. An error while fetching
    reaches the caller after the pages before it, in order.
    """
    ahead: queue.Queue[tuple[Page | None, BaseException | None]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        ahead.put((page, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put((None, None))
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer, which raises it
            ahead.put((None, exc))

    worker = threading.Thread(target=fetch, name="wms-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            page, error = ahead.get()
            if error is not None:
                raise error
            if page is None:
                return
            yield page
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            ahead.get_nowait()  # unblock a producer waiting to hand over one more page
        worker.join(timeout=60)


def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "org_id", "integration_id", "sync_type", "status", "updated_since", "pages", "records_checked",
            "records_synced", "records_failed", "error", "failed_at")
    summary = {k: run.get(k) for k in keys}
    summary["discrepancies"] = (run.get("discrepancies") or {}).get("counts")
    return summary


class Reconciler:
    def __init__(self, db: Database, *, box: SecretBox | None = None, settings: Settings | None = None,
                 policy: ClientPolicy | None = None, progress: bool = False):
        self.db = db
        self._box = box
        self.settings = settings or Settings.from_env()
        self.policy = policy or ClientPolicy()
        self.progress = progress

    @property
    def box(self) -> SecretBox:
        """CRM_SECRETS_KEY is needed only once there is an integration to reconcile."""
        if self._box is None:
            self._box = SecretBox.from_env()
        return self._box

    def run(self, kind: SyncType) -> dict[str, Any]:
        with self.db.transaction("service_role") as s:
            integrations = s.fetch_all("wms_integrations")
        runs = [self.run_one(kind, str(row["id"]), str(row["org_id"])) for row in integrations]
        return {"job": kind.job, "runs": runs,
                "failed": sum(1 for r in runs if r["status"] == "failed"),
                "skipped": sum(1 for r in runs if r["status"] == "skipped")}

    def _fail(self, run_id: str, error: str, page: int, cursor: str | None) -> dict[str, Any]:
        log.warning("sync run %s failed: %s", run_id, error)
        with self.db.transaction("service_role") as s:
            row = s.fetch_one("sync_run_fail", {"run_id": run_id, "error": error, "page": page, "cursor": cursor})
        return row or {"id": run_id, "status": "failed", "error": error}

    def run_one(self, kind: SyncType, integration_id: str, org_id: str) -> dict[str, Any]:
        with self.db.transaction("service_role") as s:
            try:
                integ = load_integration(s, self.box, "wms", org_id)
            except NotFound:
                return {"integration_id": integration_id, "org_id": org_id, "sync_type": kind.name,
                        "status": "skipped", "reason": "the integration was disabled"}
            full_every = (f"{self.settings.full_pass_hours} hours"
                          if kind.incremental and self.settings.full_pass_hours else None)
            run = s.fetch_one("sync_run_start", {"integration_id": integration_id, "sync_type": kind.name,
                                                 "lease": f"{self.settings.lease_seconds} seconds",
                                                 "full_every": full_every})
        if run is None:
            return {"integration_id": integration_id, "org_id": org_id, "sync_type": kind.name,
                    "status": "skipped", "reason": "another run of this integration is under way"}
        run_id = str(run["id"])
        base_url = integ.settings.get("base_url")
        keys = integ.values("api_key")
        if not isinstance(base_url, str) or not base_url.strip():
            return _run_summary(self._fail(run_id, "the wms integration has no settings.base_url", 1, None))
        if not keys:
            return _run_summary(self._fail(run_id, "the wms integration has no api_key secret", 1, None))

        bar = progress_bar(self.progress, kind.job, unit="pages")
        number, cursor = 1, None
        try:
            with WarehouseClient(base_url, keys[0], allow_loopback=self.settings.allow_loopback,
                                 policy=self.policy) as client:
                since = run["updated_since"].isoformat() if run["updated_since"] else None
                pages = client.pages(kind.resource, limit=self.settings.page_size, params={"updated_since": since})
                for page in prefetched(pages):
                    number, cursor = page.number, page.cursor
                    with self.db.transaction("service_role") as s:
                        s.fetch_one("sync_run_page", {"run_id": run_id, "page": page.raw.decode("utf-8"),
                                                      "cursor": page.cursor})
                    bar.update()
                    number, cursor = page.number + 1, page.next_cursor
            with self.db.transaction("service_role") as s:
                done = s.fetch_one("sync_run_finish", {"run_id": run_id})
        except WarehouseError as exc:
            return _run_summary(self._fail(run_id, str(exc), number, cursor))
        except UnicodeDecodeError:
            return _run_summary(self._fail(run_id, f"page {number} (cursor {cursor!r}): not UTF-8", number, cursor))
        except CrmError as exc:
            if exc.code == "sync_run_superseded":
                return {"id": run_id, "status": "failed", "error": exc.detail}
            return _run_summary(self._fail(run_id, f"page {number} (cursor {cursor!r}): {exc.detail}", number,
                                           cursor))
        finally:
            bar.close()
        return _run_summary(done)


@job(INVENTORY.job, every_seconds=3600, check=check_key_if_set, deployed_check=check_key,
     description="Compare the warehouse inventory cache with the warehouse, heal it, record the run (sync_runs).")
def reconcile_inventory(db: Database, options: JobOptions) -> dict[str, Any]:
    return Reconciler(db, progress=options.progress).run(INVENTORY)


@job(WMS_ORDERS.job, every_seconds=3600, check=check_key_if_set, deployed_check=check_key,
     description="Compare the warehouse orders cache with the warehouse, heal it, record the run (sync_runs).")
def reconcile_wms_orders(db: Database, options: JobOptions) -> dict[str, Any]:
    return Reconciler(db, progress=options.progress).run(WMS_ORDERS)

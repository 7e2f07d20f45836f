"""`reconcile-inventory` and `reconcile-wms-orders` (SPEC 8, 11): compare the warehouse caches with
the warehouse, heal them, and record each run in `private.sync_runs`.

For every enabled wms integration: start a run (none when another one is under way for that
integration: the database says so, under a transaction-scoped lock), then page through the source
with no transaction open during a request, and hand each page's raw bytes to one SQL call that
compares and heals it in its own short transaction (db/functions/warehouse.sql), sent as one round
trip and unparsed (the database parses it; the client reads only `next_cursor`). The next page is
fetched while `pages_in_flight` pages are applied side by side (on as many connections), so
neither the warehouse nor the database waits for the other: memory is a few pages. After the last
page the run is finished: cache rows the source never listed are removed (a complete full pass
only). A source failing mid-run fails the run with where it stopped; what was healed stays, and the
next run starts over and completes. Each start also purges the integration's old runs
(`keep_runs`, `keep_days`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crm import config
from crm.db import Database
from crm.errors import CrmError, NotFound
from crm.inbox.receive import load_integration
from crm.jobs import JobOptions, job
from crm.progress import progress_bar
from crm.sealing import SecretBox, check_key, check_key_if_set
from crm.wms.client import ClientPolicy, Page, WarehouseClient, WarehouseError

if TYPE_CHECKING:
    from tqdm import tqdm

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
    #: pages applied side by side, each on its own connection (1: one at a time)
    pages_in_flight: int = 2
    #: sync_runs kept per integration and kind: the newest `keep_runs`, none older than `keep_days`
    #: (0: no age limit); the last success and the last successful full pass always stay
    keep_runs: int = 200
    keep_days: int = 90

    @classmethod
    def from_env(cls) -> Settings:
        return cls(page_size=max(1, min(config.env_int("CRM_WMS_PAGE_SIZE", 1000), 5000)),
                   lease_seconds=max(30, config.env_int("CRM_WMS_LEASE_SECONDS", 300)),
                   allow_loopback=config.env_flag("CRM_WEBHOOK_ALLOW_LOOPBACK"),
                   full_pass_hours=max(0, config.env_int("CRM_WMS_FULL_PASS_HOURS", 24)),
                   pages_in_flight=max(1, min(config.env_int("CRM_WMS_PAGES_IN_FLIGHT", 2), 4)),
                   keep_runs=max(1, config.env_int("CRM_WMS_KEEP_RUNS", 200)),
                   keep_days=max(0, config.env_int("CRM_WMS_KEEP_DAYS", 90)))


@dataclass
class _Position:
    """Where a run is: the next page to apply and the cursor that fetches it."""
    number: int = 1
    cursor: str | None = None


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
            if run is not None:
                s.fetch_one("sync_runs_purge", {
                    "integration_id": integration_id, "sync_type": kind.name, "keep": self.settings.keep_runs,
                    "max_age": f"{self.settings.keep_days} days" if self.settings.keep_days else None})
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
        at = _Position()
        try:
            with WarehouseClient(base_url, keys[0], allow_loopback=self.settings.allow_loopback,
                                 policy=self.policy) as client:
                since = run["updated_since"].isoformat() if run["updated_since"] else None
                pages = client.pages(kind.resource, limit=self.settings.page_size, params={"updated_since": since},
                                     parse=False)
                self._apply_all(run_id, pages, at, bar)
            with self.db.transaction("service_role") as s:
                done = s.fetch_one("sync_run_finish", {"run_id": run_id})
        except WarehouseError as exc:
            return _run_summary(self._fail(run_id, str(exc), at.number, at.cursor))
        except UnicodeDecodeError:
            return _run_summary(self._fail(run_id, f"page {at.number} (cursor {at.cursor!r}): not UTF-8", at.number,
                                           at.cursor))
        except CrmError as exc:
            if exc.code == "sync_run_superseded":
                return {"id": run_id, "status": "failed", "error": exc.detail}
            return _run_summary(self._fail(run_id, f"page {at.number} (cursor {at.cursor!r}): {exc.detail}",
                                           at.number, at.cursor))
        finally:
            bar.close()
        return _run_summary(done)

    def _apply(self, run_id: str, page: Page) -> None:
        self.db.statement("service_role", "sync_run_page", {
            "run_id": run_id, "page": page.raw.decode("utf-8"), "cursor": page.cursor, "number": page.number})

    def _apply_all(self, run_id: str, pages: Iterator[Page], at: _Position, bar: tqdm) -> None:
        """Every page applied, `pages_in_flight` of them at a time, settled in order; `at` follows.

        The next page is fetched (here) while those are applied, and waits for an applier: the
        warehouse and the database work at the same time, with a few pages in memory (one being
        fetched, one waiting, those being applied). The database takes pages in any order (what a
        page writes does not depend on the others; the report's items are ordered by page number).
        On an error the pages already sent finish first, and the earliest page's error is the one
        reported: the run fails there, what the pages before and beside it healed stays.
        """
        # Each applier holds a connection while its page is applied: never more than the pool has.
        depth = max(1, min(self.settings.pages_in_flight, self.db.pool.max_size))
        sent: deque[tuple[Page, Future[None]]] = deque()
        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="wms-apply") as appliers:
            try:
                for page in pages:
                    sent.append((page, appliers.submit(self._apply, run_id, page)))
                    if len(sent) > depth:
                        self._settle(run_id, *sent.popleft(), at, bar)
                while sent:
                    self._settle(run_id, *sent.popleft(), at, bar)
            except WarehouseError:
                while sent:  # the pages before the one that could not be fetched
                    self._settle(run_id, *sent.popleft(), at, bar)
                raise
            finally:
                for _, future in sent:  # after an error: what has not started does not start
                    if not future.cancel():
                        with contextlib.suppress(Exception):
                            future.result()

    def _settle(self, run_id: str, page: Page, future: Future[None], at: _Position, bar: tqdm) -> None:
        try:
            future.result()
        except CrmError as exc:
            if exc.code != "concurrent_update":
                raise
            self._apply(run_id, page)  # a deadlock with the page beside it (a key on both): once more
        at.number, at.cursor = page.number + 1, page.next_cursor
        bar.update()


@job(INVENTORY.job, every_seconds=3600, check=check_key_if_set, deployed_check=check_key,
     description="Compare the warehouse inventory cache with the warehouse, heal it, record the run (sync_runs).")
def reconcile_inventory(db: Database, options: JobOptions) -> dict[str, Any]:
    return Reconciler(db, progress=options.progress).run(INVENTORY)


@job(WMS_ORDERS.job, every_seconds=3600, check=check_key_if_set, deployed_check=check_key,
     description="Compare the warehouse orders cache with the warehouse, heal it, record the run (sync_runs).")
def reconcile_wms_orders(db: Database, options: JobOptions) -> dict[str, Any]:
    return Reconciler(db, progress=options.progress).run(WMS_ORDERS)

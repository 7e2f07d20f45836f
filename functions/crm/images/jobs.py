"""Jobs `cache-images` and `backfill-images` (SPEC §7.4, §8). Scheduled jobs run as service_role
(SPEC §6.1), in transactions set up exactly as PostgREST sets them up.

A worker claims queued orders in one short transaction (the leased work queue of
db/functions/000_work_queue.sql: FOR UPDATE SKIP LOCKED plus a lease), downloads and re-encodes
with no transaction open, then writes each order's result in another short transaction that first
checks the claim is still its own (`queue_hold`). Failures are recorded per image in
private.image_cache_images; transient ones are retried with exponential backoff up to
CRM_IMAGE_MAX_ATTEMPTS, then the image counts as failed. The retry times come from the database's
clock, by the work queue's own `private.queue_backoff`, as the queue judges due-ness by that clock.
"""

from __future__ import annotations

import json
import logging
import string
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crm import config
from crm.db import Database
from crm.errors import ConfigError
from crm.images.cache import ImageCache
from crm.images.errors import FetchError, ImageCacheError
from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.images.process import ProcessOptions
from crm.images.storage import storage_from_env
from crm.jobs import ApplyOptions, LimitOptions, job
from crm.progress import progress_bar

log = logging.getLogger("crm.images.jobs")

NIL_UUID = "00000000-0000-0000-0000-000000000000"
MAX_BACKOFF_SECONDS = 6 * 3600
MAX_ATTEMPTS = 100  # 6 h apart at the cap: weeks of retries; the schedule travels with each write


@dataclass(frozen=True)
class Settings:
    max_per_order: int = 6
    max_attempts: int = 4
    retry_base_seconds: int = 60
    batch: int = 4  # orders per claim: small, so a slow order delays few others
    run_limit: int = 50  # orders per cache-images run, so one run never blocks the scheduler long
    lease_seconds: int = 300

    @classmethod
    def from_env(cls, policy: FetchPolicy | None = None) -> Settings:
        policy = policy or FetchPolicy.from_env()
        max_per_order = config.env_int("CRM_IMAGE_MAX_PER_ORDER", 6)
        if not 0 <= max_per_order <= 20:
            raise ConfigError(f"CRM_IMAGE_MAX_PER_ORDER must be between 0 and 20, got {max_per_order}")
        max_attempts = config.env_int("CRM_IMAGE_MAX_ATTEMPTS", 4)
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ConfigError(f"CRM_IMAGE_MAX_ATTEMPTS must be between 1 and {MAX_ATTEMPTS}, got {max_attempts}")
        retry_seconds = config.env_int("CRM_IMAGE_RETRY_SECONDS", 60)
        if retry_seconds < 0:
            raise ConfigError(f"CRM_IMAGE_RETRY_SECONDS must not be negative, got {retry_seconds}")
        # The lease outlives the slowest possible order: every image taking the whole time limit.
        lease = int(max_per_order * (policy.total_timeout + 10) + 60)
        return cls(max_per_order=max_per_order, max_attempts=max_attempts, retry_base_seconds=retry_seconds,
                   lease_seconds=lease)

    def retry_schedule(self) -> list[timedelta]:
        """The waits after failed attempts 1, 2, …: base, 4x base, 16x base, … capped at 6 hours, and
        none after the last attempt (`private.queue_backoff`'s schedule; no jitter: retries of one
        run are spread by the downloads themselves, and an operator's base is taken as given)."""
        return [timedelta(seconds=min(self.retry_base_seconds * 4 ** (n - 1), MAX_BACKOFF_SECONDS))
                for n in range(1, self.max_attempts)]


def check_config() -> None:
    """Read every setting the image jobs use, so a deployed function refuses to start (naming the
    variable) rather than failing each run."""
    Settings.from_env()
    ProcessOptions.from_env()
    Catalog.from_env()
    storage = storage_from_env()
    close = getattr(storage, "close", None)
    if close is not None:
        close()


# -- one order ------------------------------------------------------------------------------------
def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def sources_of(order: dict[str, Any], records: dict[int, dict[str, Any]], settings: Settings,
               first_party: str) -> list[str]:
    """The URLs to cache, by position: the snapshot's images; for legacy rows without any, the
    third-party URLs in cached_images (remembered in the records once tried, as they get replaced)."""
    images = _strings(order.get("images"))
    if images:
        return images[: settings.max_per_order]
    if records:
        return [records[p]["source_url"] for p in sorted(records)][: settings.max_per_order]
    foreign = [u for u in _strings(order.get("cached_images")) if not u.startswith(first_party)]
    return foreign[: settings.max_per_order]


def cache_order(db: Database, cache: ImageCache, order: dict[str, Any], token: uuid.UUID,
                settings: Settings) -> dict[str, Any]:
    """Cache one claimed order's images and write the result while the claim is still ours."""
    order_id = order["order_id"]
    with db.transaction("service_role") as s:
        records = {r["position"]: r for r in s.fetch_all("images_order_records", {"order_id": order_id})}
    sources = sources_of(order, records, settings, cache.storage.url_prefix)
    attempted: list[dict[str, Any]] = []
    final: dict[int, dict[str, Any]] = {}
    for position, url in enumerate(sources):
        record = records.get(position)
        if record is not None and record["source_url"] != url:
            record = None
        if record is not None and (record["state"] in ("cached", "failed") or (
                record["state"] == "retrying" and record["waiting"])):
            final[position] = record
            continue
        attempts = (record["attempts"] if record else 0) + 1
        entry = _attempt(cache, url, attempts, settings)
        entry["position"] = position
        attempted.append(entry)
        final[position] = entry

    cached = [final[p]["cached_url"] for p in sorted(final) if final[p]["state"] == "cached"]
    retrying = [final[p] for p in sorted(final) if final[p]["state"] == "retrying"]
    if not sources:
        state = "none"
    elif retrying:
        state = "partial" if cached else "pending"  # still working on it
    elif len(cached) == len(sources):
        state = "cached"
    else:
        state = "partial" if cached else "failed"

    with db.transaction("service_role") as s:
        if not s.fetch_one("images_hold_claim", {"order_id": order_id, "token": token})["held"]:
            log.warning("image cache: lost the claim on order %s; its result is dropped", order_id)
            return {"order_id": str(order_id), "result": "lost_claim"}
        if attempted:
            scheduled = s.fetch_all("images_record", {"order_id": order_id, "org_id": order["org_id"],
                                                      "records": json.dumps(attempted, default=str),
                                                      "retry_schedule": settings.retry_schedule()})
            for row in scheduled:
                final[row["position"]]["next_attempt_at"] = row["next_attempt_at"]
        s.execute("images_write_snapshot", {"order_id": order_id, "cached_images": json.dumps(cached),
                                            "images_state": state})
        if retrying:
            s.execute("images_reschedule", {"order_id": order_id, "token": token,
                                            "available_at": min(r["next_attempt_at"] for r in retrying)})
        else:
            s.execute("images_dequeue", {"order_id": order_id, "token": token})
    return {
        "order_id": str(order_id), "result": state, "cached_images": cached,
        "images_cached": sum(1 for e in attempted if e["state"] == "cached"),
        "images_failed": sum(1 for e in attempted if e["state"] == "failed"),
        "images_retrying": sum(1 for e in attempted if e["state"] == "retrying"),
        "failures": [{"position": e["position"], "url": e["source_url"], "reason": e["reason"]}
                     for e in attempted if e["state"] != "cached"],
    }


def _attempt(cache: ImageCache, url: str, attempts: int, settings: Settings) -> dict[str, Any]:
    entry: dict[str, Any] = {"source_url": url, "attempts": attempts, "cached_url": None, "thumb_url": None,
                             "sha256": None, "width": None, "height": None, "reason": None,
                             "detail": None, "http_status": None, "next_attempt_at": None}
    try:
        image = cache.cache(url)
    except ImageCacheError as exc:
        retry = exc.retryable and attempts < settings.max_attempts
        entry.update(state="retrying" if retry else "failed", reason=exc.reason, detail=exc.detail,
                     http_status=exc.status)
        return entry  # a retry's time: by the database, as the record is written
    except Exception as exc:  # noqa: BLE001 - one poisonous image must not stop the queue
        log.exception("image cache: unexpected failure on %s", url)
        entry.update(state="failed", reason="internal_error", detail=f"{type(exc).__name__}: {exc}")
        return entry
    entry.update(state="cached", cached_url=image.url, thumb_url=image.thumb_url, sha256=image.sha256,
                 width=image.width, height=image.height)
    return entry


# -- cache-images ---------------------------------------------------------------------------------
@job("cache-images", every_seconds=3, options=LimitOptions, check=check_config,
     description="Cache the images of pending orders to first-party storage (retries with backoff).")
def cache_images(db: Database, options: LimitOptions) -> dict[str, Any]:
    summary: Counter[str] = Counter(orders=0)  # a run that found its work claimed by another worker says 0
    with db.transaction("service_role") as s:
        if not s.fetch_one("images_has_work")["has_work"]:
            return {"job": "cache-images", "orders": 0}
    settings = Settings.from_env()
    limit = options.limit or settings.run_limit
    cache = ImageCache.from_env()
    progress = progress_bar(options.progress, "cache-images", unit="orders")
    try:
        while summary["orders"] < limit:
            token = uuid.uuid4()
            with db.transaction("service_role") as s:
                s.execute("images_enqueue_pending", {"limit": 500})
                claimed = [r["order_id"] for r in s.fetch_all("images_claim", {
                    "limit": min(settings.batch, limit - summary["orders"]), "token": token,
                    "lease_seconds": settings.lease_seconds})]
                orders = s.fetch_all("images_orders_to_cache", {"order_ids": claimed}) if claimed else []
            if not claimed:
                break
            for order in orders:
                outcome = cache_order(db, cache, order, token, settings)
                summary["orders"] += 1
                summary[outcome["result"]] += 1
                for key in ("images_cached", "images_failed", "images_retrying"):
                    summary[key] += outcome.get(key, 0)
                progress.set_postfix_str(order["order_code"], refresh=False)
                progress.update()
    finally:
        progress.close()
        cache.close()
    return {"job": "cache-images", **summary}


# -- backfill-images ------------------------------------------------------------------------------
class Catalog:
    """`CRM_CATALOG_URL`: where an item's catalog page is, e.g. https://shop.example/items/{external_ref}.

    404 or 410 there means the item is gone (archived_item); anything else leaves the flag alone.
    """

    FIELDS = frozenset({"external_ref", "item_id"})

    def __init__(self, template: str):
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            raise ConfigError(f"CRM_CATALOG_URL is not a valid template: {exc}") from None
        if not fields or not fields <= self.FIELDS:
            raise ConfigError("CRM_CATALOG_URL must contain {external_ref} or {item_id} and nothing else"
                              f" in braces, got {template!r}")
        self.template = template
        self.fields = fields

    @classmethod
    def from_env(cls) -> Catalog | None:
        template = config.env("CRM_CATALOG_URL")
        return cls(template) if template else None

    def url_for(self, order: dict[str, Any]) -> str | None:
        values = {"external_ref": order.get("external_item_ref"), "item_id": order.get("item_id")}
        if any(not values[f] for f in self.fields):
            return None
        return self.template.format(**{k: urllib.parse.quote(str(v or ""), safe="") for k, v in values.items()})

    @staticmethod
    def check(fetcher: SafeFetcher, url: str) -> str:
        """The verdict on one catalog URL: `gone`, `present` or `unknown: <reason>`."""
        try:
            status = fetcher.status(url, accept="text/html,application/json,*/*")
        except FetchError as exc:
            return f"unknown: {exc.reason}"
        if status in (404, 410):
            return "gone"
        if 200 <= status < 300:
            return "present"
        return f"unknown: HTTP {status}"


def plan_order(order: dict[str, Any], fetcher: SafeFetcher, settings: Settings, first_party: str,
               catalog: Catalog | None) -> dict[str, Any]:
    """What the backfill would do for one order, without any network access."""
    images = _strings(order.get("images"))
    foreign = [u for u in _strings(order.get("cached_images")) if not u.startswith(first_party)]
    sources = images or foreign
    planned = sources[: settings.max_per_order]
    would_fetch, invalid = [], []
    for position, url in enumerate(planned):
        try:
            fetcher.check_url(url)
            would_fetch.append(url)
        except FetchError as exc:
            invalid.append({"position": position, "url": url, "reason": exc.reason, "detail": exc.detail})
    entry = {
        "order_id": str(order["order_id"]), "order_code": order["order_code"],
        "images_state": order.get("images_state"), "source": "images" if images else "cached_images",
        "planned": planned, "would_fetch": would_fetch, "invalid": invalid,
        "third_party_cached_images": foreign, "not_planned": max(0, len(sources) - len(planned)),
    }
    if catalog is not None:
        entry["catalog_url"] = catalog.url_for(order)
    return entry


@job("backfill-images", options=ApplyOptions, check=check_config,
     description="Cache images of legacy orders without first-party images; dry run unless --apply.")
def backfill_images(db: Database, options: ApplyOptions) -> dict[str, Any]:
    apply = options.apply
    limit = options.limit
    settings = Settings.from_env()
    storage = storage_from_env()
    first_party = storage.url_prefix
    catalog = Catalog.from_env()
    fetcher = SafeFetcher(FetchPolicy.from_env())
    cache = ImageCache(fetcher, storage, ProcessOptions.from_env())
    report_path = Path(options.report or config.data_dir() / "reports" / (
        f"backfill-images-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{'apply' if apply else 'dry-run'}.json"))

    with db.transaction("service_role") as s:
        total = s.fetch_one("images_backfill_count", {"first_party": first_party})["n"]
    if limit is not None:
        total = min(total, limit)
    summary: Counter[str] = Counter()
    entries: list[dict[str, Any]] = []
    progress = progress_bar(options.progress, "backfill-images", total, unit="orders")
    after = NIL_UUID
    interrupted = False
    try:
        while limit is None or len(entries) < limit:
            page = 100 if limit is None else min(100, limit - len(entries))
            with db.transaction("service_role") as s:
                rows = s.fetch_all("images_backfill_candidates",
                                   {"after": after, "first_party": first_party, "limit": page})
            if not rows:
                break
            for order in rows:
                after = order["order_id"]
                entry = plan_order(order, fetcher, settings, first_party, catalog)
                summary["images_planned"] += len(entry["planned"])
                summary["images_would_fetch"] += len(entry["would_fetch"])
                summary["images_invalid"] += len(entry["invalid"])
                if apply:
                    _apply_order(db, cache, order, entry, settings, catalog, summary)
                entries.append(entry)
                progress.set_postfix_str(order["order_code"], refresh=False)
                progress.update()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        progress.close()
        cache.close()
        result = {"job": "backfill-images", "mode": "apply" if apply else "dry_run",
                  "orders": len(entries), **summary, "interrupted": interrupted}
        report = {**result, "order_count": len(entries), "generated_at": datetime.now(UTC).isoformat(),
                  "catalog": catalog.template if catalog else None, "orders": entries}
        try:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
            result["report"] = str(report_path)
        except OSError as exc:
            result["report_error"] = f"cannot write {report_path}: {exc.strerror or exc}"
    return result


def _apply_order(db: Database, cache: ImageCache, order: dict[str, Any], entry: dict[str, Any],
                 settings: Settings, catalog: Catalog | None, summary: Counter[str]) -> None:
    token = uuid.uuid4()
    with db.transaction("service_role") as s:
        claimed = s.fetch_one("images_claim_order", {"order_id": order["order_id"], "token": token,
                                                     "lease_seconds": settings.lease_seconds})
    if claimed is None:
        entry["result"] = "busy"  # another worker has it queued right now
        summary["busy"] += 1
        return
    outcome = cache_order(db, cache, order, token, settings)
    entry["result"] = outcome["result"]
    entry["cached_images"] = outcome.get("cached_images", [])
    entry["failures"] = outcome.get("failures", [])
    summary[outcome["result"]] += 1
    summary["images_cached"] += outcome.get("images_cached", 0)
    summary["images_failed"] += outcome.get("images_failed", 0)
    if catalog is not None and entry.get("catalog_url"):
        verdict = Catalog.check(cache.fetcher, entry["catalog_url"])
        entry["catalog"] = verdict
        if verdict == "gone" and not order["archived_item"]:
            with db.transaction("service_role") as s:
                if s.execute("images_mark_archived", {"order_id": order["order_id"]}):
                    entry["archived_item"] = True
                    summary["archived"] += 1

"""Jobs cache-images and backfill-images against a real database and images served on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from crm import jobs, queries
from crm.db import Database
from crm.images import jobs as image_jobs
from crm.images.cache import ImageCache
from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.images.storage import LocalStorage
from tests.helpers import make_org
from tests.integration.image_fixtures import (
    ImageServer,
    animated_gif,
    encoded,
    send,
    slow_headers,
    two_tone,
)

PUBLIC = "http://media.test"
MEDIA = PUBLIC + "/media/"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("SUPABASE_URL", "CRM_CATALOG_URL", "CRM_IMAGE_MAX_PER_ORDER", "CRM_IMAGE_TIMEOUT",
                "CRM_IMAGE_MAX_ATTEMPTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CRM_IMAGE_ALLOW_LOOPBACK", "1")
    monkeypatch.setenv("CRM_STORAGE_DIR", str(tmp_path / "media"))
    monkeypatch.setenv("CRM_PUBLIC_URL", PUBLIC)
    monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CRM_IMAGE_RETRY_SECONDS", "60")
    return tmp_path / "media"


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


def jpeg(seed: int = 0) -> bytes:
    im = two_tone((64 + seed, 48))
    return encoded(im, "JPEG", quality=90)


class Shop:
    """An organization with one customer; orders inserted directly, as an import would."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.org_id = make_org(conn)
        self.customer_id = conn.execute(
            "insert into public.customers (org_id, full_name, phone_e164) values (%s, 'Anna', %s) returning id",
            (self.org_id, f"+4915{uuid.uuid4().int % 10**9:09d}")).fetchone()["id"]

    def order(self, images: list[str], state: str | None = "pending", cached: list[str] | None = None,
              ref: str | None = None, item_id: str | None = None) -> uuid.UUID:
        snapshot = {"external_ref": ref or f"listing-{uuid.uuid4().hex[:8]}", "title": "Canyon Spectral",
                    "images": images}
        if cached is not None:
            snapshot["cached_images"] = cached
        if state is not None:
            snapshot["images_state"] = state
        return self.conn.execute(
            "insert into public.orders (org_id, customer_id, external_item_ref, item_id, item_snapshot)"
            " values (%s, %s, %s, %s, %s) returning id",
            (self.org_id, self.customer_id, snapshot["external_ref"], item_id, Jsonb(snapshot))).fetchone()["id"]

    def snapshot(self, order_id: uuid.UUID) -> dict:
        return self.conn.execute("select item_snapshot from public.orders where id = %s",
                                 (order_id,)).fetchone()["item_snapshot"]

    def records(self, order_id: uuid.UUID) -> list[dict]:
        return self.conn.execute("select * from private.image_cache_images where order_id = %s order by position",
                                 (order_id,)).fetchall()

    def queued(self, order_id: uuid.UUID) -> dict | None:
        return self.conn.execute("select * from private.image_cache_queue where order_id = %s",
                                 (order_id,)).fetchone()

    def time_passes(self) -> None:
        """Everything waiting for a retry is due now."""
        self.conn.execute("update private.image_cache_queue set available_at = now()")
        self.conn.execute("update private.image_cache_images set next_attempt_at = now() - interval '1 second'"
                          " where state = 'retrying'")


@pytest.fixture
def shop(conn) -> Shop:
    return Shop(conn)


def requests_for(server: ImageServer) -> Counter:
    return Counter(s.path for s in server.seen)


def test_jobs_are_registered() -> None:
    assert jobs.REGISTRY["cache-images"].every_seconds == 3
    assert jobs.REGISTRY["cache-images"].fn is image_jobs.cache_images
    assert jobs.REGISTRY["backfill-images"].every_seconds is None


# -- cache-images ---------------------------------------------------------------------------------
def test_pending_order_gets_first_party_cached_images(env, server, shop, database, conn) -> None:
    urls = [server.add("/1.jpg", jpeg(), "image/jpeg"),
            server.add("/2.png", encoded(two_tone(), "PNG"), "image/png"),
            server.add("/3.gif", animated_gif(), "image/gif")]
    order_id = shop.order(urls)
    before = conn.execute("select * from public.order_cards where id = %s", (order_id,)).fetchone()
    assert before["display_image_url"] is None and before["image_state"] == "pending"

    summary = image_jobs.cache_images(database, {})

    assert summary == {"job": "cache-images", "orders": 1, "cached": 1, "images_cached": 3,
                       "images_failed": 0, "images_retrying": 0}
    snap = shop.snapshot(order_id)
    assert snap["images_state"] == "cached"
    assert len(snap["cached_images"]) == 3
    assert all(u.startswith(MEDIA) and u.endswith(".webp") for u in snap["cached_images"])
    assert snap["images"] == urls  # the rest of the snapshot is untouched
    for url in snap["cached_images"]:
        assert (env / url.removeprefix(MEDIA)).is_file()
    card = conn.execute("select * from public.order_cards where id = %s", (order_id,)).fetchone()
    assert card["display_image_url"] == snap["cached_images"][0]
    assert card["image_state"] == "cached"
    assert [r["state"] for r in shop.records(order_id)] == ["cached"] * 3
    assert shop.queued(order_id) is None
    # Nothing left to do: a second run claims nothing and downloads nothing.
    assert image_jobs.cache_images(database, {}) == {"job": "cache-images", "orders": 0}
    assert sum(requests_for(server).values()) == 3


def test_a_booking_shows_first_party_images(env, server, conn, database, monkeypatch) -> None:
    """POST /booking with third-party image URLs; after one cache-images run the order card, the
    public tracking page and the media route all serve our own copies."""
    import httpx

    from crm.tools.devserver import root_app
    from tests.helpers import LiveServer, acting_as, function_app

    slug = f"bikes-{uuid.uuid4().hex[:6]}"
    make_org(conn, slug=slug)
    photo = server.add("/4711/1.jpg", jpeg(), "image/jpeg")
    with LiveServer(root_app(env)) as media, LiveServer(function_app("booking")) as booking:
        monkeypatch.setenv("CRM_PUBLIC_URL", media.url)
        body = {"org": slug, "customer": {"full_name": "Anna Schmidt", "phone": "0151 2345 6789"},
                "item": {"external_ref": "listing-4711", "title": "Canyon Spectral 29", "images": [photo]}}
        resp = httpx.post(booking.url, json=body, timeout=15, trust_env=False)
        assert resp.status_code == 201, resp.text
        out = resp.json()
        card = conn.execute("select * from public.order_cards where id = %s", (out["order_id"],)).fetchone()
        assert (card["display_image_url"], card["image_state"]) == (None, "pending")

        started = time.monotonic()
        image_jobs.cache_images(database, {})
        assert time.monotonic() - started < 10

        card = conn.execute("select * from public.order_cards where id = %s", (out["order_id"],)).fetchone()
        assert card["image_state"] == "cached"
        assert card["display_image_url"].startswith(media.url + "/media/")
        with acting_as(conn, "anon") as c:
            tracked = c.execute("select public.track_order(%s) as t", (out["tracking_token"],)).fetchone()["t"]
        assert tracked["display_image_url"] == card["display_image_url"]
        image = httpx.get(card["display_image_url"], trust_env=False)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/webp"
        assert "immutable" in image.headers["cache-control"]


def test_only_the_first_n_images_are_cached(env, server, shop, database, monkeypatch) -> None:
    monkeypatch.setenv("CRM_IMAGE_MAX_PER_ORDER", "2")
    urls = [server.add(f"/{i}.jpg", jpeg(i), "image/jpeg") for i in range(5)]
    order_id = shop.order(urls)
    image_jobs.cache_images(database, {})
    snap = shop.snapshot(order_id)
    assert (snap["images_state"], len(snap["cached_images"])) == ("cached", 2)
    assert requests_for(server) == Counter({"/0.jpg": 1, "/1.jpg": 1})


def test_order_without_images_becomes_none(env, server, shop, database) -> None:
    order_id = shop.order([])
    assert image_jobs.cache_images(database, {})["none"] == 1
    assert shop.snapshot(order_id)["images_state"] == "none"


def test_failures_are_recorded_per_image(env, server, shop, database, conn, monkeypatch) -> None:
    monkeypatch.setenv("CRM_IMAGE_TIMEOUT", "1")
    server.routes["/slow.jpg"] = slow_headers(3.0)
    urls = [server.add("/ok.jpg", jpeg(), "image/jpeg"),
            server.url + "/missing.jpg",
            server.add("/text.jpg", b"not an image at all", "image/jpeg"),
            "http://10.0.0.1/internal.jpg",
            "http://169.254.169.254/latest/meta-data/",
            server.url + "/slow.jpg"]
    order_id = shop.order(urls)

    summary = image_jobs.cache_images(database, {})
    assert (summary["images_cached"], summary["images_failed"], summary["images_retrying"]) == (1, 4, 1)

    snap = shop.snapshot(order_id)
    assert snap["images_state"] == "partial"
    assert snap["cached_images"] == [r["cached_url"] for r in shop.records(order_id) if r["state"] == "cached"]
    failures = conn.execute("select position, source_url, state, reason, http_status, attempts"
                            " from private.image_cache_failures where order_id = %s order by position",
                            (order_id,)).fetchall()
    assert [(f["position"], f["state"], f["reason"]) for f in failures] == [
        (1, "failed", "http_status"),
        (2, "failed", "unsupported_format"),
        (3, "failed", "blocked_address"),
        (4, "failed", "blocked_address"),
        (5, "retrying", "timeout"),
    ]
    assert failures[0]["http_status"] == 404
    assert failures[3]["source_url"] == "http://169.254.169.254/latest/meta-data/"
    assert all(f["attempts"] == 1 for f in failures)
    # The order waits in the queue for the timed-out image's retry.
    assert shop.queued(order_id)["claim_token"] is None


def test_failures_are_not_readable_by_api_roles(conn) -> None:
    from tests.helpers import acting_as

    for role in ("anon", "authenticated"):
        for relation in ("private.image_cache_images", "private.image_cache_queue",
                         "private.image_cache_failures"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role):
                conn.execute(f"select * from {relation}")


def test_service_role_has_exactly_what_the_jobs_need(conn) -> None:
    """SPEC 6.1: the jobs run as service_role, so 0006 grants it these and nothing more."""
    kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
    expected = {"private.image_cache_queue": {"SELECT", "INSERT", "UPDATE", "DELETE"},
                "private.image_cache_images": {"SELECT", "INSERT", "UPDATE"},
                "private.image_cache_failures": {"SELECT"}}
    for relation, privileges in expected.items():
        for role, allowed in (("service_role", privileges), ("anon", set()), ("authenticated", set())):
            held = {k for k in kinds if conn.execute("select has_table_privilege(%s, %s, %s) as ok",
                                                     (role, relation, k)).fetchone()["ok"]}
            assert held == allowed, (role, relation)


def test_jobs_write_as_service_role_with_its_claims(env, server, shop, database, conn, tmp_path,
                                                    monkeypatch) -> None:
    """Every row the jobs write, in the queue, the records and the orders, is written by
    service_role with {"role": "service_role"} claims, exactly as PostgREST would set them."""
    conn.execute("create table public.job_writes (tbl text, writer text, claimed_role text)")
    conn.execute("""
        create function public.record_job_write() returns trigger language plpgsql as $$
        begin
          insert into public.job_writes values (tg_table_name, current_user,
            nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role');
          return null;
        end $$""")
    for table in ("private.image_cache_queue", "private.image_cache_images", "public.orders"):
        conn.execute(f"create trigger record_job_write after insert or update or delete on {table}"
                     " for each row execute function public.record_job_write()")
    pending = shop.order([server.add("/p.jpg", jpeg(), "image/jpeg")])
    legacy_order = shop.order([server.add("/l.jpg", jpeg(1), "image/jpeg")], state=None, ref="listing-gone")
    server.routes["/items/listing-gone"] = lambda h: send(h, 404, b"gone", "text/plain")
    monkeypatch.setenv("CRM_CATALOG_URL", server.url + "/items/{external_ref}")
    conn.execute("delete from public.job_writes")  # the inserts above were the test's own

    assert image_jobs.cache_images(database, {})["cached"] == 1
    summary = image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "r.json")})
    assert (summary["cached"], summary["archived"]) == (1, 1)

    assert shop.snapshot(pending)["images_state"] == shop.snapshot(legacy_order)["images_state"] == "cached"
    assert conn.execute("select archived_item from public.orders where id = %s",
                        (legacy_order,)).fetchone()["archived_item"] is True
    writes = conn.execute("select * from public.job_writes").fetchall()
    assert {w["tbl"] for w in writes} == {"image_cache_queue", "image_cache_images", "orders"}
    assert {(w["writer"], w["claimed_role"]) for w in writes} == {("service_role", "service_role")}


class _HourAhead(datetime):
    """An application server whose clock runs an hour ahead of the database's."""

    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206
        return datetime.now(tz or UTC) + timedelta(hours=1)


def test_retries_are_scheduled_on_the_database_clock(env, server, shop, database, monkeypatch) -> None:
    """The work queue judges due-ness by the database's now(); the image cache schedules by it too, with
    the shared private.queue_backoff (deliveries and the inbox use it), whatever the worker's clock says."""
    monkeypatch.setattr(image_jobs, "datetime", _HourAhead, raising=False)
    server.routes["/down.jpg"] = lambda h: send(h, 503, b"busy", "text/plain")
    down = shop.order([server.url + "/down.jpg"])
    image_jobs.cache_images(database, {})
    first = shop.records(down)[0]
    assert first["state"] == "retrying"
    assert first["next_attempt_at"] - first["last_attempt_at"] == timedelta(seconds=60)
    assert shop.queued(down)["available_at"] == first["next_attempt_at"]
    # Due for the queue again, but not for the image: the worker's clock does not make it due.
    shop.conn.execute("update private.image_cache_queue set available_at = now()")
    image_jobs.cache_images(database, {})
    assert requests_for(server)["/down.jpg"] == 1 and shop.records(down)[0]["attempts"] == 1


def test_transient_failures_are_retried_with_backoff(env, server, shop, database, monkeypatch) -> None:
    monkeypatch.setenv("CRM_IMAGE_MAX_ATTEMPTS", "3")
    answers = iter([503, 503, 200])
    body = jpeg()
    server.routes["/flaky.jpg"] = lambda h: send(h, next(answers), body, "image/jpeg")
    server.routes["/down.jpg"] = lambda h: send(h, 503, b"busy", "text/plain")
    flaky = shop.order([server.url + "/flaky.jpg"])
    down = shop.order([server.url + "/down.jpg"])

    image_jobs.cache_images(database, {})
    first = shop.records(flaky)[0]
    assert (first["state"], first["attempts"], first["http_status"]) == ("retrying", 1, 503)
    delay = (first["next_attempt_at"] - first["last_attempt_at"]).total_seconds()
    assert 55 <= delay <= 65  # base backoff
    assert shop.snapshot(flaky)["images_state"] == "pending"
    assert shop.queued(flaky)["available_at"] == first["next_attempt_at"]

    # Not due yet: the next run leaves it alone.
    assert image_jobs.cache_images(database, {})["orders"] == 0
    assert requests_for(server)["/flaky.jpg"] == 1

    shop.time_passes()
    image_jobs.cache_images(database, {})
    second = shop.records(flaky)[0]
    assert (second["state"], second["attempts"]) == ("retrying", 2)
    delay = (second["next_attempt_at"] - second["last_attempt_at"]).total_seconds()
    assert 235 <= delay <= 245  # 4x the base

    shop.time_passes()
    image_jobs.cache_images(database, {})
    assert shop.records(flaky)[0]["state"] == "cached"
    assert shop.snapshot(flaky)["images_state"] == "cached"
    assert shop.queued(flaky) is None

    # Always 503: three attempts, then failed for good.
    gave_up = shop.records(down)[0]
    assert (gave_up["state"], gave_up["attempts"], gave_up["next_attempt_at"]) == ("failed", 3, None)
    assert (shop.snapshot(down)["images_state"], shop.snapshot(down)["cached_images"]) == ("failed", [])
    assert shop.queued(down) is None
    shop.time_passes()
    assert image_jobs.cache_images(database, {})["orders"] == 0
    assert requests_for(server) == Counter({"/flaky.jpg": 3, "/down.jpg": 3})


def test_claims_skip_locked_rows_and_hold_a_lease(env, shop, db_url) -> None:
    """Two workers claiming at the same moment get disjoint orders; a claimed order stays theirs."""
    ids = {shop.order([f"https://img.example/{i}.jpg"]) for i in range(4)}
    claim = queries.get("images_claim")
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        a.execute(queries.get("images_enqueue_pending"), {"limit": 100})
        a.commit()
        params = {"limit": 3, "lease_seconds": 300}
        got_a = {r[0] for r in a.execute(claim, {**params, "token": uuid.uuid4()}).fetchall()}
        # a has not committed: its rows are locked, b skips them instead of waiting.
        got_b = {r[0] for r in b.execute(claim, {**params, "token": uuid.uuid4()}).fetchall()}
        assert len(got_a) == 3 and len(got_b) == 1
        assert got_a | got_b == ids
        a.commit()
        b.commit()
        # After both commits the leases keep every order away from a third claim.
        assert b.execute(claim, {**params, "token": uuid.uuid4()}).fetchall() == []


def test_two_workers_racing_never_do_an_order_twice(env, server, shop, db_url, conn) -> None:
    def slow_jpeg(body: bytes):
        def route(h) -> None:
            time.sleep(0.03)
            send(h, 200, body, "image/jpeg")
        return route

    orders = []
    for i in range(16):
        for k in range(2):
            server.routes[f"/o{i}/{k}.jpg"] = slow_jpeg(jpeg(i))
        orders.append(shop.order([f"{server.url}/o{i}/{k}.jpg" for k in range(2)]))

    summaries, errors = [], []
    start = threading.Barrier(2)

    def worker() -> None:
        db = Database(db_url, min_size=1, max_size=2)
        db.open()
        try:
            start.wait()
            summaries.append(image_jobs.cache_images(db, {}))
        except Exception as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(summaries) == 2
    # Disjoint work, whoever got how much (the scheduler may let one worker claim everything): the
    # orders add up to 16 and every image was fetched exactly once.
    assert sum(s["orders"] for s in summaries) == 16
    assert set(requests_for(server).values()) == {1}
    assert len(requests_for(server)) == 32
    for order_id in orders:
        assert shop.snapshot(order_id)["images_state"] == "cached"
        assert [r["attempts"] for r in shop.records(order_id)] == [1, 1]
    assert conn.execute("select count(*) as n from private.image_cache_queue").fetchone()["n"] == 0


def test_a_worker_that_lost_its_lease_writes_nothing(env, server, shop, database, tmp_path) -> None:
    order_id = shop.order([server.add("/a.jpg", jpeg(), "image/jpeg")])
    old, new = uuid.uuid4(), uuid.uuid4()
    with database.transaction("service_role") as s:
        s.execute("images_enqueue_pending", {"limit": 10})
        s.fetch_all("images_claim", {"limit": 1, "token": old, "lease_seconds": 300})
    # The lease ran out and another worker claimed the order.
    shop.conn.execute("update private.image_cache_queue set claim_token = %s", (new,))
    cache = ImageCache(SafeFetcher(FetchPolicy(allow_loopback=True)), LocalStorage(tmp_path / "m", PUBLIC))
    try:
        order = {"order_id": order_id, "org_id": shop.org_id, "images": [server.url + "/a.jpg"]}
        outcome = image_jobs.cache_order(database, cache, order, old, image_jobs.Settings())
    finally:
        cache.close()
    assert outcome["result"] == "lost_claim"
    assert shop.snapshot(order_id)["images_state"] == "pending"
    assert shop.records(order_id) == []
    assert shop.queued(order_id)["claim_token"] == new


# -- backfill-images ------------------------------------------------------------------------------
@pytest.fixture
def legacy(env, server, shop):
    """Orders as an older system left them, plus two the backfill must not touch."""
    good = [server.add("/legacy/1.jpg", jpeg(1), "image/jpeg"), server.add("/legacy/2.jpg", jpeg(2), "image/jpeg")]
    third_party = [server.add("/cdn/a.jpg", jpeg(3), "image/jpeg")]
    return {
        "never": shop.order(good + ["http://[zz]/broken.jpg"], state=None, ref="listing-gone"),
        "none": shop.order([good[0]], state="none", cached=[], ref="listing-here"),
        "third_party": shop.order([], state="cached", cached=third_party, ref="listing-cdn"),
        "done": shop.order([good[0]], state="cached", cached=[MEDIA + "ab.webp"]),
        "pending": shop.order([good[1]], state="pending"),
    }


def test_backfill_dry_run_reports_and_changes_nothing(legacy, server, shop, database, conn, tmp_path) -> None:
    before = {k: shop.snapshot(v) for k, v in legacy.items()}
    report = tmp_path / "dry.json"
    summary = image_jobs.backfill_images(database, {"report": str(report)})

    assert summary["mode"] == "dry_run"
    assert summary["orders"] == 3
    assert (summary["images_planned"], summary["images_would_fetch"], summary["images_invalid"]) == (5, 4, 1)
    assert summary["report"] == str(report)
    assert server.seen == []  # a dry run never downloads
    assert {k: shop.snapshot(v) for k, v in legacy.items()} == before
    assert conn.execute("select count(*) as n from private.image_cache_images").fetchone()["n"] == 0

    entries = {e["order_id"]: e for e in json.loads(report.read_text())["orders"]}
    assert set(entries) == {str(legacy[k]) for k in ("never", "none", "third_party")}
    never = entries[str(legacy["never"])]
    assert len(never["planned"]) == 3 and len(never["would_fetch"]) == 2
    assert never["invalid"] == [{"position": 2, "url": "http://[zz]/broken.jpg", "reason": "bad_url",
                                 "detail": never["invalid"][0]["detail"]}]
    third = entries[str(legacy["third_party"])]
    assert third["source"] == "cached_images"
    assert third["third_party_cached_images"] == third["planned"]


def test_backfill_apply_caches_and_is_idempotent(legacy, server, shop, database, conn, tmp_path) -> None:
    summary = image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "apply.json")})
    assert summary["mode"] == "apply"
    assert summary["orders"] == 3
    assert (summary["cached"], summary["partial"], summary["images_cached"], summary["images_failed"]) == (
        2, 1, 4, 1)

    never = shop.snapshot(legacy["never"])
    assert never["images_state"] == "partial"
    assert len(never["cached_images"]) == 2 and all(u.startswith(MEDIA) for u in never["cached_images"])
    assert [r["reason"] for r in shop.records(legacy["never"]) if r["state"] != "cached"] == ["bad_url"]
    third = shop.snapshot(legacy["third_party"])
    assert third["images_state"] == "cached"
    assert len(third["cached_images"]) == 1 and third["cached_images"][0].startswith(MEDIA)
    assert shop.snapshot(legacy["none"])["images_state"] == "cached"
    assert shop.snapshot(legacy["done"])["cached_images"] == [MEDIA + "ab.webp"]
    assert shop.snapshot(legacy["pending"])["images_state"] == "pending"
    assert not conn.execute("select bool_or(archived_item) as a from public.orders").fetchone()["a"]

    fetched = requests_for(server)
    # Rerun: nothing is left, nothing is downloaded again.
    again = image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "again.json")})
    assert again["orders"] == 0
    assert requests_for(server) == fetched


def test_backfill_interrupted_then_rerun_finishes_everything(legacy, server, shop, database, tmp_path,
                                                             monkeypatch) -> None:
    real = image_jobs.cache_order
    calls = []
    before = {order_id: shop.snapshot(order_id) for order_id in legacy.values()}

    def interrupted_on_second(*args, **kwargs):
        calls.append(args[2]["order_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second order downloads
        return real(*args, **kwargs)

    monkeypatch.setattr(image_jobs, "cache_order", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "cut.json")})
    report = json.loads((tmp_path / "cut.json").read_text())
    assert report["interrupted"] is True and report["order_count"] == 1
    cut_short = calls[1]
    assert shop.queued(cut_short) is not None  # still leased to the interrupted run
    monkeypatch.setattr(image_jobs, "cache_order", real)

    # A rerun does the rest and leaves the leased order alone ...
    rerun = image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "rerun.json")})
    assert rerun["orders"] == 1
    assert shop.snapshot(cut_short) == before[cut_short]  # (which of the three it is depends on ids)
    # ... which cache-images finishes once the lease has run out.
    shop.time_passes()
    assert image_jobs.cache_images(database, {})["orders"] == 2  # it and the fixture's pending order
    assert shop.snapshot(cut_short)["images_state"] in ("cached", "partial")
    assert image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "last.json")})[
        "orders"] == 0


def test_backfill_sets_archived_item_from_the_catalog(legacy, server, shop, database, conn, tmp_path,
                                                      monkeypatch) -> None:
    server.routes["/items/listing-gone"] = lambda h: send(h, 410, b"gone", "text/plain")
    server.routes["/items/listing-here"] = lambda h: send(h, 200, b"<html>", "text/html")
    monkeypatch.setenv("CRM_CATALOG_URL", server.url + "/items/{external_ref}")

    dry = image_jobs.backfill_images(database, {"report": str(tmp_path / "dry.json")})
    assert "archived" not in dry
    assert not any(s.path.startswith("/items/") for s in server.seen)

    summary = image_jobs.backfill_images(database, {"apply": True, "report": str(tmp_path / "apply.json")})
    assert summary["archived"] == 2
    archived = {r["id"]: r["archived_item"] for r in conn.execute("select id, archived_item from public.orders")}
    assert archived[legacy["never"]] is True  # 410
    assert archived[legacy["third_party"]] is True  # 404: no route for listing-cdn
    assert archived[legacy["none"]] is False  # 200
    assert archived[legacy["pending"]] is False and archived[legacy["done"]] is False  # not backfilled
    entries = {e["order_id"]: e for e in json.loads((tmp_path / "apply.json").read_text())["orders"]}
    assert entries[str(legacy["none"])]["catalog"] == "present"
    assert entries[str(legacy["never"])]["catalog"] == "gone"


def test_backfill_progress_and_limit(legacy, database, tmp_path, capsys) -> None:
    summary = image_jobs.backfill_images(database, {"limit": 2, "progress": True,
                                                    "report": str(tmp_path / "r.json")})
    assert summary["orders"] == 2
    err = capsys.readouterr().err
    assert "backfill-images [" in err and "2/2" in err


def test_catalog_template_is_validated(monkeypatch) -> None:
    from crm.errors import ConfigError

    for bad in ("https://shop.example/items", "https://shop.example/{sku}", "https://shop.example/{"):
        monkeypatch.setenv("CRM_CATALOG_URL", bad)
        with pytest.raises(ConfigError, match="CRM_CATALOG_URL"):
            image_jobs.Catalog.from_env()
    catalog = image_jobs.Catalog("https://shop.example/i/{external_ref}")
    assert catalog.url_for({"external_item_ref": "a/b c"}) == "https://shop.example/i/a%2Fb%20c"

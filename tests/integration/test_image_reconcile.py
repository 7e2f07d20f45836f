"""`POST /reconcile/{name}` for the image jobs: started as deployed, misconfigured, and over real HTTP."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest
from psycopg.types.json import Jsonb

from crm.errors import ConfigError
from crm.images import jobs as image_jobs
from crm.sealing import generate_key
from tests.helpers import (
    LiveServer,
    assert_refuses_to_start,
    function_app,
    make_org,
    serve_function,
    start_function,
)
from tests.integration.image_fixtures import ImageServer, encoded, two_tone

CRON_SECRET = "cron-secret-for-the-image-tests"
PUBLIC = "http://media.test"
KEY = generate_key()
IMAGE_SETTINGS = ("CRM_IMAGE_MAX_PER_ORDER", "CRM_IMAGE_MAX_ATTEMPTS", "CRM_IMAGE_RETRY_SECONDS", "CRM_IMAGE_FORMAT",
                  "CRM_IMAGE_MAX_PIXELS", "CRM_IMAGE_ALLOWED_PORTS", "CRM_IMAGE_MAX_BYTES",
                  "CRM_IMAGE_CONNECT_TIMEOUT", "CRM_IMAGE_TIMEOUT", "CRM_CATALOG_URL", "SUPABASE_URL",
                  "SUPABASE_SERVICE_ROLE_KEY", "CRM_STORAGE_BUCKET")


# -- startup, as deployed -------------------------------------------------------------------------
def deployed_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a deployment of reconcile sets: the database, the cron secret, where images go."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "CRM_", "SUPABASE_"))}
    env.update({"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/unused", "CRM_CRON_SECRET": CRON_SECRET,
                "CRM_PUBLIC_URL": "https://crm.example.com", "CRM_STORAGE_DIR": str(tmp_path / "media"),
                # Serving every job: dispatch-outbox, process-inbox and the integration jobs need it.
                "CRM_SECRETS_KEY": KEY})
    env.update(extra)
    return {k: v for k, v in env.items() if v}


@pytest.mark.parametrize(("setting", "value"), [
    ("CRM_PUBLIC_URL", ""),  # local storage builds its public URLs from it
    ("CRM_PUBLIC_URL", "crm.example.com"),
    ("CRM_IMAGE_TIMEOUT", "soon"),
    ("CRM_IMAGE_ALLOWED_PORTS", "443,99999"),
])
def test_reconcile_refuses_to_start_naming_the_bad_setting(tmp_path: Path, setting: str, value: str) -> None:
    log = tmp_path / "ff.log"
    proc, _ = start_function("reconcile", deployed_env(tmp_path, **{setting: value}), log)
    assert_refuses_to_start(proc, log, setting)


def test_reconcile_starts_with_the_deployed_settings(tmp_path: Path) -> None:
    log = tmp_path / "ff.log"
    proc, url, _ = serve_function("reconcile", deployed_env(tmp_path), log)
    try:
        resp = httpx.post(f"{url}/reconcile/cache-images", timeout=30)
        assert resp.status_code == 401  # up, and still asking for the secret
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.parametrize(("setting", "value"), [
    ("CRM_IMAGE_MAX_PER_ORDER", "50"), ("CRM_IMAGE_MAX_ATTEMPTS", "0"), ("CRM_IMAGE_MAX_ATTEMPTS", "101"),
    ("CRM_IMAGE_RETRY_SECONDS", "-1"),
    ("CRM_IMAGE_FORMAT", "gif"), ("CRM_IMAGE_MAX_PIXELS", "0"), ("CRM_IMAGE_MAX_BYTES", "ten"),
    ("CRM_IMAGE_CONNECT_TIMEOUT", "0"), ("CRM_IMAGE_ALLOWED_PORTS", ","), ("CRM_CATALOG_URL", "https://x/{sku}"),
    ("SUPABASE_URL", "not a url"),
])
def test_check_config_names_every_malformed_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    setting: str, value: str) -> None:
    for name in IMAGE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRM_PUBLIC_URL", PUBLIC)
    monkeypatch.setenv("CRM_STORAGE_DIR", str(tmp_path))
    image_jobs.check_config()
    monkeypatch.setenv(setting, value)
    if setting == "SUPABASE_URL":
        monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "a.b.c")
        monkeypatch.setenv("CRM_STORAGE_BUCKET", "images")
    with pytest.raises(ConfigError, match=setting):
        image_jobs.check_config()


# -- over real HTTP -------------------------------------------------------------------------------
@pytest.fixture
def reconcile(database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The deployed reconcile app on 127.0.0.1; its settings are read when the app is created."""
    for name in IMAGE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRM_CRON_SECRET", CRON_SECRET)
    monkeypatch.setenv("CRM_PUBLIC_URL", PUBLIC)
    monkeypatch.setenv("CRM_STORAGE_DIR", str(tmp_path / "media"))
    monkeypatch.setenv("CRM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CRM_IMAGE_ALLOW_LOOPBACK", "1")
    monkeypatch.setenv("CRM_SECRETS_KEY", KEY)
    with LiveServer(function_app("reconcile")) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        yield http


def assert_problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["X-Request-Id"]
    problem = resp.json()
    assert problem["status"] == status
    return problem


def test_cron_secret_is_required(reconcile: httpx.Client) -> None:
    assert_problem(reconcile.post("/reconcile/cache-images"), 401)
    assert_problem(reconcile.post("/reconcile/cache-images", headers={"X-Cron-Secret": ""}), 401)
    assert_problem(reconcile.post("/reconcile/cache-images", headers={"X-Cron-Secret": CRON_SECRET + "x"}), 401)
    assert_problem(reconcile.post("/reconcile/cache-images", headers={"X-Cron-Secret": CRON_SECRET[:-1]}), 401)


def test_a_refused_cron_secret_names_its_scheme(reconcile: httpx.Client) -> None:
    for headers in ({}, {"X-Cron-Secret": CRON_SECRET + "x"}):
        resp = reconcile.post("/reconcile/cache-images", headers=headers)
        assert assert_problem(resp, 401)["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"] == 'CronSecret realm="crm"'


def test_unknown_job_method_and_limit(reconcile: httpx.Client) -> None:
    secret = {"X-Cron-Secret": CRON_SECRET}
    assert "no-such-job" in assert_problem(reconcile.post("/reconcile/no-such-job", headers=secret), 404)["detail"]
    resp = reconcile.get("/reconcile/cache-images", headers=secret)
    assert_problem(resp, 405)
    assert resp.headers["Allow"] == "POST"
    assert_problem(reconcile.post("/reconcile/cache-images?limit=some", headers=secret), 400)


def test_cache_images_runs_and_answers_its_summary(reconcile: httpx.Client, conn) -> None:
    org_id = make_org(conn)
    customer_id = conn.execute(
        "insert into public.customers (org_id, full_name, phone_e164) values (%s, 'Anna', %s) returning id",
        (org_id, f"+4915{uuid.uuid4().int % 10**9:09d}")).fetchone()["id"]
    with ImageServer() as images:
        urls = [images.add("/1.jpg", encoded(two_tone(), "JPEG"), "image/jpeg"),
                images.add("/2.png", encoded(two_tone((30, 20)), "PNG"), "image/png")]
        order_id = conn.execute(
            "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
            " values (%s, %s, 'listing-1', %s) returning id",
            (org_id, customer_id, Jsonb({"external_ref": "listing-1", "title": "Canyon", "images": urls,
                                         "images_state": "pending"}))).fetchone()["id"]

        resp = reconcile.post("/reconcile/cache-images", headers={"X-Cron-Secret": CRON_SECRET})

    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {"job": "cache-images", "orders": 1, "cached": 1, "images_cached": 2,
                           "images_failed": 0, "images_retrying": 0}
    snapshot = conn.execute("select item_snapshot from public.orders where id = %s", (order_id,)).fetchone()[
        "item_snapshot"]
    assert snapshot["images_state"] == "cached"
    assert all(u.startswith(PUBLIC + "/media/") for u in snapshot["cached_images"])
    again = reconcile.post("/reconcile/cache-images/", headers={"X-Cron-Secret": CRON_SECRET})
    assert again.json() == {"job": "cache-images", "orders": 0}

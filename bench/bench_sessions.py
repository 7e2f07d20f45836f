"""Benchmark `book_session` on one hot session vs spread over 1,000 sessions vs a plain one-row insert
(issue 15), all at the same concurrency and in the same request shape PostgREST uses (a transaction
as `authenticated` with JWT claims, one statement, commit).

- hot: every client books a new customer into the same session (capacity 10,000);
- spread: the same, session i % 1,000 of 1,000 sessions;
- plain: a one-row INSERT into a table without triggers or RLS (the bare write);
- hot-1rt: hot with BEGIN, claims, the call and COMMIT sent in one round trip, to show how much of
  the hot case is the client's round trip for COMMIT made while the session row is locked;
- hot-async: hot with `synchronous_commit = off`, likewise for the WAL flush of COMMIT.
Modes alternate in short slices so all see the same background load on a shared machine.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_sessions.py

A scratch database is created on that server and dropped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
import uuid

import psycopg
from psycopg import conninfo, sql

from crm.tools.migrate import Migrator

SESSIONS = 1000
BOOK = "select id from public.book_session(session_id => %s, customer_id => %s)"
PLAIN = "insert into public.bench_plain (session_id, customer_id) values (%s, %s)"
MODES = ("hot", "spread", "plain", "hot-1rt", "hot-async")
ONE_ROUND_TRIP = ("begin; select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true);"
                  " select id from public.book_session(session_id => %s, customer_id => %s); commit")


def setup(url: str, customers: int) -> tuple[uuid.UUID, list[uuid.UUID], list[uuid.UUID], uuid.UUID]:
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn).migrate()
        org = conn.execute("insert into public.organizations (slug, name) values ('bench', 'Bench') returning id"
                           ).fetchone()[0]
        user = conn.execute("insert into auth.users (email) values ('bench@example.test') returning id").fetchone()[0]
        conn.execute("insert into public.staff (org_id, user_id, role) values (%s, %s, 'manager')", (org, user))
        people = [r[0] for r in conn.execute(
            "insert into public.customers (org_id, full_name, email) select %s, 'C' || i, 'c' || i || '@bench.test'"
            " from generate_series(1, %s) i returning id", (org, customers))]
        conn.execute("insert into public.class_packages (org_id, customer_id, credits_total)"
                     " select %s, unnest(%s::uuid[]), 1000", (org, people))
        sessions = [r[0] for r in conn.execute(
            "insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity)"
            " select %s, 'S' || i, now() + interval '7 days', now() + interval '7 days 1 hour', 10000"
            " from generate_series(1, %s) i returning id", (org, SESSIONS + 3))]
        conn.execute("create table public.bench_plain (id uuid primary key default gen_random_uuid(),"
                     " session_id uuid not null, customer_id uuid not null, created_at timestamptz default now())")
        conn.execute("grant insert on public.bench_plain to authenticated")
        conn.execute("vacuum analyze")
    return user, people, sessions, org


def run_slice(url: str, mode: str, clients: int, seconds: float, user: uuid.UUID, hot: dict[str, uuid.UUID],
              spread: list[uuid.UUID], next_customer, latencies: list[float]) -> int:
    claims = json.dumps({"sub": str(user), "role": "authenticated"})
    done = [0] * clients
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            while time.monotonic() < stop:
                customer, n = next_customer()
                session = spread[n % SESSIONS] if mode == "spread" else hot.get(mode, hot["hot"])
                t0 = time.perf_counter()
                if mode == "hot-1rt":
                    psycopg.ClientCursor(conn).execute(ONE_ROUND_TRIP, (claims, session, customer))
                    latencies.append(time.perf_counter() - t0)
                    done[k] += 1
                    continue
                with conn.transaction():
                    conn.execute("select set_config('role', 'authenticated', true),"
                                 " set_config('request.jwt.claims', %s, true),"
                                 " set_config('synchronous_commit', %s, true)",
                                 (claims, "off" if mode == "hot-async" else "on"))
                    conn.execute(PLAIN if mode == "plain" else BOOK, (session, customer))
                latencies.append(time.perf_counter() - t0)
                done[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12, help="per mode, in slices")
    parser.add_argument("--slice", type=float, default=2)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"bench_sessions_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server, dbname=name)
    try:
        # Each booking is a fresh customer: hot runs at most ~1,000/s here, so 40k is plenty.
        user, people, sessions, _org = setup(url, 40_000)
        # Each hot mode on its own session (capacity 10,000: never the waitlist path).
        hot, spread = {"hot": sessions[0], "hot-async": sessions[1], "hot-1rt": sessions[2]}, sessions[3:]
        counters = {mode: itertools.count() for mode in MODES}
        lock = threading.Lock()
        totals = dict.fromkeys(MODES, 0)
        latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
        elapsed = dict.fromkeys(MODES, 0.0)
        for _ in range(max(1, round(args.seconds / args.slice))):
            for mode in MODES:
                # A fresh customer per booking of a session (no already_booked, no shared package row).
                def next_customer(mode: str = mode) -> tuple[uuid.UUID, int]:
                    with lock:
                        n = next(counters[mode])
                    return people[n % len(people)], n
                t0 = time.monotonic()
                totals[mode] += run_slice(url, mode, args.clients, args.slice, user, hot, spread, next_customer,
                                          latencies[mode])
                elapsed[mode] += time.monotonic() - t0
        rate = {mode: totals[mode] / elapsed[mode] for mode in MODES}
        print(f"{args.clients} clients, {args.seconds:.0f} s per mode in {args.slice:.0f} s slices")
        for mode in MODES:
            p50 = statistics.median(latencies[mode]) * 1000
            p99 = statistics.quantiles(latencies[mode], n=100)[98] * 1000
            print(f"  {mode:10s} {rate[mode]:8.0f} /s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   ({totals[mode]} calls)")
        print(f"  spread / plain     = {rate['spread'] / rate['plain']:.2f}")
        print(f"  hot / plain        = {rate['hot'] / rate['plain']:.2f}")
        print(f"  hot / spread       = {rate['hot'] / rate['spread']:.2f}")
        print(f"  hot-1rt / hot      = {rate['hot-1rt'] / rate['hot']:.2f}")
        print(f"  hot-async / hot    = {rate['hot-async'] / rate['hot']:.2f}")
        print("  The hot case is serialised by the class_sessions row lock (SELECT ... FOR UPDATE, held from\n"
              "  the seat check to COMMIT): one booking of a session at a time, so its rate is 1 / lock hold\n"
              "  time (seat count, credit UPDATE, INSERT and its triggers, the result's trip to the client and\n"
              "  its COMMIT coming back, the WAL flush), whatever the number of clients.")
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

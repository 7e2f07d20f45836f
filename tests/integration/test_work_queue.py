"""The one leased work queue (db/functions/000_work_queue.sql) that the image cache, webhook
deliveries and the inbox share: claim, lease, hold, release, next due, backoff."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.helpers import make_org


def claim(conn: psycopg.Connection, queue: str, token: uuid.UUID, n: int = 10, lease: str = "5 minutes") -> list[dict]:
    return conn.execute("select * from private.queue_claim(%s, %s, %s, %s::interval)",
                        (queue, n, token, lease)).fetchall()


def inbound(conn: psycopg.Connection, n: int) -> list[int]:
    org = make_org(conn)
    integ = conn.execute("insert into public.integrations (org_id, kind) values (%s, 'twilio') returning id",
                         (org,)).fetchone()["id"]
    return [conn.execute(
        "insert into private.inbound_events (org_id, integration_id, source, event_id, event_type, payload,"
        " next_attempt_at) values (%s, %s, 'twilio', %s, 'call', '{}', now()) returning id",
        (org, integ, f"ev-{i}")).fetchone()["id"] for i in range(n)]


def test_every_queue_is_declared_with_columns_its_table_has(conn) -> None:
    rows = conn.execute("select * from private.work_queues order by name").fetchall()
    assert [r["name"] for r in rows] == ["image_cache", "inbox", "webhook_deliveries"]
    for r in rows:
        columns = {c["attname"] for c in conn.execute(
            "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped",
            (r["relation"],))}
        wanted = {r["key_column"], r["due_column"], r["lease_column"], r["token_column"]} | (
            {r["count_column"]} if r["count_column"] else set())
        assert wanted <= columns, r["name"]


def test_a_claim_leases_to_its_token_and_never_takes_back_what_that_token_holds(conn) -> None:
    ids = inbound(conn, 3)
    mine, other = uuid.uuid4(), uuid.uuid4()
    got = claim(conn, "inbox", mine, n=2)
    assert sorted(int(r["id"]) for r in got) == ids[:2]
    assert all(r["lost_lease"] is None and r["claims"] is None for r in got)  # the inbox counts attempts itself
    assert [int(r["id"]) for r in claim(conn, "inbox", other)] == [ids[2]]
    assert claim(conn, "inbox", uuid.uuid4()) == []  # every lease running

    # The leases run out while `mine` is still on its items (a stall): it does not claim them again,
    # and the claim that does reports the lease that ran out.
    conn.execute("update private.inbound_events set locked_until = now() - interval '1 second'"
                 " where lease_token = %s", (mine,))
    assert claim(conn, "inbox", mine) == []
    taken = claim(conn, "inbox", other)
    assert sorted(int(r["id"]) for r in taken) == ids[:2]
    assert all(r["lost_lease"] is not None for r in taken)
    assert conn.execute("select count(*) as n from private.inbound_events where lease_token = %s",
                        (other,)).fetchone()["n"] == 3


def test_hold_renew_and_release_act_only_under_the_holding_token(conn) -> None:
    [event] = inbound(conn, 1)
    token, stranger = uuid.uuid4(), uuid.uuid4()
    claim(conn, "inbox", token, lease="10 seconds")

    def one(sql: str, *args):
        return next(iter(conn.execute(sql, args).fetchone().values()))

    assert one("select private.queue_hold('inbox', %s, %s)", str(event), token) is True
    assert one("select private.queue_hold('inbox', %s, %s)", str(event), stranger) is False
    assert one("select private.queue_renew('inbox', %s, %s, interval '1 hour')", stranger, [str(event)]) == 0
    assert one("select private.queue_renew('inbox', %s, %s, interval '1 hour')", token, [str(event)]) == 1
    assert one("select locked_until > now() + interval '50 minutes' from private.inbound_events where id = %s",
               event) is True
    assert one("select private.queue_release('inbox', %s, %s, now() + interval '1 minute')",
               str(event), stranger) is False
    assert one("select private.queue_release('inbox', %s, %s, now() + interval '1 minute')",
               str(event), token) is True
    row = conn.execute("select locked_until, lease_token, next_attempt_at > now() as later"
                       " from private.inbound_events where id = %s", (event,)).fetchone()
    assert row == {"locked_until": None, "lease_token": None, "later": True}
    assert claim(conn, "inbox", token) == []  # not due yet


def test_next_due_counts_leases_of_others_that_run_out(conn) -> None:
    [a, b] = inbound(conn, 2)
    token, dead_worker = uuid.uuid4(), uuid.uuid4()

    def next_due(t: uuid.UUID) -> float | None:
        return conn.execute("select private.queue_next_due('inbox', %s) as s", (t,)).fetchone()["s"]

    assert next_due(token) <= 0  # both due now
    assert [int(r["id"]) for r in claim(conn, "inbox", token, n=1)] == [a]
    assert [int(r["id"]) for r in claim(conn, "inbox", dead_worker, n=1, lease="30 seconds")] == [b]
    # a is token's own (in flight, not waiting); b waits for the dead worker's lease: about 30 s.
    assert 25 < next_due(token) <= 30
    conn.execute("update private.inbound_events set next_attempt_at = now() + interval '10 seconds',"
                 " locked_until = null, lease_token = null where lease_token = %s", (token,))
    assert 5 < next_due(token) <= 10  # a's retry comes first now
    conn.execute("update private.inbound_events set status = 'processed', next_attempt_at = null,"
                 " locked_until = null, lease_token = null")
    assert next_due(token) is None


def test_backoff_follows_the_schedule_with_jitter_then_ends(conn) -> None:
    steps = "array[interval '10 seconds', interval '100 seconds']"
    delays = [conn.execute(f"select extract(epoch from private.queue_backoff(%s, {steps})) as s",
                           (n,)).fetchone()["s"] for n in (1, 2, 3)]
    assert 8 <= delays[0] <= 12 and 80 <= delays[1] <= 120
    assert delays[2] is None  # past the last step: dead


def test_an_unknown_queue_is_refused(conn) -> None:
    with pytest.raises(psycopg.Error) as err:
        claim(conn, "no_such_queue", uuid.uuid4())
    assert err.value.sqlstate == "PT422"


def test_service_role_claims_deliveries_and_images_but_not_the_inbox_directly(conn) -> None:
    from tests.helpers import acting_as

    with acting_as(conn, "service_role"):
        assert claim(conn, "image_cache", uuid.uuid4()) == []
        assert claim(conn, "webhook_deliveries", uuid.uuid4()) == []
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, "service_role"):
        claim(conn, "inbox", uuid.uuid4())  # through private.inbox_claim (definer) only

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


def test_a_retry_of_a_disabled_endpoint_that_came_due_is_paused_not_sent(conn) -> None:
    """A 410 disables the endpoint while other attempts are in flight; those are recorded as failed
    afterwards with a retry time. The claim must not send them: it pauses them as the endpoint's
    trigger paused the rest (next_attempt_at = infinity, the claim's attempt given back)."""
    org = make_org(conn)
    conn.execute("select set_config('crm.webhook_allow_loopback', 'on', false)")
    endpoint = conn.execute("select private.webhook_endpoint_create(%s, 'http://127.0.0.1:9/', '{}', 'x') as e",
                            (org,)).fetchone()["e"]["id"]
    conn.execute("insert into public.customers (org_id, full_name, email) values (%s, 'Anna', 'a@example.com')",
                 (org,))
    fanned = conn.execute(
        "insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)"
        " select o.org_id, %s, o.event_id, o.event_type from private.outbox o where o.org_id = %s returning id",
        (endpoint, org)).fetchall()
    assert fanned
    conn.execute("update public.webhook_endpoints set enabled = false where id = %s", (endpoint,))
    conn.execute("update public.webhook_deliveries set status = 'failed', attempts = 1, next_attempt_at = now()"
                 " where endpoint_id = %s", (endpoint,))  # recorded after the endpoint was disabled
    assert conn.execute("select * from private.webhook_claim(%s, 10, interval '1 minute')",
                        (uuid.uuid4(),)).fetchall() == []
    rows = conn.execute("select next_attempt_at = 'infinity' as paused, attempts, lease_token"
                        " from public.webhook_deliveries where endpoint_id = %s", (endpoint,)).fetchall()
    assert rows and all(r == {"paused": True, "attempts": 1, "lease_token": None} for r in rows)
    # Enabled again, they are sent now (the endpoint's trigger), with the claim counting the attempt.
    conn.execute("update public.webhook_endpoints set enabled = true where id = %s", (endpoint,))
    again = conn.execute("select * from private.webhook_claim(%s, 10, interval '1 minute')",
                         (uuid.uuid4(),)).fetchall()
    assert len(again) == len(rows) and all(r["attempts"] == 2 for r in again)


def test_process_inbox_records_a_result_only_under_its_lease(conn) -> None:
    [event] = inbound(conn, 1)
    run, later_run = uuid.uuid4(), uuid.uuid4()
    assert [r["id"] for r in conn.execute("select id from private.inbox_claim(10, 60, %s)", (run,))] == [event]
    # The lease ran out and a later run claimed the event: the first run's result is dropped.
    conn.execute("update private.inbound_events set locked_until = now() - interval '1 second'")
    assert [r["id"] for r in conn.execute("select id from private.inbox_claim(10, 60, %s)", (later_run,))] == [event]
    finish = "select private.inbox_finish(%s, null, 'fetch failed: timeout', %s) as outcome"
    assert conn.execute(finish, (event, run)).fetchone()["outcome"] == "pending"
    row = conn.execute("select status, attempts, lease_token from private.inbound_events where id = %s",
                       (event,)).fetchone()
    assert row == {"status": "pending", "attempts": 0, "lease_token": later_run}
    assert conn.execute(finish, (event, later_run)).fetchone()["outcome"] == "failed"
    row = conn.execute("select status, attempts, lease_token, next_attempt_at > now() as later"
                       " from private.inbound_events where id = %s", (event,)).fetchone()
    assert row == {"status": "failed", "attempts": 1, "lease_token": None, "later": True}

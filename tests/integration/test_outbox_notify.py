"""The outbox wake-up (db/triggers/outbox.sql): writers NOTIFY crm_outbox only while a worker sleeps.

NOTIFY serialises the commits of every notifying transaction, so a booking must not send one when
no worker waits for it. A worker that waits holds the sleep lock (query outbox_sleep); writers that
did not notify hold it shared until they commit, so a worker about to sleep waits for them first.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from crm import queries
from tests.helpers import make_org


def add_customer(conn: psycopg.Connection, org: uuid.UUID) -> None:
    conn.execute("insert into public.customers (org_id, full_name, email) values (%s, 'Anna', %s)",
                 (org, f"{uuid.uuid4().hex[:10]}@example.test"))


def notified(listener: psycopg.Connection, timeout: float) -> int:
    return len(list(listener.notifies(timeout=timeout, stop_after=1)))


def test_writers_notify_only_while_a_worker_sleeps(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener, \
            psycopg.connect(db_url, autocommit=True) as writer, \
            psycopg.connect(db_url, autocommit=True) as worker:
        listener.execute(queries.get("outbox_listen"))
        org = make_org(writer)

        add_customer(writer, org)  # no worker sleeps: queued for fan-out, nobody woken
        assert writer.execute("select count(*) from private.outbox_fanout").fetchone()[0] == 1
        assert notified(listener, 0.5) == 0

        worker.execute(queries.get("outbox_sleep"))
        add_customer(writer, org)
        assert notified(listener, 5) == 1
        assert worker.execute(queries.get("outbox_sleeper_exists")).fetchone()[0] is False  # only itself
        assert writer.execute(queries.get("outbox_sleeper_exists")).fetchone()[0] is True

        worker.execute(queries.get("outbox_wake"))
        add_customer(writer, org)
        assert notified(listener, 0.5) == 0
        assert writer.execute("select count(*) from private.outbox_fanout").fetchone()[0] == 3


def test_a_worker_about_to_sleep_waits_for_writers_that_did_not_notify(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as writer, \
            psycopg.connect(db_url, autocommit=True, options="-c lock_timeout=300ms") as worker, \
            psycopg.connect(db_url, autocommit=True) as other:
        org = make_org(writer)
        with writer.transaction():
            add_customer(writer, org)  # holds the sleep lock shared until it commits
            with pytest.raises(psycopg.errors.LockNotAvailable):
                worker.execute(queries.get("outbox_sleep"))
            assert other.execute(queries.get("outbox_sleeper_exists")).fetchone()[0] is False
        worker.execute(queries.get("outbox_sleep"))  # committed: now it sees that event
        assert worker.execute("select count(*) from private.outbox_fanout").fetchone()[0] == 1
        assert other.execute(queries.get("outbox_sleeper_exists")).fetchone()[0] is True

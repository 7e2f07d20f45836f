"""Upgrading a database whose queues hold rows from before the one leased work queue: the inbox's
running leases keep running (under a token nobody holds) and the image queue keeps its orders."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from crm.tools.migrate import DB_DIR, Migrator
from tests.migration.upgrade import migration_named, schema_before

QUEUE = migration_named("_work_queues.sql")


def test_rows_queued_before_the_work_queue_migrate(fresh_database, tmp_path: Path) -> None:
    old = schema_before(tmp_path, QUEUE)
    url = fresh_database("queue_upgrade")
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        Migrator(conn, old, log=lambda m: None).migrate()
        org = conn.execute("insert into public.organizations (slug, name) values ('old', 'Old')"
                           " returning id").fetchone()["id"]
        integ = conn.execute("insert into public.integrations (org_id, kind) values (%s, 'twilio') returning id",
                             (org,)).fetchone()["id"]
        events = {}
        for name, lease in (("leased", "now() + interval '1 hour'"), ("waiting", "null")):
            events[name] = conn.execute(
                "insert into private.inbound_events (org_id, integration_id, source, event_id, event_type, payload,"
                f" next_attempt_at, locked_until) values (%s, %s, 'twilio', %s, 'call', '{{}}', now(), {lease})"
                " returning id", (org, integ, name)).fetchone()["id"]
        customer = conn.execute("insert into public.customers (org_id, full_name, email)"
                                " values (%s, 'Anna', 'a@example.com') returning id", (org,)).fetchone()["id"]
        order = conn.execute("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                             " values (%s, %s, 'listing-1', %s) returning id",
                             (org, customer, json.dumps({"external_ref": "listing-1", "title": "Bike"}))
                             ).fetchone()["id"]
        conn.execute("insert into private.image_cache_queue (order_id, org_id, claim_token, claimed_at, claims,"
                     " available_at) values (%s, %s, gen_random_uuid(), now(), 1, now() - interval '1 second')",
                     (order, org))

        Migrator(conn, DB_DIR, log=lambda m: None).migrate()

        rows = {r["id"]: r for r in conn.execute("select id, locked_until, lease_token from private.inbound_events")}
        assert rows[events["leased"]]["lease_token"] is not None
        assert (rows[events["waiting"]]["locked_until"], rows[events["waiting"]]["lease_token"]) == (None, None)
        # The old lease still holds its event: a claim takes only the waiting one.
        claimed = conn.execute("select id from private.inbox_claim(10, 60, %s)", (uuid.uuid4(),)).fetchall()
        assert [r["id"] for r in claimed] == [events["waiting"]]
        # The image order whose lease ran out is claimable again, and says whose lease that was.
        [again] = conn.execute("select * from private.queue_claim('image_cache', 10, %s, interval '5 minutes')",
                               (uuid.uuid4(),)).fetchall()
        assert again["id"] == str(order) and again["lost_lease"] is not None and again["claims"] == 2
        assert "claimed_at" not in {c.name for c in conn.execute(
            "select * from private.image_cache_queue limit 0").description}

"""Upgrading to 0020 (the booking's CHECKs in cheaper forms): the outbox keeps exactly its lists of
event and aggregate types, rows written before still pass, and the Idempotency-Key rule is unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from crm.tools.migrate import DB_DIR, Migrator
from tests.migration.upgrade import migration_named, schema_before

CHECKS = migration_named("_booking_speed_checks.sql")
LISTS = ("outbox_event_type_known", "outbox_aggregate_type_known")


def listed(conn: psycopg.Connection, name: str) -> set[str]:
    definition = conn.execute("select pg_get_constraintdef(oid) as d from pg_constraint where conname = %s",
                              (name,)).fetchone()["d"]
    # Before: IN ('a'::text, 'b'::text); since 0020: = ANY ('{a,b}'::text[]).
    quoted = re.findall(r"'([^']*)'", definition)
    return {v for q in quoted for v in (q.strip("{}").split(",") if q.startswith("{") else [q])}


def test_outbox_lists_and_the_key_rule_survive_the_upgrade(fresh_database, tmp_path: Path) -> None:
    old = schema_before(tmp_path, CHECKS)
    url = fresh_database("checks_upgrade")
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        Migrator(conn, old, log=lambda m: None).migrate()
        before = {name: listed(conn, name) for name in LISTS}
        assert "session_booking.promoted" in before["outbox_event_type_known"]
        org = conn.execute("insert into public.organizations (slug, name) values ('old', 'Old')"
                           " returning id").fetchone()["id"]
        conn.execute("insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)"
                     " values (%s, 'lead.created', 'lead', gen_random_uuid(),"
                     " '{\"type\": \"lead.created\", \"timestamp\": \"t\", \"data\": {}}')", (org,))

        Migrator(conn, DB_DIR, log=lambda m: None).migrate()

        assert {name: listed(conn, name) for name in LISTS} == before
        conn.execute("alter table private.outbox validate constraint outbox_payload_standard_webhook")
        for bad in ('{"type": "order.created", "timestamp": "t", "data": {}}', '[]',
                    '{"type": "lead.created", "timestamp": 1, "data": {}}',
                    '{"type": "lead.created", "timestamp": "t", "data": []}'):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)"
                             " values (%s, 'lead.created', 'lead', gen_random_uuid(), %s)", (org, bad))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)"
                         " values (%s, 'lead.deleted', 'lead', gen_random_uuid(),"
                         " '{\"type\": \"lead.deleted\", \"timestamp\": \"t\", \"data\": {}}')", (org,))
        key_ok = "insert into private.idempotency_keys (org_id, key, request_hash) values (%s, %s, sha256('x'))"
        for good in ("a", "!" * 255, "~Key-1"):
            conn.execute(key_ok, (org, good))
        for bad in ("", "a" * 256, "with space", "tab\t", "ü"):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(key_ok, (org, bad))

"""Upgrading a database that holds rows written before the text rules (issue 10): the rules
migration brings them to their stored form instead of failing on them, and then holds the rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from crm.tools.migrate import DB_DIR, Migrator, versioned_files

RULES = next(f.path.name for f in versioned_files() if f.path.name.endswith("_database_rules.sql"))


def test_rows_written_before_the_rules_are_scrubbed_on_upgrade(fresh_database, tmp_path: Path) -> None:
    # The schema as it was before the rules: every versioned migration before them, nothing else.
    old = tmp_path / "db"
    (old / "migrations").mkdir(parents=True)
    for sub in ("policies", "triggers"):
        (old / sub).mkdir()
    for f in versioned_files():
        if f.path.name < RULES:
            shutil.copy(f.path, old / "migrations" / f.path.name)
    url = fresh_database("upgrade")
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        Migrator(conn, old, log=lambda m: None).migrate()
        org = conn.execute("insert into public.organizations (slug, name) values ('old', 'Old')"
                           " returning id").fetchone()["id"]
        customer = conn.execute(
            "insert into public.customers (org_id, full_name, email, city) values (%s, %s, 'a@example.com', %s)"
            " returning id", (org, "Anna \u202e  Schmidt", "c" * 150)).fetchone()["id"]
        blank = conn.execute("insert into public.customers (org_id, full_name, email) values (%s, %s, 'b@example.com')"
                             " returning id", (org, "\u200b\u200b")).fetchone()["id"]
        lead = conn.execute("insert into public.leads (org_id, customer_id, source, notes)"
                            " values (%s, %s, 'manual', %s)"
                            " returning id", (org, customer, "called\u0085  \r\nback   ")).fetchone()["id"]
        conn.execute("insert into public.orders (org_id, customer_id, external_item_ref, item_snapshot)"
                     " values (%s, %s, 'listing-1', %s)",
                     (org, customer, json.dumps({"external_ref": "listing-1", "title": "Bike"})))

        Migrator(conn, DB_DIR, log=lambda m: None).migrate()

        rows = {r["id"]: r for r in conn.execute("select id, full_name, city from public.customers")}
        assert (rows[customer]["full_name"], rows[customer]["city"]) == ("Anna Schmidt", "c" * 100)
        assert rows[blank]["full_name"] == "Unknown"
        assert conn.execute("select notes from public.leads where id = %s", (lead,)).fetchone()["notes"] == (
            "called\nback")
        invalid = conn.execute("select conname from pg_constraint where not convalidated"
                               " and connamespace = 'public'::regnamespace").fetchall()
        assert invalid == []
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("update public.customers set city = %s where id = %s", ("x\u202ey", customer))

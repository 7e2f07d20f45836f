"""Benchmark of `crm import leads --apply` against COPY (not part of the test suite).

    python bench/bench_import.py            # DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres

(`--rows N` for another size; default 100,000.)

Creates its own database on that server, applies the migrations, writes one CSV of N leads
(legacy_id, full_name, phone in several formats, email, status, notes; about 70 % distinct people,
the rest repeat someone), then in the same run:
  - COPY of that file into a bare table of the same columns (text, no constraints, no triggers):
    the physical limit of getting those bytes into PostgreSQL;
  - the import as `crm import leads FILE --apply` runs it (crm.imports.run.run_import): parsing,
    phone numbers to E.164, one customer found or created per row through
    private.find_or_create_customer, a lead with its status event, outbox rows and import activity,
    a savepoint per row, 500 rows per transaction;
  - the same import again (every row found unchanged: the idempotent rerun).
Prints rows per second of each and the ratio import / COPY (goal >= 0.2). The database is dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from crm.imports.run import run_import
from crm.tools.migrate import Migrator

GOAL = 0.2
COLUMNS = ("legacy_id", "full_name", "phone", "email", "status", "notes")
FIRST = ("Anna", "Maria", "Olga", "Peter", "Ivan", "Elena", "Thomas", "Julia", "Lukas", "Zoë", "José", "Пётр")
LAST = ("Schmidt", "Müller", "Ivanov", "Weber", "Fischer", "Nowak", "García", "Wagner", "Becker", "Schröder")


def phone(person: int) -> str:
    prefix = (151, 152, 155, 157, 159, 160, 162, 163, 170, 172, 174, 176, 178)[person % 13]
    digits = f"{prefix}{(person * 7919) % 100_000_000:08d}"
    return [f"0{digits}", f"+49 {digits[:3]} {digits[3:]}", f"0049-{digits}", f"(0{digits[:3]}) {digits[3:]}",
            f"+49{digits}"][person % 5]


def write_csv(path: Path, rows: int) -> None:
    distinct = int(rows * 0.7)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for n in range(1, rows + 1):
            person = n if n <= distinct else (n * 31) % distinct + 1
            w.writerow([n, f"{FIRST[person % len(FIRST)]} {LAST[person // 7 % len(LAST)]}", phone(person),
                        f"person{person}@mail{person % 7}.example" if person % 2 else "",
                        ("new", "contacted", "qualified")[n % 3], f"legacy note {n}" if n % 4 == 0 else ""])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"crm_bench_import_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server, dbname=name)
    try:
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            Migrator(conn).migrate()
            conn.execute("insert into public.organizations (slug, name, default_country) "
                         "values ('bench', 'Bench', 'DE')")
            path = Path(tmp) / "leads.csv"
            write_csv(path, args.rows)
            print(f"{args.rows:,} leads, {path.stat().st_size / 1e6:.1f} MB of CSV", file=sys.stderr)

            conn.execute("create table bench_copy (legacy_id text, full_name text, phone text, email text, "
                         "status text, notes text)")
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy("copy bench_copy from stdin (format csv, header)") as copy:
                copy.write(path.read_bytes())
            copy_s = time.perf_counter() - started

            started = time.perf_counter()
            report = run_import(conn, "leads", path, "bench", apply=True, mapping={}, progress=False)
            import_s = time.perf_counter() - started
            assert report.counts["created"] == args.rows, {k: v for k, v in report.as_json().items() if k != "bad_rows"}

            started = time.perf_counter()
            rerun = run_import(conn, "leads", path, "bench", apply=True, mapping={}, progress=False)
            rerun_s = time.perf_counter() - started
            assert rerun.counts["skipped"] == args.rows, rerun.counts
            customers = conn.execute("select count(*) n from public.customers").fetchone()["n"]
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    copy_rate, import_rate, rerun_rate = args.rows / copy_s, args.rows / import_s, args.rows / rerun_s
    print(f"COPY into a bare table : {copy_s:7.2f} s  {copy_rate:10,.0f} rows/s")
    print(f"crm import --apply     : {import_s:7.2f} s  {import_rate:10,.0f} rows/s  "
          f"({customers:,} customers found or created)")
    print(f"crm import --apply again: {rerun_s:6.2f} s  {rerun_rate:10,.0f} rows/s  (all unchanged)")
    ratio = import_rate / copy_rate
    print(f"import / COPY = {ratio:.3f}x (goal >= {GOAL}x): {'met' if ratio >= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

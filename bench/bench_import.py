"""Benchmark of `crm import leads --apply` against COPY (not part of the test suite).

    python bench/bench_import.py            # DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres

(`--rows N` for another size; default 100,000. `--breakdown`: the first import runs under
auto_explain, slower, and prints where its database time goes, per table written.)

Creates its own database on that server, applies the migrations, writes one CSV of N leads
(legacy_id, full_name, phone in several formats, email, status, notes; about 70 % distinct people,
the rest repeat someone), then in the same run:
  - COPY of that file into a bare table of the same columns (text, no constraints, no triggers),
    the best of three: the physical limit of getting those bytes into PostgreSQL;
  - the import as `crm import leads FILE --apply` runs it (crm.imports.run.run_import): parsing,
    phone numbers to E.164 (in a thread, a batch ahead of the database), 500 rows per transaction
    written set-based by private.import_rows: customers found or created by phone then email, a
    lead with its status event, outbox rows (lead.created, customer.created) and import activity
    for every row;
  - the same import again (every row found unchanged: the idempotent rerun);
  - the Python side alone on the same file (reading the CSV; normalising the rows), to show how
    much of the import's time is Python's.
Prints rows per second of each, the CPU time of the database's server process for each import
(when the server runs on this machine: the database's own cost, whatever else the machine is
doing), and the ratio import / COPY (goal >= 0.2). The database is dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from crm.imports.read import read_rows
from crm.imports.run import Importer, Report, run_import
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


class BackendCpu:
    """CPU seconds the connection's server process used since the last call (from /proc, when the
    server runs on this machine): the database's own cost, whatever else the machine is doing."""

    def __init__(self, conn: psycopg.Connection):
        self.path = Path(f"/proc/{conn.execute('select pg_backend_pid() pid').fetchone()['pid']}/stat")
        self.last = self._read()

    def _read(self) -> float | None:
        try:
            fields = self.path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def seconds(self) -> float | None:
        now, before = self._read(), self.last
        self.last = now
        return None if now is None or before is None else now - before


COMPONENTS = (  # (label, what the statement's text contains), the first match wins
    ("customers (+ normalize trigger, indexes, GIN)", "insert into public.customers"),
    ("leads (+ notes trigger, indexes)", "insert into public.leads"),
    ("status events", "insert into public.lead_status_events"),
    ("outbox fan-out queue", "insert into private.outbox_fanout"),
    ("outbox rows (customer/lead.created)", "insert into private.outbox"),
    ("import activities", "insert into public.activities"),
)


class Breakdown:
    """The database time of an import by what it writes, from auto_explain's plans of every nested
    statement: each insert's own time (its node, BEFORE triggers and indexes) without the AFTER
    triggers it fired (foreign-key checks, status events, outbox), which are counted where they write."""

    def __init__(self, conn: psycopg.Connection):
        self.total = 0.0
        self.parts: dict[str, float] = dict.fromkeys([label for label, _ in COMPONENTS] + ["foreign-key checks"], 0.0)
        conn.execute("load 'auto_explain'")
        conn.execute("set auto_explain.log_min_duration = 1; set auto_explain.log_analyze = on; "
                     "set auto_explain.log_nested_statements = on; set auto_explain.log_triggers = on; "
                     "set client_min_messages = log")
        conn.add_notice_handler(self.notice)

    def notice(self, diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        found = re.search(r"duration: ([0-9.]+) ms", text)
        if not found or "Query Text:" not in text:
            return
        duration, query = float(found.group(1)), text.split("Query Text:", 1)[1].lower()
        if "from private.import_rows(" in query.split("\n", 1)[0]:
            self.total += duration
            return
        after = sum(float(t) for t in re.findall(r"trigger [^:]*: time=([0-9.]+)", text, re.IGNORECASE))
        self.parts["foreign-key checks"] += sum(
            float(t) for t in re.findall(r"trigger for constraint [^:]*: time=([0-9.]+)", text, re.IGNORECASE))
        for label, needle in COMPONENTS:
            if needle in query:
                self.parts[label] += duration - after
                break

    def print(self, rows: int) -> None:
        print(f"database time of the import (under auto_explain): {self.total / 1000:.2f} s")
        for label, ms in [*self.parts.items(), ("staging, checks, lookups, updates (the rest)",
                                                 self.total - sum(self.parts.values()))]:
            print(f"  {label:46s} {ms / 1000:7.2f} s  {ms * 1000 / rows:7.1f} us/row  {ms / self.total:6.1%}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--breakdown", action="store_true")
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
            copy_s = float("inf")
            for _ in range(3):  # the best of three: the machine is shared, COPY is short
                conn.execute("truncate bench_copy")
                started = time.perf_counter()
                with conn.cursor() as cur, cur.copy("copy bench_copy from stdin (format csv, header)") as copy:
                    copy.write(path.read_bytes())
                copy_s = min(copy_s, time.perf_counter() - started)
            backend = BackendCpu(conn)

            breakdown = Breakdown(conn) if args.breakdown else None
            started = time.perf_counter()
            report = run_import(conn, "leads", path, "bench", apply=True, mapping={}, progress=False)
            import_s = time.perf_counter() - started
            import_cpu = backend.seconds()
            if breakdown is not None:
                conn.execute("reset auto_explain.log_min_duration; reset client_min_messages")
            assert report.counts["created"] == args.rows, {k: v for k, v in report.as_json().items() if k != "bad_rows"}

            started = time.perf_counter()
            rerun = run_import(conn, "leads", path, "bench", apply=True, mapping={}, progress=False)
            rerun_s = time.perf_counter() - started
            rerun_cpu = backend.seconds()
            assert rerun.counts["skipped"] == args.rows, rerun.counts
            customers = conn.execute("select count(*) n from public.customers").fetchone()["n"]

            org = conn.execute("select id, slug, default_country from public.organizations").fetchone()
            started = time.perf_counter()
            rows = list(read_rows(path, "leads", {}, set()))
            read_s = time.perf_counter() - started
            importer, scratch = Importer(conn, "leads", org), Report("leads", str(path), False)
            started = time.perf_counter()
            for row in rows:
                importer.prepare(row, scratch)
            prepare_s = time.perf_counter() - started
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))

    copy_rate, import_rate, rerun_rate = args.rows / copy_s, args.rows / import_s, args.rows / rerun_s
    print(f"COPY into a bare table : {copy_s:7.2f} s  {copy_rate:10,.0f} rows/s")
    print(f"crm import --apply     : {import_s:7.2f} s  {import_rate:10,.0f} rows/s  "
          f"({customers:,} customers found or created)")
    print(f"crm import --apply again: {rerun_s:6.2f} s  {rerun_rate:10,.0f} rows/s  (all unchanged)")
    if import_cpu is not None and rerun_cpu is not None:
        print(f"  database backend CPU : {import_cpu:.2f} s ({import_cpu * 1e6 / args.rows:.0f} us/row) the import, "
              f"{rerun_cpu:.2f} s ({rerun_cpu * 1e6 / args.rows:.0f} us/row) again")
    print(f"  of which Python      : reading the CSV {read_s:.2f} s, normalising the rows {prepare_s:.2f} s "
          "(overlaps the database's work)")
    if breakdown is not None:
        breakdown.print(args.rows)
    ratio = import_rate / copy_rate
    print(f"import / COPY = {ratio:.3f}x (goal >= {GOAL}x): {'met' if ratio >= GOAL else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""reconcile-inventory against 100,000 warehouse items with 1 % drift (issue 14).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_reconcile.py [--items 100000]

The warehouse is tests/fake_warehouse.py (SPEC 11's API, keyset pages) in its own process on
loopback, so the numbers below are of our process alone. First a run fills the empty cache (timed,
for information). Then the source drifts by `--drift` (0.01: 80 % of it changed items, 10 % removed,
10 % added) in a fresh warehouse process, and:
- "bare" = the same `WarehouseClient` (SSRF-checked pinned GETs, Bearer key, JSON parsed) paging the
  whole source, no database;
- "reconcile" = one `reconcile-inventory` run (`Reconciler.run`, what `crm jobs run` does): every
  page compared and healed in SQL, the seen keys recorded, extras removed at the end, sync_runs kept
  (pages handed to the database unparsed, two applied side by side: the job's defaults).
Both in this run, bare before and after (the machine is shared: their mean is the reference); pages
of 1000, the job's default.
Ratio = bare / reconcile (goal >= 0.5); also the CPU seconds of each (this process, the warehouse
process and, for reconcile, the database's backends), which on a shared machine move far less than
wall clock (a change is judged by them). Peak RSS of this process during
the reconcile run is sampled every 5 ms from /proc (goal < 200 MB). A scratch database is created
and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crm.db import Database  # noqa: E402
from crm.sealing import SecretBox, generate_key, parse_key  # noqa: E402
from crm.tools.migrate import Migrator  # noqa: E402
from crm.wms.client import ClientPolicy, WarehouseClient  # noqa: E402
from crm.wms.reconcile import INVENTORY, Reconciler, Settings  # noqa: E402

API_KEY = os.environ.setdefault("BENCH_WMS_KEY", "bench-wms-key-" + secrets.token_hex(8))  # the child inherits it
PAGE = 1000


def item(i: int, version: int = 0) -> dict:
    return {"sku": f"SKU-{i:07d}", "name": f"Part {i}" + (f" v{version}" if version else ""),
            "attributes": {"bin": f"B{i % 97}", "color": ("black", "red", "silver")[i % 3], "weight_g": 100 + i % 900},
            "available": (i * 7 + version) % 50, "reserved": i % 5, "total": (i * 7 + version) % 50 + i % 5,
            "unit": "pcs", "updated_at": f"2026-0{1 + version}-01T00:00:00+00:00"}


def serve(items: int, drift: float) -> None:
    """Child mode: a warehouse with `items` (drifted when `drift` > 0) until stdin closes."""
    from tests.fake_warehouse import FakeWarehouse

    rng = random.Random(14)
    with FakeWarehouse(API_KEY) as w:
        for i in range(items):
            w.inventory.put(item(i))
        n = int(items * drift)
        picked = rng.sample(range(items), n)
        for i in picked[: n * 8 // 10]:
            w.inventory.put(item(i, version=1))
        for i in picked[n * 8 // 10: n * 9 // 10]:
            w.inventory.remove(f"SKU-{i:07d}")
        for j in range(n - n * 9 // 10):
            w.inventory.put(item(items + j, version=1))
        w.inventory.keys()
        print(w.url, flush=True)
        sys.stdin.read()


class Warehouse:
    def __init__(self, items: int, drift: float):
        command = [sys.executable, __file__, "--serve", "--items", str(items), "--drift", str(drift)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.url = self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stopping = rss_mb(), threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.005):
            self.peak = max(self.peak, rss_mb())


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(url: str, dbname: str) -> float:
    """CPU seconds used so far by the server processes of `dbname` (same host)."""
    with psycopg.connect(url, autocommit=True) as c:
        pids = [r[0] for r in c.execute("select pid from pg_stat_activity"
                                        " where datname = %s and pid <> pg_backend_pid()", (dbname,)).fetchall()]
    return sum(proc_cpu(pid) for pid in pids)


def bare(w: Warehouse) -> tuple[float, int, float]:
    """Seconds, items, and CPU seconds of this process and the warehouse's."""
    started, cpu = time.perf_counter(), time.process_time() + proc_cpu(w.proc.pid)
    n = 0
    with WarehouseClient(w.url, API_KEY, allow_loopback=True) as client:
        for page in client.inventory(limit=PAGE):
            n += len(page.items)
    return time.perf_counter() - started, n, time.process_time() + proc_cpu(w.proc.pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--drift", type=float, default=0.01)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.items, args.drift)
        return

    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"crm_bench_reconcile_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server, dbname=name)
    key = generate_key()
    os.environ["CRM_SECRETS_KEY"] = key
    db = None
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
            Migrator(c).migrate()
            c.execute("set crm.webhook_allow_loopback = 'on'")
            org = c.execute("insert into public.organizations (slug, name, default_country)"
                            " values ('bench', 'Bench', 'DE') returning id").fetchone()["id"]
            integ = c.execute("select public.create_integration(%s, 'wms', %s, %s) ->> 'id' as id",
                              (org, json.dumps({"base_url": "http://127.0.0.1:1"}),
                               json.dumps({"api_key": API_KEY}))).fetchone()["id"]
        db = Database(url, max_size=2)
        db.open()
        rec = Reconciler(db, box=SecretBox(parse_key(key)), settings=Settings(page_size=PAGE, allow_loopback=True),
                         policy=ClientPolicy())

        def point_at(w: Warehouse) -> None:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("set crm.webhook_allow_loopback = 'on'")  # the base_url trigger refuses loopback otherwise
                c.execute("update public.integrations set settings = %s where id = %s",
                          (json.dumps({"base_url": w.url}), integ))

        w = Warehouse(args.items, 0.0)
        point_at(w)
        started = time.perf_counter()
        [fill] = rec.run(INVENTORY)["runs"]
        fill_s = time.perf_counter() - started
        w.close()
        assert fill["status"] == "succeeded", fill
        print(f"initial fill: {fill['records_synced']} rows into an empty cache in {fill_s:.2f} s")

        w = Warehouse(args.items, args.drift)
        point_at(w)
        bare1, n, bare_cpu1 = bare(w)
        sampler = PeakRss()
        before = sampler.peak
        sampler.start()
        cpu, py_cpu, wh_cpu = backend_cpu(url, name), time.process_time(), proc_cpu(w.proc.pid)
        started = time.perf_counter()
        [run] = rec.run(INVENTORY)["runs"]
        reconcile_s = time.perf_counter() - started
        py_cpu, wh_cpu = time.process_time() - py_cpu, proc_cpu(w.proc.pid) - wh_cpu
        cpu = backend_cpu(url, name) - cpu
        sampler.stopping.set()
        sampler.join()
        bare2, _, bare_cpu2 = bare(w)
        w.close()
        assert run["status"] == "succeeded", run
        reference = (bare1 + bare2) / 2
        print(f"source: {n} items, {run['pages']} pages of {PAGE}; discrepancies {run['discrepancies']}")
        print(f"bare paging (same client, no database): {bare1:.2f} s / {bare2:.2f} s (mean {reference:.2f} s,"
              f" {n / reference:,.0f} items/s; CPU {bare_cpu1:.2f} s / {bare_cpu2:.2f} s: this process and the"
              " warehouse)")
        print(f"reconcile-inventory: {reconcile_s:.2f} s ({run['records_checked'] / reconcile_s:,.0f} items/s),"
              f" healed {run['records_synced']}")
        print(f"CPU during the run: postgres {cpu:.2f} s (the pool's backends), this process {py_cpu:.2f} s,"
              f" the warehouse {wh_cpu:.2f} s")
        print(f"ratio bare/reconcile: {reference / reconcile_s:.2f}x (goal >= 0.5x); of their CPU seconds"
              f" {(bare_cpu1 + bare_cpu2) / 2 / (cpu + py_cpu + wh_cpu):.2f}x")
        print(f"peak RSS during the run: {sampler.peak:.0f} MB (before: {before:.0f} MB; goal < 200 MB)")
    finally:
        if db is not None:
            db.close()
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

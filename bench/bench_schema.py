"""Benchmark of the CRM schema under RLS at scale (not part of the test suite).

    python bench/bench_schema.py            # DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres

(`--keep NAME` keeps the generated database as NAME for EXPLAIN sessions; drop it yourself.)

Creates its own database on that server, applies the migrations, generates in SQL 1,000 orgs,
100,000 customers, 100,000 leads and 1,000,000 orders (org #1 holds 10,000 orders and 10,090
customers; the others share the rest), then prints side by side:
  - a manager's first page of `order_cards` (50 newest) as `authenticated` through RLS vs the same
    query as the superuser with an explicit org_id filter (goal: RLS <= 1.5x);
  - `dashboard_stats` for the org with 10,000 orders;
  - `search_customers` for a name fragment and for a phone fragment (goal: < 20 ms each);
  - one customer's `customer_profiles` row as the manager vs the superuser (goal: < 20 ms), with
    ~1.1M payments (deposits and balances of the orders past under_inspection) and 100,000
    warehouse orders in the tables.
The bulk load runs with triggers off (session_replication_role = replica): the rows are consistent
by construction and the benchmark is about reads. The database is dropped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import time

import psycopg
from psycopg import conninfo, sql

from crm.tools.migrate import Migrator

RUNS = 40
GOAL_MS = 20.0
GOAL_RATIO = 1.5

# Deterministic ids (md5 of a label) let every generated row point at its parents without joins.
GENERATE = [
    ("organizations", """
        insert into public.organizations (id, slug, name)
        select md5('org' || n)::uuid, 'bench-' || n, 'Bench ' || n from generate_series(1, 1000) n"""),
    ("staff", """
        insert into auth.users (id, email)
        select md5('user' || n)::uuid, 'manager' || n || '@bench.test' from generate_series(1, 1000) n;
        insert into public.staff (org_id, user_id, role)
        select md5('org' || n)::uuid, md5('user' || n)::uuid, 'manager' from generate_series(1, 1000) n"""),
    ("customers", """
        insert into public.customers (id, org_id, full_name, phone_e164, email, stage, created_at)
        select md5('cust' || org_n || '-' || rn)::uuid, md5('org' || org_n)::uuid,
               (array['Anna','Maria','Olga','Peter','Ivan','Sergey','Elena','Thomas','Julia','Andreas','José',
                      'Zoë','Пётр','Анна','Ольга','Сергей','Fatma','Mehmet','Katarzyna','Lukas'])[1 + i % 20]
               || ' ' ||
               (array['Schmidt','Müller','Ivanov','Shchukina','Petrov','Smirnova','Weber','Fischer','Иванов',
                      'Щукина','Петров','Смирнова','Kowalski','Nowak','García','Dubois','Yılmaz','Wagner',
                      'Becker','Hoffmann','Schulz','Koch','Richter','Klein','Wolf','Schröder','Neumann',
                      'Schwarz','Zimmermann','Braun','Krüger','Hofmann'])[1 + (i / 20) % 32],
               '+49' || (151 + i % 29) || lpad(((i::bigint * 7919) % 100000000)::text, 8, '0'),
               case when i % 2 = 0 then 'customer' || i || '@mail' || (i % 7) || '.example' end,
               case when i % 3 = 0 then 'client' else 'lead' end::public.customer_stage,
               now() - (i % 365) * interval '1 day'
          from (select n as i,
                       case when n <= 10090 then 1 else 2 + (n - 10091) / 90 end as org_n,
                       case when n <= 10090 then n - 1 else (n - 10091) % 90 end as rn
                  from generate_series(1, 100000) n) g"""),
    ("leads", """
        insert into public.leads (id, org_id, customer_id, source, status, created_at)
        select md5('lead' || org_n || '-' || rn)::uuid, md5('org' || org_n)::uuid,
               md5('cust' || org_n || '-' || rn)::uuid,
               (enum_range(null::public.lead_source))[1 + n % 6], (enum_range(null::public.lead_status))[1 + n % 6],
               now() - (n % 365) * interval '1 day'
          from (select n, case when n <= 10090 then 1 else 2 + (n - 10091) / 90 end as org_n,
                          case when n <= 10090 then n - 1 else (n - 10091) % 90 end as rn
                  from generate_series(1, 100000) n) g"""),
    ("orders", """
        insert into public.orders (id, org_id, order_code, customer_id, external_item_ref, item_snapshot, status,
                                   price_amount, currency, created_at, updated_at)
        select md5('order' || n)::uuid, md5('org' || org_n)::uuid,
               'BK-' || substr(a, (c / 27512614111 % 31)::int + 1, 1) || substr(a, (c / 887503681 % 31)::int + 1, 1)
                     || substr(a, (c / 28629151 % 31)::int + 1, 1) || substr(a, (c / 923521 % 31)::int + 1, 1)
                     || substr(a, (c / 29791 % 31)::int + 1, 1) || substr(a, (c / 961 % 31)::int + 1, 1)
                     || substr(a, (c / 31 % 31)::int + 1, 1) || substr(a, (c % 31)::int + 1, 1),
               md5('cust' || org_n || '-' || (n % customers))::uuid,
               'listing-' || n,
               jsonb_build_object('external_ref', 'listing-' || n, 'title', 'Bike #' || n,
                                  'images', jsonb_build_array('https://img.example/' || n || '.jpg'),
                                  'cached_images', case when n % 4 > 0
                                    then jsonb_build_array('/media/' || md5(n::text) || '.jpg')
                                    else '[]'::jsonb end,
                                  'images_state', case when n % 4 > 0 then 'cached' else 'pending' end),
               (enum_range(null::public.order_status))[1 + n % 8], 100 + n % 5000, 'EUR', created, created
          from (select n, now() - (n % 525600) * interval '1 minute' as created,
                       '23456789ABCDEFGHJKMNPQRSTUVWXYZ' as a,
                       -- a bijection of 1..31^8, so codes are unique but look random
                       n::bigint * 2654435761 % 852891037441 as c,
                       case when n <= 10000 then 1 else 2 + n % 999 end as org_n,
                       case when n <= 10000 then 10090 else 90 end as customers
                  from generate_series(1, 1000000) n) g"""),
    # Orders from deposit_paid to closed have a succeeded deposit; from paid_out on also the balance.
    ("payments", """
        insert into public.payments (org_id, order_id, kind, amount, currency, method, status, paid_at,
                                     created_at, updated_at)
        select md5('org' || org_n)::uuid, md5('order' || n)::uuid, kind, amount, 'EUR', 'card', 'succeeded',
               created, created, created
          from (select n, now() - (n % 525600) * interval '1 minute' as created,
                       case when n <= 10000 then 1 else 2 + n % 999 end as org_n
                  from generate_series(1, 1000000) n where n % 8 between 2 and 6) g
          cross join lateral (values ('deposit'::public.payment_kind, 100::numeric),
                                     ('balance', (n % 5000)::numeric)) p(kind, amount)
         where p.kind = 'deposit' or (n % 8 between 3 and 6 and p.amount > 0)"""),
    ("wms_orders", """
        insert into public.wms_orders (org_id, wms_order_id, crm_customer_id, status, lines, source_updated_at)
        select md5('org' || org_n)::uuid, 'W-' || n, md5('cust' || org_n || '-' || rn)::uuid, 'shipped',
               jsonb_build_array(jsonb_build_object('sku', 'SKU-' || n % 500, 'qty', 1)), now()
          from (select n, case when n <= 10090 then 1 else 2 + (n - 10091) / 90 end as org_n,
                          case when n <= 10090 then n - 1 else (n - 10091) % 90 end as rn
                  from generate_series(1, 100000) n) g"""),
]

ORG1 = "md5('org1')::uuid"
MANAGER1 = "md5('user1')::uuid"
PAGE = ("select * from public.order_cards where org_id = {org} order by created_at desc, id desc limit 50")
# A customer of org #2 (~11 orders with their payments, a lead, a warehouse order), read by its manager.
PROFILE = "select * from public.customer_profiles where id = md5('cust2-7')::uuid"
MANAGER2 = "md5('user2')::uuid"
PROFILE_GOAL_MS = 20.0
PAGE_NO_FILTER = "select * from public.order_cards order by created_at desc, id desc limit 50"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(conn: psycopg.Connection, *cases: tuple[str, str | None],
          manager: str = MANAGER1) -> list[tuple[float, float, int]]:
    """Median and p95 ms (and row count) of each (query, role) case; role None = superuser.

    Each run is its own transaction that first sets role and JWT claims as PostgREST does (not
    timed). Cases are interleaved run by run, so load from other processes hits them alike.
    """
    claims = json.dumps({"sub": str(conn.execute(f"select {manager}").fetchone()[0]), "role": "authenticated"})
    samples: list[list[float]] = [[] for _ in cases]
    counts = [0] * len(cases)
    for run_no in range(RUNS + 3):
        for i, (query, role) in enumerate(cases):
            with conn.transaction(force_rollback=True):
                if role:
                    conn.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                                 (role, claims))
                started = time.perf_counter()
                counts[i] = len(conn.execute(query).fetchall())
                elapsed = (time.perf_counter() - started) * 1000
            if run_no >= 3:  # warm-up runs fill the caches
                samples[i].append(elapsed)
    results = []
    for i, values in enumerate(samples):
        values.sort()
        results.append((statistics.median(values), values[int(len(values) * 0.95) - 1], counts[i]))
    return results


def main() -> int:
    server = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    keep = sys.argv[2] if len(sys.argv) == 3 and sys.argv[1] == "--keep" else None
    name = keep or f"crm_bench_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(conninfo.make_conninfo(server, dbname=name), autocommit=True) as conn:
            return run(conn)
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            log(f"dropped database {name}")


def run(conn: psycopg.Connection) -> int:
    Migrator(conn).migrate()
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        for label, statement in GENERATE:
            started = time.perf_counter()
            for part in statement.split(";"):
                conn.execute(part)
            log(f"generated {label} in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    conn.execute("vacuum analyze")
    log(f"vacuum analyze in {time.perf_counter() - started:.1f} s")
    counts = conn.execute("select (select count(*) from public.organizations), (select count(*) from public.customers),"
                          " (select count(*) from public.orders),"
                          f" (select count(*) from public.orders where org_id = {ORG1})").fetchone()
    log(f"orgs={counts[0]:,} customers={counts[1]:,} orders={counts[2]:,} (org #1: {counts[3]:,} orders)")

    auth = "authenticated"
    page = PAGE.format(org=ORG1)
    results = []
    rls, plain = timed(conn, (page, auth), (page, None))
    results.append(("order_cards page 1 (50 newest), org filter", "RLS as manager", *rls))
    results.append(("order_cards page 1 (50 newest), org filter", "superuser, no RLS", *plain))
    profile_rls, profile_plain = timed(conn, (PROFILE, auth), (PROFILE, None), manager=MANAGER2)
    assert profile_rls[2] == profile_plain[2] == 1, "the profile's manager must see it"
    results.append(("customer_profiles, one customer (by id)", "RLS as manager", *profile_rls))
    results.append(("customer_profiles, one customer (by id)", "superuser, no RLS", *profile_plain))
    log("measured customer_profiles")
    singles = [
        ("order_cards page 1 (50 newest), no org filter", PAGE_NO_FILTER),
        ("dashboard_stats (org with 10,000 orders)", f"select public.dashboard_stats({ORG1})"),
        ("dashboard_stats, last 30 days", f"select public.dashboard_stats({ORG1}, now() - interval '30 days')"),
        ("search_customers name 'schmid'", f"select * from public.search_customers({ORG1}, 'schmid')"),
        ("search_customers name 'Щукин' (finds Shchukina)", f"select * from public.search_customers({ORG1}, 'Щукин')"),
        ("search_customers name 'olga shchukina'", f"select * from public.search_customers({ORG1}, 'olga shchukina')"),
        ("search_customers phone fragment '7919 000'", f"select * from public.search_customers({ORG1}, '7919 000')"),
        ("search_customers phone '0165 0791 9000'", f"select * from public.search_customers({ORG1}, '0165 0791 9000')"),
        ("search_customers misspelt 'shchukinna' (fuzzy)",
         f"select * from public.search_customers({ORG1}, 'shchukinna')"),
        ("search_customers 'anna schmidt' (exact + fuzzy)",
         f"select * from public.search_customers({ORG1}, 'anna schmidt')"),
    ]
    for label, query in singles:
        (median, p95, count), = timed(conn, (query, auth))
        results.append((label, "RLS as manager", median, p95, count))
        log(f"measured {label}")

    print(f"\n{'query':<50} {'as':<20} {'median ms':>10} {'p95 ms':>8} {'rows':>5}")
    for label, who, median, p95, count in results:
        print(f"{label:<50} {who:<20} {median:>10.2f} {p95:>8.2f} {count:>5}")
    ratio = results[0][2] / results[1][2]
    slowest = max(r[2] for r in results if r[0].startswith(("dashboard", "search")))
    print(f"\nRLS / superuser (order_cards page 1, org filter): {ratio:.2f}x (goal <= {GOAL_RATIO}x)")
    print(f"slowest dashboard/search median: {slowest:.2f} ms (goal < {GOAL_MS:.0f} ms)")
    print(f"customer_profiles, one customer: {profile_rls[0]:.2f} ms as manager (goal < {PROFILE_GOAL_MS:.0f} ms),"
          f" {profile_rls[0] / profile_plain[0]:.2f}x the superuser's")
    return 0 if ratio <= GOAL_RATIO and slowest < GOAL_MS and profile_rls[0] < PROFILE_GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())

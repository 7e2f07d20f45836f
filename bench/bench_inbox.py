"""Benchmark verified `wms` webhook receipts against `POST /booking` on the same server (issue 13).

One gunicorn process (gthread, as functions-framework deploys) serves both functions, each created
as functions-framework creates it, under `/booking` and `/webhooks` (what `crm dev` mounts). For 8
clients (`--clients`), alternating short slices so both see the same background load:
- booking: N clients POST new bookings (new customer, Idempotency-Key) over keep-alive loopback;
- wms: N clients POST `order.created` events signed with the standardwebhooks library (a new
  webhook-id each, a secret sealed under CRM_SECRETS_KEY, an existing customer): verified, stored
  once in the inbox and applied in the same request (wms_orders cache upsert + a timeline activity).
Then the wms path is driven at half its peak rate (open loop, latency from the scheduled send) for p99.
Goal: wms ≥ 1.0× the booking rate; p99 at half peak < 50 ms.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_inbox.py

A scratch database is created on that server and dropped at the end (`--embedded`, or no
DATABASE_URL: a private embedded PostgreSQL instead).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import conninfo, sql
from standardwebhooks import Webhook

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_booking as booking  # noqa: E402 — the booking bench's clients and setup, reused
from bench_booking import ORG, RATE_LIMIT, Counter, free_port, merge, start_embedded, wait_ready  # noqa: E402

from crm.db import Database  # noqa: E402
from crm.inbox.jobs import seal_pending  # noqa: E402
from crm.sealing import SecretBox, generate_key, parse_key  # noqa: E402
from crm.tools.migrate import Migrator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def app():
    """The gunicorn app: booking and webhooks as functions-framework creates them, on one server."""
    import functions_framework
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from crm.tools.devserver import _at_root_when_bare, root_app

    apps = {f"/{name}": _at_root_when_bare(functions_framework.create_app(
        target=name, source=str(ROOT / "functions" / name / "main.py"))) for name in ("booking", "webhooks")}
    return DispatcherMiddleware(root_app(None), apps)


def booking_request(n: int, client_no: int) -> tuple[str, bytes, dict[str, str]]:
    _, body, headers = booking.booking_request(n, client_no)
    return "/booking", body, headers


def wms_request_maker(secret: str, customer: str):
    hook = Webhook(secret)

    def make(n: int, client_no: int) -> tuple[str, bytes, dict]:
        now = datetime.now(UTC)
        body = json.dumps({"type": "order.created", "timestamp": now.isoformat(), "data": {
            "wms_order_id": f"W-{n}", "crm_customer_id": customer, "status": "created",
            "lines": [{"sku": "SKU-1", "qty": 1}], "updated_at": now.isoformat()}})
        msg_id = f"msg_{n}_{uuid.uuid4().hex[:8]}"
        return f"/webhooks/wms/{ORG}", body.encode(), {
            "Content-Type": "application/json", "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": hook.sign(msg_id, now, body)}

    return make


def run(port: int, make, expect: int, clients: int, seconds: float, counter: Counter,
        rate: float | None = None) -> dict:
    return booking.run_http(port, clients, seconds, counter, rate=rate, make=make, expect=expect)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per path")
    parser.add_argument("--rounds", type=int, default=5, help="alternating booking/wms slices")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", (os.cpu_count() or 1) * 4)))
    parser.add_argument("--pool", type=int, default=int(os.environ.get("CRM_DB_POOL_SIZE", 10)))
    parser.add_argument("--embedded", action="store_true", help="a private embedded PostgreSQL")
    args = parser.parse_args()

    embedded = None
    if args.embedded or not os.environ.get("DATABASE_URL"):
        embedded = start_embedded()
        server_url = embedded.get_uri()
    else:
        server_url = os.environ["DATABASE_URL"]
    dbname = f"bench_inbox_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    url = conninfo.make_conninfo(server_url, dbname=dbname)
    key = generate_key()
    proc = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            Migrator(conn).migrate()
            org = conn.execute("insert into public.organizations (slug, name, default_country)"
                               " values (%s, 'Bench', 'DE') returning id", (ORG,)).fetchone()[0]
            secret = conn.execute("select public.create_integration(%s, 'wms') -> 'secrets' ->> 'webhook_secret'",
                                  (org,)).fetchone()[0]
            customer = str(conn.execute("insert into public.customers (org_id, full_name, phone_e164)"
                                        " values (%s, 'Warehouse Client', '+4915100000000') returning id",
                                        (org,)).fetchone()[0])
        db = Database(url, max_size=2)
        db.open()
        sealed = seal_pending(db, SecretBox(parse_key(key)))  # the receiver opens it on every request
        db.close()
        assert sealed == 1

        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "CRM_SECRETS_KEY": key, "CRM_DB_POOL_SIZE": str(args.pool),
               "CRM_TRUSTED_PROXIES": "1", "CRM_BOOKING_RATE_LIMIT": str(RATE_LIMIT)}
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "--worker-class", "gthread", "--workers", "1",
             "--threads", str(args.threads), "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
             "--chdir", str(ROOT / "bench"), "bench_inbox:app()"], env=env, start_new_session=True)
        wait_ready(port, proc)
        print(f"server: gunicorn gthread workers=1 threads={args.threads} pool={args.pool}, /booking and "
              f"/webhooks in one process; database: {'private embedded' if embedded else 'DATABASE_URL'}; "
              f"machine: {os.cpu_count()} CPUs; {args.clients} clients, {args.seconds:.0f} s per path", flush=True)

        counter = Counter(1)
        wms = wms_request_maker(secret, customer)
        run(port, booking_request, 201, 4, 1.0, counter)  # warm up
        run(port, wms, 200, 4, 1.0, counter)
        parts: dict[str, list[dict]] = {"booking": [], "wms": []}
        for _ in range(args.rounds):
            parts["booking"].append(run(port, booking_request, 201, args.clients, args.seconds / args.rounds, counter))
            parts["wms"].append(run(port, wms, 200, args.clients, args.seconds / args.rounds, counter))
        b, w = merge(parts["booking"]), merge(parts["wms"])
        print(f"{'path':>8} | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
        for name, r in (("booking", b), ("wms", w)):
            print(f"{name:>8} | {r['rate']:>7.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['errors']:>6}")
        ratio = w["rate"] / b["rate"] if b["rate"] else float("nan")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("vacuum analyze")
        half = run(port, wms, 200, args.clients, args.seconds, counter, rate=w["rate"] / 2)
        print(f"\nwms at half its peak ({w['rate'] / 2:.0f}/s offered, open loop): {half['rate']:.0f}/s, "
              f"p50 {half['p50_ms']:.1f} ms, p99 {half['p99_ms']:.1f} ms, errors {half['errors']}")
        print(f"wms ÷ booking = {ratio:.2f} (goal ≥ 1.0); p99 at half peak {half['p99_ms']:.1f} ms (goal < 50 ms)")
        with psycopg.connect(url) as conn:
            stored, processed = conn.execute(
                "select count(*), count(*) filter (where status = 'processed') from private.inbound_events").fetchone()
        print(f"inbound events stored: {stored}, processed: {processed}")
        return 0
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        if embedded is not None:
            embedded.cleanup()
            shutil.rmtree(Path(embedded.pgdata).parent, ignore_errors=True)
        else:
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))


if __name__ == "__main__":
    sys.exit(main())

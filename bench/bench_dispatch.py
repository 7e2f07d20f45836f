"""dispatch-outbox throughput and latency (issue 12).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python bench/bench_dispatch.py [--events 50000]

1. Throughput: `--events` outbox events (customer.created, committed before the clock starts), one
   endpoint, Debian's nginx answering 204 on loopback (our own instance: temp config and prefix).
   "dispatcher" = one worker (`Dispatcher.run_once`, what `crm jobs run dispatch-outbox` does):
   fan-out, leased claims, Standard Webhooks signing, the SSRF-checked pinned POST, batched
   attempt recording. "bare" = the same httpx client library and thread pool with the same
   concurrency POSTing the same body to the same nginx, no database, no signing. Both in this run,
   bare first and last (the machine is shared: the mean of the two is the reference).
2. Latency: `crm worker dispatch-outbox` running (a subprocess, woken by LISTEN/NOTIFY), 100
   events/s committed one transaction each for `--seconds`; a Python receiver on loopback notes
   when each arrives. Commit -> receipt, p50/p99 (the goal: p99 < 1 s).

A scratch database is created on the server and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from crm.db import Database
from crm.outbox.dispatch import Dispatcher, DispatchSettings
from crm.sealing import SecretBox, generate_key, parse_key
from crm.tools.migrate import Migrator

ROOT = Path(__file__).resolve().parents[1]
KEY = generate_key()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="crm-bench-nginx-"))
        self.port = free_port()
        (self.dir / "logs").mkdir()
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{self.port};
    location / {{ return 204; }}
  }}
}}
""")
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(self.url, content=b"{}").raise_for_status()
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def bare_loop(url: str, body: bytes, n: int, concurrency: int) -> float:
    """The same client library, pool size and concurrency, no database and no signing."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(limits=limits, trust_env=False) as client:
        headers = {"content-type": "application/json", "webhook-id": "msg_bench"}
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for r in pool.map(lambda _: client.post(url, content=body, headers=headers).status_code, range(n)):
                assert r == 204
        return n / (time.perf_counter() - started)


def make_db(server: str) -> tuple[str, str]:
    name = f"crm_bench_dispatch_{secrets.token_hex(3)}"
    with psycopg.connect(server, autocommit=True) as c:
        c.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server, dbname=name)
    with psycopg.connect(url, autocommit=True) as c:
        Migrator(c).migrate()
    return name, url


def setup_endpoint(url: str, endpoint_url: str) -> tuple[str, str]:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as c:
        org = c.execute("insert into public.organizations (slug, name, default_country)"
                        " values ('bench', 'Bench', 'DE') returning id").fetchone()["id"]
        c.execute("select set_config('crm.webhook_allow_loopback', 'on', false)")
        row = c.execute("select private.webhook_endpoint_create(%s, %s, '{}', 'bench') as e",
                        (org, endpoint_url)).fetchone()["e"]
        return str(org), row["id"]


def add_events(url: str, org: str, n: int, start: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        for lo in range(start, start + n, 5000):
            hi = min(start + n, lo + 5000) - 1
            c.execute("insert into public.customers (org_id, full_name, phone_e164, email, city)"
                      " select %s, 'Bench Customer ' || i, '+4915' || lpad(i::text, 9, '0'),"
                      " 'c' || i || '@bench.example', 'Berlin' from generate_series(%s::int, %s::int) i",
                      (org, lo, hi))


def throughput(url: str, nginx: Nginx, events: int, concurrency: int) -> None:
    org, endpoint = setup_endpoint(url, nginx.url)
    t0 = time.perf_counter()
    add_events(url, org, events, 0)
    print(f"  queued {events} events in {time.perf_counter() - t0:.1f} s")
    with psycopg.connect(url, autocommit=True) as c:
        body = c.execute("select payload::text from private.outbox limit 1").fetchone()[0].encode()
    bare_n = min(events, 20000)
    bare1 = bare_loop(nginx.url, body, bare_n, concurrency)
    print(f"  bare httpx loop:   {bare1:8.0f} requests/s ({bare_n} requests, concurrency {concurrency})")

    db = Database(url, min_size=1, max_size=4)
    db.open()
    settings = DispatchSettings(concurrency=concurrency, allow_loopback=True)
    d = Dispatcher(db, settings, box=SecretBox(parse_key(KEY)))
    started = time.perf_counter()
    summary = d.run_once()
    elapsed = time.perf_counter() - started
    d.close()
    db.close()
    rate = summary["succeeded"] / elapsed
    print(f"  dispatcher:        {rate:8.0f} deliveries/s ({summary['succeeded']} succeeded of {events},"
          f" {elapsed:.1f} s incl. fan-out)")
    bare2 = bare_loop(nginx.url, body, bare_n, concurrency)
    print(f"  bare httpx loop:   {bare2:8.0f} requests/s (again, after)")
    bare = (bare1 + bare2) / 2
    print(f"  ratio dispatcher / bare: {rate / bare:.2f}  (goal >= 0.5)")
    with psycopg.connect(url, autocommit=True) as c:
        left = c.execute("select status, count(*) from public.webhook_deliveries group by 1").fetchall()
    print(f"  deliveries by status: {dict(left)}")


class TimingReceiver:
    def __init__(self):
        self.arrived: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                now = time.time()
                receiver.arrived.setdefault(json.loads(body)["data"]["id"], now)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def latency(url: str, seconds: float, rate: float) -> None:
    rx = TimingReceiver()
    with psycopg.connect(url, autocommit=True) as c:
        org = c.execute("select id from public.organizations where slug = 'bench'").fetchone()[0]
        c.execute("update public.webhook_endpoints set enabled = false")
        c.execute("select set_config('crm.webhook_allow_loopback', 'on', false)")
        c.execute("select private.webhook_endpoint_create(%s, %s, '{}', 'latency')", (org, rx.url))
    env = {**os.environ, "DATABASE_URL": url, "CRM_SECRETS_KEY": KEY, "CRM_WEBHOOK_ALLOW_LOOPBACK": "1"}
    worker = subprocess.Popen([str(Path(sys.executable).with_name("crm")), "worker", "dispatch-outbox"], env=env,
                              stderr=subprocess.DEVNULL)
    committed: dict[str, float] = {}
    try:
        time.sleep(2)  # listening
        with psycopg.connect(url, autocommit=True) as c:
            n = int(seconds * rate)
            start = time.perf_counter()
            for i in range(n):
                due = start + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                cid = c.execute("insert into public.customers (org_id, full_name, phone_e164)"
                                " values (%s, 'Latency ' || %s::text, %s) returning id",
                                (org, i, f"+4916{i:09d}")).fetchone()[0]
                committed[str(cid)] = time.time()
        deadline = time.monotonic() + 30
        while len(rx.arrived) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        rx.server.shutdown()
    lat = sorted((rx.arrived[k] - t) * 1000 for k, t in committed.items() if k in rx.arrived)
    missing = len(committed) - len(lat)
    p50 = statistics.median(lat)
    p99 = lat[int(0.99 * (len(lat) - 1))]
    print(f"  {len(committed)} events at {rate:g}/s: commit -> receipt p50 {p50:.0f} ms, p99 {p99:.0f} ms,"
          f" max {lat[-1]:.0f} ms, missing {missing}  (goal p99 < 1000 ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=100)
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name, url = make_db(server)
    try:
        with Nginx() as nginx:
            print("throughput (one endpoint, nginx 204 on loopback):")
            throughput(url, nginx, args.events, args.concurrency)
        print("latency (crm worker dispatch-outbox running):")
        latency(url, args.seconds, args.rate)
    finally:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

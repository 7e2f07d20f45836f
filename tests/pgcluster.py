"""Throwaway PostgreSQL 15 clusters for tests: a Supabase-shaped one, and ones a test may freeze.

Each cluster lives in its own temporary directory on a free loopback port (initdb + pg_ctl of the
system PostgreSQL 15), so fault tests never touch the shared server. As root, the binaries run as
the `postgres` OS user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import conninfo

PG_BIN = Path(os.environ.get("CRM_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (PG_BIN / "initdb").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_pg_user() -> tuple[list[str], str | None]:
    if os.geteuid() != 0:
        return [], None
    return ["runuser", "-u", "postgres", "--"], "postgres"


class Cluster:
    """One postmaster on 127.0.0.1:`port` whose bootstrap superuser is `superuser` (trust auth)."""

    def __init__(self, root: Path, superuser: str = "postgres", settings: dict[str, str] | None = None):
        self.root = root
        self.pgdata = root / "pgdata"
        self.superuser = superuser
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                         "max_connections": "200", "shared_buffers": "32MB", **(settings or {})}
        self.port = 0
        prefix, owner = _as_pg_user()
        self._prefix = prefix
        if owner:
            pw = pwd.getpwnam(owner)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", superuser,
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, user: str | None = None, dbname: str = "postgres") -> str:
        return conninfo.make_conninfo(host="127.0.0.1", port=self.port, user=user or self.superuser,
                                      dbname=dbname)

    def start(self) -> None:
        last: Exception | None = None
        for _ in range(5):  # a free port may be taken between choosing and binding it
            self.port = self.port or _free_port()
            opts = " ".join(f"-c {k}={v}" for k, v in {
                **self.settings, "port": str(self.port), "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(self.root)}.items())
            proc = subprocess.run([*self._prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-w",
                                   "-t", "30", "-l", str(self.root / "server.log"), "-o", opts, "start"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode == 0:
                return
            last = RuntimeError(f"pg_ctl start failed: {proc.stderr.strip()}\n{self.log_tail()}")
            self.port = 0
        raise last  # type: ignore[misc]

    def stop(self) -> None:
        self.thaw()
        subprocess.run([*self._prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m",
                        "immediate", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    # -- faults --------------------------------------------------------------------------------
    def _pids(self) -> list[int]:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return []
        main = int(pidfile.read_text().split()[0])
        pids = [main]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                        pids.append(int(entry.name))
        return pids

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: what a network black hole looks like."""
        self._frozen = self._pids()
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in getattr(self, "_frozen", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []


@contextlib.contextmanager
def cluster(superuser: str = "postgres", settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="crm-pg-"))
    try:
        c = Cluster(root, superuser, settings)
        c.start()
        try:
            yield c
        finally:
            c.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- Supabase's shape ----------------------------------------------------------------------------
#: Run as `supabase_admin` on template1 (so every database created later has it): the facts of
#: Supabase's own init scripts that our migrations meet. `postgres` is demoted as on a hosted
#: project; `auth` belongs to `supabase_auth_admin`; `auth.users.id` has no default.
SUPABASE_ROLES = """
create role supabase_auth_admin noinherit createrole login;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator noinherit login;
grant anon, authenticated, service_role to authenticator;
create role postgres nosuperuser createdb createrole bypassrls login inherit;
grant anon, authenticated, service_role to postgres with admin option;
grant pg_signal_backend to postgres;
"""

SUPABASE_DATABASE = """
create schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
create extension pg_trgm with schema extensions;
create extension unaccent with schema extensions;
grant all on all functions in schema extensions to postgres;

create schema auth authorization supabase_auth_admin;
grant usage on schema auth to anon, authenticated, service_role, postgres;

set role supabase_auth_admin;
create table auth.users (
  instance_id uuid,
  id uuid not null primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  invited_at timestamptz,
  confirmation_token varchar(255),
  recovery_token varchar(255),
  last_sign_in_at timestamptz,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  created_at timestamptz,
  updated_at timestamptz,
  phone text unique default null,
  banned_until timestamptz,
  deleted_at timestamptz,
  is_sso_user boolean not null default false,
  is_anonymous boolean not null default false
);
create unique index users_email_partial_key on auth.users (email) where (is_sso_user = false);
comment on table auth.users is 'Auth: Stores user login data within a secure schema.';

create function auth.uid() returns uuid language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;
comment on function auth.uid() is 'Deprecated. Use auth.jwt() -> ''sub'' instead.';
create function auth.role() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;
create function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;
grant all on all tables in schema auth to postgres;
grant all on all routines in schema auth to postgres;
grant execute on all routines in schema auth to anon, authenticated, service_role;
reset role;

-- Supabase's default grants in public (for objects created by postgres and by supabase_admin).
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  grant all on sequences to postgres, anon, authenticated, service_role;
"""


def make_supabase_shaped(c: Cluster) -> None:
    with psycopg.connect(c.url("supabase_admin", "postgres"), autocommit=True) as conn:
        conn.execute(SUPABASE_ROLES)
    # template1 carries the shape into every database created afterwards; postgres (the maintenance
    # database the suite connects to) gets it too.
    for db in ("template1", "postgres"):
        with psycopg.connect(c.url("supabase_admin", db), autocommit=True) as conn:
            conn.execute(SUPABASE_DATABASE)


@contextlib.contextmanager
def supabase_cluster() -> Iterator[Cluster]:
    with cluster("supabase_admin") as c:
        make_supabase_shaped(c)
        yield c


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- PgBouncer in transaction mode ----------------------------------------------------------------
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbouncer_available() -> bool:
    return Path(PGBOUNCER).exists()


@contextlib.contextmanager
def pgbouncer(upstream_host: str, upstream_port: int, user: str = "postgres",
              pool_size: int = 20) -> Iterator[str]:
    """A real PgBouncer with `pool_mode = transaction` (what Supabase's pooler on 6543 does) in
    front of `upstream`, every database name passed through; yields its maintenance URL."""
    root = Path(tempfile.mkdtemp(prefix="crm-pgbouncer-"))
    prefix, owner = _as_pg_user()
    port = _free_port()
    ini = root / "pgbouncer.ini"
    ini.write_text(f"""[databases]
* = host={upstream_host} port={upstream_port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
max_db_connections = {pool_size * 2}
server_reset_query =
server_check_delay = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = {root / 'pgbouncer.log'}
pidfile = {root / 'pgbouncer.pid'}
""")
    if owner:
        pw = pwd.getpwnam(owner)
        for path in (root, ini):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    # Output to files, never a pipe nobody drains (PgBouncer logs to stderr too, and would block).
    proc = subprocess.Popen([*prefix, PGBOUNCER, "--quiet", str(ini)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = conninfo.make_conninfo(host="127.0.0.1", port=port, user=user, dbname="postgres")
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                log_file = root / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer exited: {log_file.read_text()[-2000:] if log_file.exists() else ''}")
            try:
                psycopg.connect(url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        if not wait_until(answers, 15, 0.1):
            raise RuntimeError("pgbouncer did not answer within 15 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    # `.ci/run`: `python -m tests.pgcluster pgbouncer HOST PORT` prints the URL, serves until SIGTERM.
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "pgbouncer":
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with pgbouncer(sys.argv[2], int(sys.argv[3])) as bouncer_url:
            print(bouncer_url, flush=True)
            stop.wait()
    else:
        raise SystemExit("usage: python -m tests.pgcluster pgbouncer HOST PORT")

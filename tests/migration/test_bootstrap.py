"""The migrations apply unchanged on a Supabase-shaped database, as Supabase's non-superuser
`postgres`, and leave everything in `auth` exactly as it was: owners, ACLs, definitions, comments.
A database migrated with the released 0001 still migrates and shows a clean status."""

import secrets
import shutil
from pathlib import Path

import psycopg
import pytest

from crm.tools.migrate import DB_DIR, EQUIVALENT_EARLIER_CHECKSUMS, Migrator, SqlFile
from tests.conftest import SUPABASE_MODE, create_database, drop_database
from tests.helpers import crm_cli

RELEASED_0001 = Path(__file__).parent / "data" / "0001_supabase_bootstrap.released.sql"

#: Everything in `auth` that a migration could change: objects with owner, ACL and comment,
#: column definitions and defaults, function bodies, and default privileges for the schema.
AUTH_SNAPSHOT = """
select 'schema', n.nspname, n.nspowner::regrole::text, n.nspacl::text,
       obj_description(n.oid, 'pg_namespace')
  from pg_namespace n where n.nspname = 'auth'
union all
select 'relation:' || c.relkind::text, c.relname, c.relowner::regrole::text, c.relacl::text,
       obj_description(c.oid, 'pg_class') || ' rls=' || c.relrowsecurity::text
  from pg_class c where c.relnamespace = 'auth'::regnamespace
union all
select 'column', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
       a.attacl::text, a.attnotnull::text || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
  from pg_attribute a join pg_class c on c.oid = a.attrelid
  left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
 where c.relnamespace = 'auth'::regnamespace and a.attnum > 0 and not a.attisdropped
union all
select 'function', p.oid::regprocedure::text, p.proowner::regrole::text, p.proacl::text,
       obj_description(p.oid, 'pg_proc') || ' ' || pg_get_functiondef(p.oid)
  from pg_proc p where p.pronamespace = 'auth'::regnamespace
union all
select 'default acl', d.defaclrole::regrole::text || ':' || d.defaclobjtype::text, null, d.defaclacl::text, null
  from pg_default_acl d where d.defaclnamespace = 'auth'::regnamespace
union all
select 'policy', p.polrelid::regclass::text || '.' || p.polname, null, null, null
  from pg_policy p join pg_class c on c.oid = p.polrelid where c.relnamespace = 'auth'::regnamespace
union all
select 'trigger', t.tgrelid::regclass::text || '.' || t.tgname, null, null, null
  from pg_trigger t join pg_class c on c.oid = t.tgrelid
 where c.relnamespace = 'auth'::regnamespace and not t.tgisinternal  -- FKs to auth.users are allowed
order by 1, 2
"""


def snapshot(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(AUTH_SNAPSHOT).fetchall()


@pytest.fixture
def supabase_db(supabase_server: str):
    """A fresh (unmigrated) database on the Supabase-shaped cluster, created by `postgres`."""
    name = f"crm_supa_{secrets.token_hex(4)}"
    url = create_database(supabase_server, name)
    yield url
    drop_database(supabase_server, name)


def test_supabase_shape_is_what_supabase_gives(supabase_db):
    """The fixture's facts (so the tests below prove something): postgres is no superuser and owns
    nothing in auth, auth.users.id has no default, the extensions are already installed."""
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        role = conn.execute("select rolsuper, rolcreatedb, rolcreaterole, rolbypassrls from pg_roles"
                            " where rolname = current_user").fetchone()
        assert conn.execute("select current_user").fetchone()[0] == "postgres"
        assert role == (False, True, True, True)
        owners = {r[0] for r in conn.execute(
            "select relowner::regrole::text from pg_class where relnamespace = 'auth'::regnamespace"
            " union select proowner::regrole::text from pg_proc where pronamespace = 'auth'::regnamespace")}
        assert "postgres" not in owners and owners
        assert conn.execute("select column_default from information_schema.columns where table_schema = 'auth'"
                            " and table_name = 'users' and column_name = 'id'").fetchone()[0] is None
        ext = dict(conn.execute("select extname, extnamespace::regnamespace::text from pg_extension"
                                " where extname in ('pg_trgm', 'unaccent')").fetchall())
        assert ext == {"pg_trgm": "extensions", "unaccent": "extensions"}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("comment on table auth.users is 'x'")


def test_migrations_apply_as_supabase_postgres_and_leave_auth_alone(supabase_db):
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        before = snapshot(conn)
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        Migrator(conn).migrate()
        after = snapshot(conn)
        assert after == before
        assert {e.state for e in Migrator(conn).plan()} == {"applied"}
        assert not [n for n in notices if n.startswith("WARNING") and "auth" in n], notices
        # Our schema uses Supabase's auth.users (no default on id) and the extensions where they are.
        columns = {r[0] for r in conn.execute(
            "select column_name from information_schema.columns"
            " where table_schema = 'auth' and table_name = 'users'")}
        assert "encrypted_password" in columns
        works = conn.execute("select extensions.unaccent('Ärger Café') as u,"
                             " extensions.similarity('Schmidt', 'Schmitt') > 0.3 as s").fetchone()
        assert works == ("Arger Cafe", True)


def test_crm_org_create_and_staff_add_work_on_supabase(supabase_db):
    with psycopg.connect(supabase_db, autocommit=True) as conn:
        Migrator(conn).migrate()
    env = {"DATABASE_URL": supabase_db, "PATH": "/usr/bin:/bin"}
    org = crm_cli("org", "create", "acme", "--name", "Acme", env=env)
    assert org.returncode == 0, org.stderr
    added = crm_cli("staff", "add", "--org", "acme", "--email", "boss@acme.test", "--role", "manager", env=env)
    assert added.returncode == 0, added.stderr
    with psycopg.connect(supabase_db) as conn:
        assert conn.execute("select email from auth.users where id = %s", (added.stdout.strip(),)).fetchone() == (
            "boss@acme.test",)


@pytest.mark.skipif(SUPABASE_MODE, reason="the released 0001 never applied on Supabase: plain Postgres only")
def test_a_database_migrated_with_the_released_0001_still_migrates_cleanly(fresh_database, tmp_path):
    released = SqlFile(RELEASED_0001, "0001_supabase_bootstrap.sql", 1)
    assert released.checksum in EQUIVALENT_EARLIER_CHECKSUMS["0001_supabase_bootstrap.sql"]
    old_dir = tmp_path / "db"
    shutil.copytree(DB_DIR, old_dir)
    shutil.copy(RELEASED_0001, old_dir / "migrations" / "0001_supabase_bootstrap.sql")
    url = fresh_database("released")
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn, old_dir).migrate()
        assert conn.execute("select checksum from private.schema_migrations where version = 1").fetchone()[0] == (
            released.checksum)
        assert Migrator(conn).migrate() == []
        entries = Migrator(conn).plan()
        assert {e.state for e in entries} == {"applied"}
    status = crm_cli("db", "status", env={"DATABASE_URL": url})
    assert status.returncode == 0, status.stderr
    assert "equivalent earlier text" in status.stdout


def test_an_edit_that_is_not_the_released_text_is_still_refused(fresh_database, tmp_path):
    url = fresh_database("edited")
    with psycopg.connect(url, autocommit=True) as conn:
        Migrator(conn).migrate()
        conn.execute("update private.schema_migrations set checksum = repeat('0', 64) where version = 1")
        states = {e.name: e.state for e in Migrator(conn).plan()}
        assert states["0001_supabase_bootstrap.sql"] == "edited"


def test_bootstrap_on_plain_postgres_gives_auth_users_no_id_default(conn):
    """As on Supabase: code that forgets an explicit id fails here too, not only in production."""
    with pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute("insert into auth.users (email) values ('no-id@example.test')")


def test_bootstrap_reproduces_supabase_exposure(conn):
    """A new function in public is executable by anon unless revoked, as on Supabase."""
    conn.execute("create function public.exposed_probe() returns int language sql stable as $$ select 1 $$")
    conn.execute("create table public.exposed_probe_t (id int)")
    rows = conn.execute(
        "select has_function_privilege('anon', 'public.exposed_probe()', 'execute') as fn,"
        " has_table_privilege('anon', 'public.exposed_probe_t', 'select') as tbl,"
        " has_schema_privilege('anon', 'private', 'usage') as private_usage,"
        " (select rolbypassrls from pg_roles where rolname = 'service_role') as bypass,"
        " (select rolcanlogin from pg_roles where rolname = 'anon') as anon_login").fetchone()
    assert rows == {"fn": True, "tbl": True, "private_usage": False, "bypass": True, "anon_login": False}


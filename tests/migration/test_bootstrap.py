"""The bootstrap applies unchanged on a database that already has Supabase's roles and auth schema,
and leaves Supabase's own objects alone."""

import psycopg

from crm.migrate import Migrator

SUPABASE_LIKE = """
create schema auth;
create table auth.users (
  instance_id uuid, id uuid primary key, aud varchar(255), role varchar(255), email varchar(255),
  encrypted_password varchar(255), email_confirmed_at timestamptz, raw_app_meta_data jsonb,
  raw_user_meta_data jsonb, created_at timestamptz default now(), updated_at timestamptz,
  is_sso_user boolean not null default false
);
create function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid
$$;
comment on function auth.uid() is 'supabase original';
create function auth.role() returns text language sql stable as $$
  select current_setting('request.jwt.claims', true)::jsonb ->> 'role'
$$;
create function auth.jwt() returns jsonb language sql stable as $$
  select current_setting('request.jwt.claims', true)::jsonb
$$;
"""


def test_bootstrap_keeps_existing_supabase_objects(fresh_database):
    url = fresh_database("supa")
    with psycopg.connect(url, autocommit=True) as conn:
        # Roles are cluster-wide: after any earlier migration on this server they already exist,
        # exactly as on Supabase. Make sure of it, then add Supabase's auth schema by hand.
        conn.execute("""do $$ begin
            if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin; end if;
            if not exists (select from pg_roles where rolname = 'authenticated') then
              create role authenticated nologin; end if;
            if not exists (select from pg_roles where rolname = 'service_role') then
              create role service_role nologin bypassrls; end if; end $$""")
        conn.execute(SUPABASE_LIKE)
        Migrator(conn).migrate()
        comment = conn.execute("select obj_description('auth.uid()'::regprocedure)").fetchone()[0]
        assert comment == "supabase original"
        columns = {r[0] for r in conn.execute(
            "select column_name from information_schema.columns"
            " where table_schema = 'auth' and table_name = 'users'")}
        assert "encrypted_password" in columns  # Supabase's table, not ours
        user = conn.execute("insert into auth.users (id, email) values (gen_random_uuid(), 'a@b.c')"
                            " returning id").fetchone()[0]
        with conn.transaction(force_rollback=True):
            conn.execute("select set_config('role', 'authenticated', true),"
                         " set_config('request.jwt.claims', %s, true)", (f'{{"sub": "{user}"}}',))
            assert conn.execute("select auth.uid()").fetchone()[0] == user


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

-- Bootstrap: reproduce the parts of Supabase's platform our schema relies on, only where absent.
--
-- On Supabase every object below already exists and nothing here touches it: the migrations run as
-- Supabase's `postgres`, which is not a superuser and owns nothing in `auth` (schema `auth` and
-- everything in it belong to `supabase_admin` / `supabase_auth_admin`), so creating, altering,
-- commenting on, granting or revoking anything there fails or is refused. Every statement about an
-- object in `auth` or `extensions` is therefore guarded: it runs only on the object this file has
-- just created. On plain Postgres it creates the same roles, the `auth` schema with `auth.uid()`,
-- `auth.role()`, `auth.jwt()` and a minimal `auth.users` (no default on `id`, as on Supabase, where
-- Supabase Auth assigns ids), and Supabase's default grants, so local tests see exactly the exposure
-- a Supabase project would give (a new function in `public` is executable by `anon` unless revoked).
--
-- Corrected before release of the Supabase deployment (issue 9): the first version commented on
-- and granted on `auth` objects unconditionally and gave `auth.users.id` a default. A database
-- migrated with it is equivalent for our schema; the runner accepts its recorded checksum
-- (`crm.migrate.EQUIVALENT_EARLIER_CHECKSUMS`).

do $bootstrap$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  -- The migrating user (postgres on Supabase) must be able to `set role` to each of them.
  if not pg_catalog.pg_has_role(current_user, 'anon', 'member') then
    execute pg_catalog.format('grant anon to %I', current_user);
  end if;
  if not pg_catalog.pg_has_role(current_user, 'authenticated', 'member') then
    execute pg_catalog.format('grant authenticated to %I', current_user);
  end if;
  if not pg_catalog.pg_has_role(current_user, 'service_role', 'member') then
    execute pg_catalog.format('grant service_role to %I', current_user);
  end if;
end
$bootstrap$;

do $schemas$
begin
  if pg_catalog.to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;
  end if;
  if pg_catalog.to_regnamespace('extensions') is null then
    create schema extensions;
    grant usage on schema extensions to anon, authenticated, service_role;
  end if;
end
$schemas$;

create schema if not exists private;

do $public_usage$
begin
  -- Supabase has granted this already (and `postgres` may not own `public` there).
  if not (pg_catalog.has_schema_privilege('anon', 'public', 'usage')
          and pg_catalog.has_schema_privilege('authenticated', 'public', 'usage')
          and pg_catalog.has_schema_privilege('service_role', 'public', 'usage')) then
    grant usage on schema public to anon, authenticated, service_role;
  end if;
end
$public_usage$;

-- Nothing in `private` is reachable through PostgREST roles; service_role reaches it only through
-- functions and the jobs, which run as the owner.
revoke all on schema private from public, anon, authenticated;
grant usage on schema private to service_role;

do $auth_objects$
begin
  if pg_catalog.to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key,
      email text,
      created_at timestamptz not null default now()
    );
    comment on table auth.users is
      'Stand-in for Supabase Auth''s users table on plain Postgres; on Supabase the real one is used unchanged.';
  end if;
  if pg_catalog.to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
    comment on function auth.uid() is 'The JWT subject of the current request (Supabase-compatible).';
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;
  if pg_catalog.to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
    comment on function auth.role() is 'The JWT role claim of the current request (Supabase-compatible).';
    grant execute on function auth.role() to anon, authenticated, service_role;
  end if;
  if pg_catalog.to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
    comment on function auth.jwt() is 'All JWT claims of the current request (Supabase-compatible).';
    grant execute on function auth.jwt() to anon, authenticated, service_role;
  end if;
end
$auth_objects$;

-- Supabase's default privileges: everything new in `public` is granted to the three API roles.
-- Our own migrations revoke what must not be exposed; `crm db lint` checks the result.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

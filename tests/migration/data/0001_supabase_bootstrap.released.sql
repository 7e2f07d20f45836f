-- Bootstrap: reproduce the parts of Supabase's platform our schema relies on, only where absent.
--
-- On Supabase every object below already exists and nothing here changes it. On plain Postgres it
-- creates the same roles, the `auth` schema with `auth.uid()`, `auth.role()`, `auth.jwt()` and a
-- minimal `auth.users`, and Supabase's default grants, so local tests see exactly the exposure a
-- Supabase project would give (a new function in `public` is executable by `anon` unless revoked).

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

create schema if not exists auth;
create schema if not exists extensions;
create schema if not exists private;

grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;

-- Nothing in `private` is reachable through PostgREST roles; service_role reaches it only through
-- functions and the jobs, which run as the owner.
revoke all on schema private from public, anon, authenticated;
grant usage on schema private to service_role;

create table if not exists auth.users (
  id uuid primary key default gen_random_uuid(),
  email text,
  created_at timestamptz not null default now()
);
comment on table auth.users is
  'Stand-in for Supabase Auth''s users table on plain Postgres; on Supabase the real one is used unchanged.';

do $auth_functions$
begin
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
  end if;
end
$auth_functions$;

grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;

-- Supabase's default privileges: everything new in `public` is granted to the three API roles.
-- Our own migrations revoke what must not be exposed; `crm db lint` checks the result.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

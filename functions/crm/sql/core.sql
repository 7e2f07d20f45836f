-- Queries the functions and the CLI run, by name. Parameters are %(name)s.

-- health --
select 1 as ok

-- begin_request --
-- Exactly what PostgREST does at the start of every request: the role and the JWT claims are
-- transaction-local, so one set of RLS policies governs PostgREST and the functions alike.
-- Sent with BEGIN in one round trip (client-side binding, simple query protocol).
begin;
select set_config('role', %(role)s, true),
       set_config('request.jwt.claims', %(claims)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true)

-- create_organization --
insert into public.organizations (slug, name, default_country)
values (%(slug)s, %(name)s, %(country)s)
returning id

-- find_user_by_email --
select id from auth.users where lower(email) = lower(%(email)s) order by created_at limit 1

-- organization_exists --
select exists (select from public.organizations where slug = %(org)s) as found

-- create_user --
-- An explicit id: Supabase's auth.users.id has no default (Supabase Auth assigns ids).
insert into auth.users (id, email) values (gen_random_uuid(), %(email)s) returning id

-- user_email --
select email from auth.users where id = %(user_id)s

-- add_staff --
insert into public.staff (org_id, user_id, role)
select o.id, %(user_id)s, %(role)s::public.staff_role
  from public.organizations o
 where o.slug = %(org)s
on conflict (org_id, user_id) do update set role = excluded.role
returning org_id

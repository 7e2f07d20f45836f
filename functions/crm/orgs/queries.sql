-- Organizations, users and staff (crm.orgs.accounts): `crm org create`, `crm staff add`,
-- `crm token` and the demo organization of `crm dev`. Parameters are %(name)s.

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

-- any_organization --
select exists (select from public.organizations) as found

-- staff_user_by_email --
-- The user id of a staff member of an organization (by slug), by email.
select s.user_id
  from public.staff s
  join public.organizations o on o.id = s.org_id
  join auth.users u on u.id = s.user_id
 where o.slug = %(org)s and lower(u.email) = lower(%(email)s)
 limit 1

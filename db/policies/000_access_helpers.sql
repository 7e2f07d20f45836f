-- RLS helpers: small SECURITY DEFINER functions reading `staff` for the caller (`auth.uid()`).
-- Policies call them wrapped in `(select …)` so Postgres evaluates them once per statement
-- (an initPlan), not once per row. They run as their owner, so they read `staff` without
-- recursing into staff's own policies.

create or replace function hidden.staff_org_ids()
returns uuid[]
language sql stable security definer
set search_path = ''
as $$
  select coalesce(array_agg(s.org_id), '{}')
    from public.staff s
   where s.user_id = (select auth.uid())
$$;
comment on function hidden.staff_org_ids() is 'Organizations the caller is staff of (any role).';

create or replace function hidden.staff_org_ids(variadic roles public.staff_role[])
returns uuid[]
language sql stable security definer
set search_path = ''
as $$
  select coalesce(array_agg(s.org_id), '{}')
    from public.staff s
   where s.user_id = (select auth.uid())
     and s.role = any (roles)
$$;
comment on function hidden.staff_org_ids(public.staff_role[]) is
  'Organizations where the caller holds one of the given roles.';

create or replace function hidden.staff_role(org uuid)
returns public.staff_role
language sql stable security definer
set search_path = ''
as $$
  select s.role from public.staff s where s.org_id = org and s.user_id = (select auth.uid())
$$;
comment on function hidden.staff_role(uuid) is 'The caller''s role in an organization, or null.';

revoke all on function hidden.staff_org_ids(), hidden.staff_org_ids(public.staff_role[]),
  hidden.staff_role(uuid) from public;
grant execute on function hidden.staff_org_ids(), hidden.staff_org_ids(public.staff_role[]),
  hidden.staff_role(uuid) to authenticated, service_role;

-- The admin gate of the management RPCs (API keys, integrations, webhook endpoints). RPCs call it;
-- no policy does. Replaces hidden.webhook_admin_check and hidden.integration_admin_check, and
-- org_admin_check's two-argument form.
drop function if exists hidden.webhook_admin_check(uuid, text), hidden.integration_admin_check(uuid),
  hidden.org_admin_check(uuid, text);

create or replace function hidden.org_admin_check(org uuid, managed text, missing text default 'organization')
returns void
language plpgsql stable
set search_path = ''
as $$
declare
  role public.staff_role := hidden.staff_role(org);
begin
  if pg_catalog.current_setting('role') = 'none' then
    return;  -- the migrations owner (CLI, tests): no API role
  elsif pg_catalog.current_setting('role') = 'service_role' then
    -- Supabase's server key (BYPASSRLS, SPEC 6.1): manages any organization that exists.
    if not exists (select from public.organizations o where o.id = org) then
      raise sqlstate 'PT404' using message = missing || ' not found', detail = 'not_found';
    end if;
  elsif role is null then
    raise sqlstate 'PT404' using message = missing || ' not found', detail = 'not_found';
  elsif role <> 'admin' then
    raise sqlstate 'PT403' using message = 'only admins manage ' || managed, detail = 'forbidden';
  end if;
end
$$;
comment on function hidden.org_admin_check(uuid, text, text) is
  'PT404 "<missing> not found" when the caller is not staff of the org (nothing to see), PT403 "only admins manage <managed>" when staff but not admin; the owner passes, and service_role (the server key) for an org that exists.';
revoke all on function hidden.org_admin_check(uuid, text, text) from public;

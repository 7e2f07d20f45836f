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

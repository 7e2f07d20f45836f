-- leads: staff read their organization's leads; admins and managers change them; agents change
-- only leads assigned to them (and may add leads assigned to themselves). Nobody deletes leads:
-- they are closed as lost or junk.

drop policy if exists "Staff read leads of their organization" on public.leads;
create policy "Staff read leads of their organization" on public.leads
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read leads of their organization" on public.leads is
  'Every role (admin, manager, agent, viewer) reads the leads of its organizations.';

drop policy if exists "Admins, managers and self-assigning agents add leads" on public.leads;
create policy "Admins, managers and self-assigning agents add leads" on public.leads
  for insert to authenticated
  with check (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assigned_to = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])));
comment on policy "Admins, managers and self-assigning agents add leads" on public.leads is
  'Viewers add nothing.';

drop policy if exists "Admins, managers and assigned agents update leads" on public.leads;
create policy "Admins, managers and assigned agents update leads" on public.leads
  for update to authenticated
  using (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assigned_to = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])))
  with check (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assigned_to = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])));
comment on policy "Admins, managers and assigned agents update leads" on public.leads is
  'An agent cannot hand a row to someone else (with check) nor touch rows of others (using).';

-- History is never deleted through the API (SPEC 6.6): no delete policy (and no DELETE grant).
drop policy if exists "Admins and managers delete leads of their organization" on public.leads;

-- inspections: staff read their organization's inspections; admins and managers record and correct them.
-- Nobody deletes one (no DELETE grant, no delete policy).

drop policy if exists "Staff read inspections of their organization" on public.inspections;
create policy "Staff read inspections of their organization" on public.inspections
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read inspections of their organization" on public.inspections is
  'Every role (admin, manager, agent, viewer) reads the inspections of its organizations.';

drop policy if exists "Admins and managers record inspections of orders in their organization" on public.inspections;
create policy "Admins and managers record inspections of orders in their organization" on public.inspections
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers record inspections of orders in their organization" on public.inspections is
  'Agents and viewers cannot record inspections.';

drop policy if exists "Admins and managers correct inspections of their organization" on public.inspections;
create policy "Admins and managers correct inspections of their organization" on public.inspections
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers correct inspections of their organization" on public.inspections is
  'Agents and viewers cannot change inspections.';

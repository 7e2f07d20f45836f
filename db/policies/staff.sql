-- staff: staff read their organization's members; only admins add, change roles of and remove
-- members (the last admin stays: db/triggers/staff.sql).

drop policy if exists "Staff read the staff of their organizations" on public.staff;
create policy "Staff read the staff of their organizations" on public.staff
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));

drop policy if exists "Admins add staff to their organization" on public.staff;
create policy "Admins add staff to their organization" on public.staff
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));

drop policy if exists "Admins change roles in their organization" on public.staff;
create policy "Admins change roles in their organization" on public.staff
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));

drop policy if exists "Admins remove staff from their organization" on public.staff;
create policy "Admins remove staff from their organization" on public.staff
  for delete to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));

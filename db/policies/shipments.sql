-- shipments: staff read their organization's shipments; only admins and managers change them.

drop policy if exists "Staff read shipments of their organization" on public.shipments;
create policy "Staff read shipments of their organization" on public.shipments
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read shipments of their organization" on public.shipments is
  'Every role (admin, manager, agent, viewer) reads the shipments of its organizations.';

drop policy if exists "Admins and managers add shipments to their organization" on public.shipments;
create policy "Admins and managers add shipments to their organization" on public.shipments
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers add shipments to their organization" on public.shipments is
  'Agents and viewers cannot create shipments.';

drop policy if exists "Admins and managers update shipments of their organization" on public.shipments;
create policy "Admins and managers update shipments of their organization" on public.shipments
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers update shipments of their organization" on public.shipments is
  'Agents and viewers cannot change shipments.';

drop policy if exists "Admins and managers delete shipments of their organization" on public.shipments;
create policy "Admins and managers delete shipments of their organization" on public.shipments
  for delete to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers delete shipments of their organization" on public.shipments is
  'Agents and viewers cannot delete shipments.';

-- orders: staff read their organization's orders; only admins and managers change them. Nobody
-- deletes orders: they are cancelled.

drop policy if exists "Staff read orders of their organization" on public.orders;
create policy "Staff read orders of their organization" on public.orders
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read orders of their organization" on public.orders is
  'Every role (admin, manager, agent, viewer) reads the orders of its organizations.';

drop policy if exists "Admins and managers add orders to their organization" on public.orders;
create policy "Admins and managers add orders to their organization" on public.orders
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers add orders to their organization" on public.orders is
  'Agents and viewers cannot create orders.';

drop policy if exists "Admins and managers update orders of their organization" on public.orders;
create policy "Admins and managers update orders of their organization" on public.orders
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers update orders of their organization" on public.orders is
  'Agents and viewers cannot change orders.';

-- History is never deleted through the API (SPEC 6.6): no delete policy (and no DELETE grant).
drop policy if exists "Admins and managers delete orders of their organization" on public.orders;

-- customers: staff read their organization's customers; admins and managers change them; nobody
-- deletes them (erase_customer scrubs personal data instead).
-- Contact data: no policy for anon, ever.

drop policy if exists "Staff read customers of their organization" on public.customers;
create policy "Staff read customers of their organization" on public.customers
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read customers of their organization" on public.customers is
  'Every role (admin, manager, agent, viewer) reads the customers of its organizations.';

drop policy if exists "Admins and managers add customers to their organization" on public.customers;
create policy "Admins and managers add customers to their organization" on public.customers
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers add customers to their organization" on public.customers is
  'Agents and viewers cannot create customers.';

drop policy if exists "Admins and managers update customers of their organization" on public.customers;
create policy "Admins and managers update customers of their organization" on public.customers
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers update customers of their organization" on public.customers is
  'Agents and viewers cannot change customers.';

-- History is never deleted through the API (SPEC 6.6): no delete policy (and no DELETE grant).
drop policy if exists "Admins and managers delete customers of their organization" on public.customers;

-- payments: staff read their organization's payments; admins and managers record and correct them.
-- Nobody deletes one (no DELETE grant, no delete policy): a refund is its own row.

drop policy if exists "Staff read payments of their organization" on public.payments;
create policy "Staff read payments of their organization" on public.payments
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read payments of their organization" on public.payments is
  'Every role (admin, manager, agent, viewer) reads the payments of its organizations.';

drop policy if exists "Admins and managers record payments in their organization" on public.payments;
create policy "Admins and managers record payments in their organization" on public.payments
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers record payments in their organization" on public.payments is
  'Agents and viewers cannot record payments.';

drop policy if exists "Admins and managers correct payments of their organization" on public.payments;
create policy "Admins and managers correct payments of their organization" on public.payments
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers correct payments of their organization" on public.payments is
  'Agents and viewers cannot change payments; the payment triggers decide which changes are allowed.';

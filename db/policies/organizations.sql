-- organizations: staff read their own; only admins change the settings (name, default_country).
-- Nobody creates or deletes one through the API (the CLI does, as the owner).

drop policy if exists "Staff read their organizations" on public.organizations;
create policy "Staff read their organizations" on public.organizations
  for select to authenticated
  using (id = any ((select hidden.staff_org_ids())::uuid[]));

drop policy if exists "Admins update their organization" on public.organizations;
create policy "Admins update their organization" on public.organizations
  for update to authenticated
  using (id = any ((select hidden.staff_org_ids('admin'))::uuid[]))
  with check (id = any ((select hidden.staff_org_ids('admin'))::uuid[]));

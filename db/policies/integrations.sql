-- integrations (SPEC 10): admins manage, managers read; agents and viewers see none. Created by
-- create_integration only (secrets); nobody deletes one through the API (no DELETE grant).

drop policy if exists "Admins and managers read integrations of their organization" on public.integrations;
create policy "Admins and managers read integrations of their organization" on public.integrations
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers read integrations of their organization" on public.integrations is
  'Settings hold no secrets; still, agents and viewers have no business with them.';

drop policy if exists "Admins change integrations of their organization" on public.integrations;
create policy "Admins change integrations of their organization" on public.integrations
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));
comment on policy "Admins change integrations of their organization" on public.integrations is
  'enabled (the feature flag) and settings only (column grants); secrets through rotate_integration_secret.';

-- api_keys (SPEC 11): admins manage, managers read; agents and viewers see none. Created and
-- revoked through create_api_key / revoke_api_key; admins may rename one (column grant); nobody
-- deletes one through the API (no DELETE grant). No secrets here: the hashes are private.

drop policy if exists "Admins and managers read API keys of their organization" on public.api_keys;
create policy "Admins and managers read API keys of their organization" on public.api_keys
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers read API keys of their organization" on public.api_keys is
  'Names, prefixes, scopes, expiry and last use; never a key.';

drop policy if exists "Admins rename API keys of their organization" on public.api_keys;
create policy "Admins rename API keys of their organization" on public.api_keys
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));
comment on policy "Admins rename API keys of their organization" on public.api_keys is
  'name only (column grant); revoking goes through revoke_api_key.';

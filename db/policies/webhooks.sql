-- Webhooks out (SPEC 9): admins manage endpoints, managers read them; admins read deliveries and
-- attempts. Nobody inserts or deletes through the API (create_webhook_endpoint creates; endpoints
-- are disabled, never deleted; deliveries are written by the dispatcher only).

drop policy if exists "Admins and managers read the webhook endpoints of their organization" on public.webhook_endpoints;
create policy "Admins and managers read the webhook endpoints of their organization" on public.webhook_endpoints
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers read the webhook endpoints of their organization" on public.webhook_endpoints is
  'Agents and viewers do not see where events go.';

drop policy if exists "Admins change the webhook endpoints of their organization" on public.webhook_endpoints;
create policy "Admins change the webhook endpoints of their organization" on public.webhook_endpoints
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));
comment on policy "Admins change the webhook endpoints of their organization" on public.webhook_endpoints is
  'url, description, event_types and enabled (column grants); managers only read.';

drop policy if exists "Admins read the webhook deliveries of their organization" on public.webhook_deliveries;
create policy "Admins read the webhook deliveries of their organization" on public.webhook_deliveries
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));
comment on policy "Admins read the webhook deliveries of their organization" on public.webhook_deliveries is
  'Only admins see delivery state; the dispatcher (service_role) writes it.';

drop policy if exists "Admins read the webhook attempts of their organization" on public.webhook_attempts;
create policy "Admins read the webhook attempts of their organization" on public.webhook_attempts
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]));
comment on policy "Admins read the webhook attempts of their organization" on public.webhook_attempts is
  'Every attempt of every delivery, for admins.';

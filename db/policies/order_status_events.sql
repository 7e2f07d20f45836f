-- order_status_events: read-only history. Rows come from the status-event trigger only: no write grants, no
-- write policies.

drop policy if exists "Staff read order status events of their organization" on public.order_status_events;
create policy "Staff read order status events of their organization" on public.order_status_events
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read order status events of their organization" on public.order_status_events is
  'Every role reads the status history of its organizations; nobody writes it directly.';

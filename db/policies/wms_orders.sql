-- wms_orders: the warehouse's orders, cached (SPEC 11). Staff read; no API role writes (no grants,
-- no write policies): webhooks and reconciliation keep the cache.

drop policy if exists "Staff read warehouse orders of their organization" on public.wms_orders;
create policy "Staff read warehouse orders of their organization" on public.wms_orders
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read warehouse orders of their organization" on public.wms_orders is
  'Every role reads the cached warehouse orders of its organizations; nobody writes them through the API.';

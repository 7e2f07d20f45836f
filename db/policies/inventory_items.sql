-- inventory_items: the warehouse's stock, cached (SPEC 11). Staff read; no API role writes (no
-- grants, no write policies): webhooks and reconciliation keep the cache.

drop policy if exists "Staff read inventory of their organization" on public.inventory_items;
create policy "Staff read inventory of their organization" on public.inventory_items
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read inventory of their organization" on public.inventory_items is
  'Every role reads the cached inventory of its organizations; nobody writes it through the API.';

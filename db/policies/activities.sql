-- activities (SPEC 10): staff read their organization's; admins and managers add notes anywhere in
-- it, agents on leads assigned to them, viewers none. Integrations add the other kinds (definer
-- functions). Nobody updates or deletes one (no grants): the timeline is history.

drop policy if exists "Staff read activities of their organization" on public.activities;
create policy "Staff read activities of their organization" on public.activities
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read activities of their organization" on public.activities is
  'Every role reads the activities of its organizations.';

drop policy if exists "Staff add notes as the role matrix allows" on public.activities;
create policy "Staff add notes as the role matrix allows" on public.activities
  for insert to authenticated
  with check (
    kind = 'note'
    and created_by = (select auth.uid())
    and (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
         or (org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])
             and lead_id is not null
             and exists (select from public.leads l
                          where l.org_id = activities.org_id and l.id = activities.lead_id
                            and l.assigned_to = (select auth.uid())))));
comment on policy "Staff add notes as the role matrix allows" on public.activities is
  'Notes only (calls, ad leads and warehouse events come from the integrations), written as oneself; agents only on their leads; viewers never.';

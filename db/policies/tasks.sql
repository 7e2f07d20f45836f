-- tasks: staff read their organization's tasks; admins and managers change them; agents change
-- only tasks assigned to them, and add tasks only on leads assigned to them (assigned to themselves).

drop policy if exists "Staff read tasks of their organization" on public.tasks;
create policy "Staff read tasks of their organization" on public.tasks
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read tasks of their organization" on public.tasks is
  'Every role (admin, manager, agent, viewer) reads the tasks of its organizations.';

drop policy if exists "Admins, managers and self-assigning agents add tasks" on public.tasks;
drop policy if exists "Admins, managers, and agents on their own leads add tasks" on public.tasks;
create policy "Admins, managers, and agents on their own leads add tasks" on public.tasks
  for insert to authenticated
  with check (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assignee = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])
        and exists (select from public.leads l
                     where l.org_id = tasks.org_id and l.id = tasks.lead_id
                       and l.assigned_to = (select auth.uid()))));
comment on policy "Admins, managers, and agents on their own leads add tasks" on public.tasks is
  'An agent adds tasks for themselves on leads assigned to them only (not on orders, not on others'' leads). Viewers add nothing.';

drop policy if exists "Admins, managers and assigned agents update tasks" on public.tasks;
create policy "Admins, managers and assigned agents update tasks" on public.tasks
  for update to authenticated
  using (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assignee = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])))
  with check (
    org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[])
    or (assignee = (select auth.uid()) and org_id = any ((select hidden.staff_org_ids('agent'))::uuid[])));
comment on policy "Admins, managers and assigned agents update tasks" on public.tasks is
  'An agent cannot hand a row to someone else (with check) nor touch rows of others (using).';

drop policy if exists "Admins and managers delete tasks of their organization" on public.tasks;
create policy "Admins and managers delete tasks of their organization" on public.tasks
  for delete to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers delete tasks of their organization" on public.tasks is
  'Agents change their tasks but do not delete them.';

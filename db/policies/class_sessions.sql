-- Class sessions (SPEC 12): every staff role reads; admins and managers schedule sessions and sell
-- memberships and packages. Bookings and their history are written by the booking RPCs and
-- triggers only (no write grants), and nothing here is deleted through the API.

drop policy if exists "Staff read class sessions of their organization" on public.class_sessions;
create policy "Staff read class sessions of their organization" on public.class_sessions
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read class sessions of their organization" on public.class_sessions is
  'Every role (admin, manager, agent, viewer) reads the schedule of its organizations.';

drop policy if exists "Admins and managers schedule class sessions" on public.class_sessions;
create policy "Admins and managers schedule class sessions" on public.class_sessions
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers schedule class sessions" on public.class_sessions is
  'Agents and viewers cannot add sessions.';

drop policy if exists "Admins and managers change class sessions" on public.class_sessions;
create policy "Admins and managers change class sessions" on public.class_sessions
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers change class sessions" on public.class_sessions is
  'Agents and viewers cannot change or cancel sessions.';

drop policy if exists "Staff read memberships of their organization" on public.memberships;
create policy "Staff read memberships of their organization" on public.memberships
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read memberships of their organization" on public.memberships is
  'Every role reads the memberships of its organizations.';

drop policy if exists "Admins and managers sell memberships" on public.memberships;
create policy "Admins and managers sell memberships" on public.memberships
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers sell memberships" on public.memberships is
  'Agents and viewers cannot add memberships.';

drop policy if exists "Admins and managers change memberships" on public.memberships;
create policy "Admins and managers change memberships" on public.memberships
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers change memberships" on public.memberships is
  'Agents and viewers cannot change memberships.';

drop policy if exists "Staff read class packages of their organization" on public.class_packages;
create policy "Staff read class packages of their organization" on public.class_packages
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read class packages of their organization" on public.class_packages is
  'Every role reads the packages (and credits left) of its organizations.';

drop policy if exists "Admins and managers sell class packages" on public.class_packages;
create policy "Admins and managers sell class packages" on public.class_packages
  for insert to authenticated
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers sell class packages" on public.class_packages is
  'Agents and viewers cannot add packages.';

drop policy if exists "Admins and managers change class packages" on public.class_packages;
create policy "Admins and managers change class packages" on public.class_packages
  for update to authenticated
  using (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]))
  with check (org_id = any ((select hidden.staff_org_ids('admin', 'manager'))::uuid[]));
comment on policy "Admins and managers change class packages" on public.class_packages is
  'Agents and viewers cannot change packages; credits_used is the triggers'' (no grant).';

drop policy if exists "Staff read session bookings of their organization" on public.session_bookings;
create policy "Staff read session bookings of their organization" on public.session_bookings
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read session bookings of their organization" on public.session_bookings is
  'Every role reads the bookings of its organizations; admins and managers book and cancel through the RPCs.';

drop policy if exists "Staff read session booking status events of their organization"
  on public.session_booking_status_events;
create policy "Staff read session booking status events of their organization"
  on public.session_booking_status_events
  for select to authenticated
  using (org_id = any ((select hidden.staff_org_ids())::uuid[]));
comment on policy "Staff read session booking status events of their organization"
  on public.session_booking_status_events is
  'Every role reads the booking history of its organizations; nobody writes it directly.';

-- Class sessions (SPEC 12): the frontend views and the staff RPCs. Tables, grants and the lock
-- order are in the class_sessions migration; seats, payment, waitlist and promotion are triggers
-- (db/triggers/class_sessions.sql, session_bookings.sql). plpgsql where a body names RLS helpers:
-- this file is applied before db/policies/.

-- ---------------------------------------------------------------------------------------------
-- Views for the frontend (security_invoker: the caller's RLS applies)
-- ---------------------------------------------------------------------------------------------
create or replace view public.session_rosters
with (security_invoker = true)
as
select s.id,
       s.org_id,
       s.title,
       s.starts_at,
       s.ends_at,
       s.location,
       s.instructor_id,
       s.status,
       s.capacity,
       s.waitlist_capacity,
       c.booked,
       c.waitlisted,
       case when s.status = 'scheduled' then greatest(s.capacity - c.booked, 0) else 0 end as free_seats,
       c.attended,
       coalesce(c.roster, '[]'::jsonb) as roster
  from public.class_sessions s
  cross join lateral (
    select count(*) filter (where b.status in ('booked', 'attended', 'no_show'))::integer as booked,
           count(*) filter (where b.status = 'waitlisted')::integer as waitlisted,
           count(*) filter (where b.status = 'attended')::integer as attended,
           jsonb_agg(jsonb_build_object('booking_id', b.id, 'customer_id', b.customer_id,
                                        'full_name', cu.full_name, 'status', b.status,
                                        'waitlist_position', b.waitlist_position, 'booked_at', b.booked_at,
                                        'checked_in_at', b.checked_in_at)
                     order by b.status = 'waitlisted', b.waitlist_position, b.booked_at, b.id)
             filter (where b.status in ('booked', 'attended', 'no_show', 'waitlisted')) as roster
      from public.session_bookings b
      join public.customers cu on cu.org_id = b.org_id and cu.id = b.customer_id
     where b.org_id = s.org_id and b.session_id = s.id) c;
comment on view public.session_rosters is
  'One row per class session: counts (booked = seats taken, i.e. booked + attended + no_show; waitlisted; free_seats; attended) and the roster (seat holders, then the waitlist in order). security_invoker.';

create or replace view public.customer_booking_history
with (security_invoker = true)
as
select b.id as booking_id,
       b.org_id,
       b.customer_id,
       b.session_id,
       s.title,
       s.starts_at,
       s.ends_at,
       s.location,
       s.status as session_status,
       b.status,
       b.waitlist_position,
       case when b.membership_id is not null then 'membership'
            when b.package_id is not null then 'package' end as paid_by,
       b.membership_id,
       b.package_id,
       b.group_id,
       b.booked_at,
       b.cancelled_at,
       b.checked_in_at,
       b.created_at
  from public.session_bookings b
  join public.class_sessions s on s.org_id = b.org_id and s.id = b.session_id;
comment on view public.customer_booking_history is
  'Every booking with its session, for a customer''s history (filter by customer_id, order by starts_at desc). security_invoker.';

revoke all on public.session_rosters, public.customer_booking_history from anon, authenticated, service_role, public;
grant select on public.session_rosters, public.customer_booking_history to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- RPCs (staff). SECURITY DEFINER with explicit checks, because bookings have no write grants:
--   not staff of the row's organization (or no such row) -> PT404 not_found
--   agent or viewer                                      -> PT403 forbidden
-- and the session row is locked (FOR UPDATE) before any booking is touched.
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.check_session_staff(org uuid, what text)
returns void
language plpgsql stable security definer
set search_path = ''
as $$
declare
  role public.staff_role := case when org is not null then hidden.staff_role(org) end;
begin
  if role is null then
    raise sqlstate 'PT404' using message = what || ' not found', detail = 'not_found';
  end if;
  if role not in ('admin', 'manager') then
    raise sqlstate 'PT403' using message = 'only admins and managers book, check in and cancel class sessions',
      detail = 'forbidden';
  end if;
end
$$;
comment on function hidden.check_session_staff(uuid, text) is
  'PT404 (naming `what`) unless the caller is staff of the organization (null = no such row), PT403 unless admin or manager.';
revoke all on function hidden.check_session_staff(uuid, text) from public;

create or replace function hidden.session_for_change(session_id uuid, what text)
returns public.class_sessions
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  locked public.class_sessions;
begin
  perform hidden.check_session_staff(
    (select s.org_id from public.class_sessions s where s.id = session_for_change.session_id), what);
  select s.* into locked from public.class_sessions s where s.id = session_for_change.session_id for update;
  return locked;
end
$$;
comment on function hidden.session_for_change(uuid, text) is
  'The session, locked FOR UPDATE, once the caller is known to be an admin or manager of its organization (PT404 naming `what` / PT403 otherwise).';
revoke all on function hidden.session_for_change(uuid, text) from public;

create or replace function hidden.check_session_customer(org uuid, customer uuid)
returns void
language plpgsql stable security definer
set search_path = ''
as $$
begin
  if customer is null or not exists (select from public.customers c
                                       where c.org_id = org and c.id = customer and c.erased_at is null) then
    raise sqlstate 'PT404' using message = 'customer not found', detail = 'not_found', hint = 'customer_id';
  end if;
end
$$;
comment on function hidden.check_session_customer(uuid, uuid) is
  'PT404 unless the customer belongs to the organization and was not erased (an erased customer is never found again).';
revoke all on function hidden.check_session_customer(uuid, uuid) from public;

create or replace function hidden.check_not_booked(s public.class_sessions, customer uuid)
returns void
language plpgsql stable security definer
set search_path = ''
as $$
begin
  -- Under the session lock, so this sees every committed booking; the partial unique index
  -- session_bookings_one_active_key holds it for every other writer.
  if exists (select from public.session_bookings b
              where b.org_id = s.org_id and b.session_id = s.id and b.customer_id = customer
                and b.status in ('booked', 'waitlisted')) then
    raise sqlstate 'PT409' using message = 'this customer is already booked or waitlisted for this session',
      detail = 'already_booked';
  end if;
end
$$;
comment on function hidden.check_not_booked(public.class_sessions, uuid) is
  'PT409 already_booked when the customer has a booked or waitlisted booking for the session.';
revoke all on function hidden.check_not_booked(public.class_sessions, uuid) from public;

create or replace function public.book_session(session_id uuid, customer_id uuid, join_waitlist boolean default true)
returns public.session_bookings
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  s public.class_sessions;
  seats_taken integer;
  booking public.session_bookings;
begin
  s := hidden.session_for_change(book_session.session_id, 'class session');
  perform hidden.check_session_customer(s.org_id, book_session.customer_id);
  perform hidden.check_not_booked(s, book_session.customer_id);
  select pg_catalog.count(*) into seats_taken
    from public.session_bookings b
   where b.org_id = s.org_id and b.session_id = s.id and b.status in ('booked', 'attended', 'no_show');
  if seats_taken >= s.capacity and not coalesce(book_session.join_waitlist, true) then
    raise sqlstate 'PT409' using message = 'this class session is full', detail = 'session_full';
  end if;
  insert into public.session_bookings (org_id, session_id, customer_id, status)
  values (s.org_id, s.id, book_session.customer_id,
          case when seats_taken < s.capacity then 'booked' else 'waitlisted' end::public.session_booking_status)
  returning * into booking;
  return booking;
end
$$;
comment on function public.book_session(uuid, uuid, boolean) is
  'Books a customer (lead or client) into a class session, paid by membership or package; full -> waitlisted (or PT409 session_full when the waitlist is full or join_waitlist is false). PT409 no_credit, already_booked, session_cancelled, session_over; PT404; PT403 for agents and viewers.';
revoke all on function public.book_session(uuid, uuid, boolean) from public, anon, service_role;
grant execute on function public.book_session(uuid, uuid, boolean) to authenticated;

create or replace function public.book_sessions(session_ids uuid[], customer_id uuid)
returns setof public.session_bookings
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  ids uuid[];
  orgs uuid[];
  s public.class_sessions;
  new_group uuid := pg_catalog.gen_random_uuid();
  i integer;
begin
  select pg_catalog.array_agg(distinct x order by x) into ids
    from pg_catalog.unnest(book_sessions.session_ids) x where x is not null;
  if ids is null then
    raise sqlstate 'PT422' using message = 'session_ids is required', detail = 'required', hint = 'session_ids';
  end if;
  if pg_catalog.cardinality(ids) > 100 then
    raise sqlstate 'PT422' using message = 'at most 100 sessions at once', detail = 'too_many', hint = 'session_ids';
  end if;
  select pg_catalog.array_agg(distinct c.org_id) into orgs from public.class_sessions c where c.id = any (ids);
  if pg_catalog.cardinality(orgs) > 1 then
    raise sqlstate 'PT404' using message = 'class session not found', detail = 'not_found';
  end if;
  -- Every session is checked and locked first, in id order: two group bookings over the same
  -- sessions wait for each other instead of deadlocking.
  for i in 1 .. pg_catalog.cardinality(ids) loop
    s := hidden.session_for_change(ids[i], 'class session');
  end loop;
  perform hidden.check_session_customer(orgs[1], book_sessions.customer_id);
  for s in select c.* from public.class_sessions c where c.id = any (ids) order by c.id loop
    perform hidden.check_not_booked(s, book_sessions.customer_id);
    -- Booked in every session or in none: a full one is PT409 session_full (no waitlist here).
    insert into public.session_bookings (org_id, session_id, customer_id, status, group_id)
    values (s.org_id, s.id, book_sessions.customer_id, 'booked', new_group);
  end loop;
  return query select b.* from public.session_bookings b
                where b.org_id = orgs[1] and b.group_id = new_group order by b.session_id;
end
$$;
comment on function public.book_sessions(uuid[], uuid) is
  'Books a customer into several sessions at once, all or none (one group_id); any full session is PT409 session_full and nothing is booked. Same errors as book_session.';
revoke all on function public.book_sessions(uuid[], uuid) from public, anon, service_role;
grant execute on function public.book_sessions(uuid[], uuid) to authenticated;

create or replace function public.cancel_session_booking(booking_id uuid)
returns public.session_bookings
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  booking_session uuid;
  s public.class_sessions;
  booking public.session_bookings;
begin
  select b.session_id into booking_session from public.session_bookings b where b.id = cancel_session_booking.booking_id;
  if not found then
    raise sqlstate 'PT404' using message = 'session booking not found', detail = 'not_found';
  end if;
  s := hidden.session_for_change(booking_session, 'session booking');
  perform hidden.lock_session_payments(s.org_id);
  select b.* into booking from public.session_bookings b where b.id = cancel_session_booking.booking_id for update;
  if booking.status in ('cancelled', 'late_cancelled') then
    return booking;  -- a retry: nothing more to do
  end if;
  update public.session_bookings b
     set status = case when booking.status = 'booked' and pg_catalog.now() > s.starts_at - s.cancel_cutoff
                       then 'late_cancelled' else 'cancelled' end::public.session_booking_status
   where b.id = booking.id
  returning b.* into booking;
  return booking;
end
$$;
comment on function public.cancel_session_booking(uuid) is
  'Cancels a booked or waitlisted booking: late_cancelled (credit kept) inside the session''s cancel_cutoff, else cancelled (credit back). A freed seat promotes the first waitlisted booking that can pay, in the same transaction. Cancelling again returns the booking unchanged; attended/no_show: PT409.';
revoke all on function public.cancel_session_booking(uuid) from public, anon, service_role;
grant execute on function public.cancel_session_booking(uuid) to authenticated;

create or replace function public.check_in(booking_id uuid)
returns public.session_bookings
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  booking public.session_bookings;
begin
  perform hidden.check_session_staff(
    (select b.org_id from public.session_bookings b where b.id = check_in.booking_id), 'session booking');
  -- No seat changes hands: the booking row alone is locked.
  update public.session_bookings b set status = 'attended'
   where b.id = check_in.booking_id
  returning b.* into booking;
  return booking;
end
$$;
comment on function public.check_in(uuid) is
  'Marks a booked (or no_show) booking attended; the credit stays used. Already attended: no-op. Waitlisted or cancelled: PT409.';
revoke all on function public.check_in(uuid) from public, anon, service_role;
grant execute on function public.check_in(uuid) to authenticated;

create or replace function public.cancel_class_session(session_id uuid, note text default null)
returns public.class_sessions
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  s public.class_sessions;
begin
  perform hidden.check_note(cancel_class_session.note);
  s := hidden.session_for_change(cancel_class_session.session_id, 'class session');
  if s.status = 'cancelled' then
    return s;
  end if;
  perform pg_catalog.set_config('crm.status_note', coalesce(cancel_class_session.note, ''), true);
  update public.class_sessions c set status = 'cancelled' where c.id = s.id returning c.* into s;
  perform pg_catalog.set_config('crm.status_note', '', true);
  return s;
end
$$;
comment on function public.cancel_class_session(uuid, text) is
  'Cancels a class session: every booked and waitlisted booking is cancelled and its credit given back (trigger), with the note on their status events and on class_session.cancelled. Cancelling again: no-op.';
revoke all on function public.cancel_class_session(uuid, text) from public, anon, service_role;
grant execute on function public.cancel_class_session(uuid, text) to authenticated;

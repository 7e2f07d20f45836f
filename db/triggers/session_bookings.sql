-- session_bookings: seats, payment, waitlist and promotion for every writer; the session_booking
-- status machine (status events, outbox). Lock order: see the class_sessions migration.

create or replace function hidden.lock_session_payments(org uuid)
returns void
language sql volatile
set search_path = ''
as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('crm.session_payments/' || org::text, 0))
$$;
comment on function hidden.lock_session_payments(uuid) is
  'Serialises, per organization, the changes that touch payment rows of several customers at once (a cancellation that promotes, a cancelled session, a larger capacity), so their row locks cannot form a cycle. Taken after the session row lock, before any payment row.';
revoke all on function hidden.lock_session_payments(uuid) from public;

create or replace function hidden.session_booking_payer(org uuid, customer uuid, session_starts_at timestamptz,
                                                        take boolean, out membership_id uuid, out package_id uuid)
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  session_day date := (session_starts_at at time zone 'UTC')::date;
  week_start timestamptz := pg_catalog.date_trunc('week', session_starts_at at time zone 'UTC') at time zone 'UTC';
  candidate record;
begin
  -- An active membership covering the session's day, unlimited ones first, within its weekly limit.
  for candidate in
    select ms.id, ms.weekly_limit
      from public.memberships ms
     where ms.org_id = org and ms.customer_id = customer and ms.status = 'active'
       and ms.starts_on <= session_day and (ms.ends_on is null or ms.ends_on >= session_day)
     order by ms.weekly_limit is not null, ms.id
  loop
    if candidate.weekly_limit is not null then
      if take then
        -- Serialises this membership's weekly count (two sessions the same week booked at once).
        perform from public.memberships ms where ms.id = candidate.id for update;
      end if;
      continue when (select pg_catalog.count(*)
                       from public.session_bookings b
                       join public.class_sessions s on s.org_id = b.org_id and s.id = b.session_id
                      where b.org_id = org and b.membership_id = candidate.id
                        and b.status in ('booked', 'attended', 'no_show', 'late_cancelled')
                        and s.starts_at >= week_start and s.starts_at < week_start + interval '7 days')
                    >= candidate.weekly_limit;
    end if;
    membership_id := candidate.id;
    return;
  end loop;
  -- Else the package expiring first that has a credit left and is valid at the session's start.
  if take then
    update public.class_packages p
       set credits_used = p.credits_used + 1
     where p.id = (select p2.id
                     from public.class_packages p2
                    where p2.org_id = org and p2.customer_id = customer and p2.credits_used < p2.credits_total
                      and (p2.expires_at is null or p2.expires_at > session_starts_at)
                    order by p2.expires_at nulls last, p2.id
                    limit 1
                      for update)
    returning p.id into package_id;
  else
    select p2.id into package_id
      from public.class_packages p2
     where p2.org_id = org and p2.customer_id = customer and p2.credits_used < p2.credits_total
       and (p2.expires_at is null or p2.expires_at > session_starts_at)
     order by p2.expires_at nulls last, p2.id
     limit 1;
  end if;
end
$$;
comment on function hidden.session_booking_payer(uuid, uuid, timestamptz, boolean) is
  'What pays a booking of this customer for a session starting then: an active membership within its weekly limit, else the package expiring first with a credit left. take = lock it and use the credit; both null = nothing can pay.';
revoke all on function hidden.session_booking_payer(uuid, uuid, timestamptz, boolean) from public;

create or replace function hidden.tg_session_bookings__seat()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  s public.class_sessions;
  seats_taken integer;
  waiting integer;
  payer record;
begin
  select * into s from public.class_sessions c where c.org_id = new.org_id and c.id = new.session_id for update;
  if not found then
    raise sqlstate 'PT404' using message = 'class session not found', detail = 'not_found', hint = 'session_id';
  end if;
  if s.status <> 'scheduled' then
    raise sqlstate 'PT409' using message = 'this class session is cancelled', detail = 'session_cancelled';
  end if;
  if s.ends_at <= pg_catalog.now() then
    raise sqlstate 'PT409' using message = 'this class session is over', detail = 'session_over';
  end if;
  select pg_catalog.count(*) filter (where b.status in ('booked', 'attended', 'no_show')),
         pg_catalog.count(*) filter (where b.status = 'waitlisted')
    into seats_taken, waiting
    from public.session_bookings b
   where b.org_id = s.org_id and b.session_id = s.id and b.status in ('booked', 'attended', 'no_show', 'waitlisted');

  if new.status = 'booked' then
    if seats_taken >= s.capacity then
      raise sqlstate 'PT409' using message = 'this class session is full', detail = 'session_full';
    end if;
    payer := hidden.session_booking_payer(new.org_id, new.customer_id, s.starts_at, true);
    new.booked_at := pg_catalog.clock_timestamp();
    new.waitlist_position := null;
  else
    -- waitlisted (the machine allows nothing else on insert): only when full, within its limit, and
    -- only for a customer who could pay now (the credit is taken when promoted).
    if seats_taken < s.capacity then
      raise sqlstate 'PT409' using message = 'this class session has free seats: book it', detail = 'seats_available';
    end if;
    if waiting >= coalesce(s.waitlist_capacity, 2147483647) then
      raise sqlstate 'PT409' using message = 'this class session and its waitlist are full', detail = 'session_full';
    end if;
    payer := hidden.session_booking_payer(new.org_id, new.customer_id, s.starts_at, false);
    new.waitlist_position := coalesce((select pg_catalog.max(b.waitlist_position)
                                         from public.session_bookings b
                                        where b.org_id = s.org_id and b.session_id = s.id and b.status = 'waitlisted'),
                                      0) + 1;
  end if;
  if payer.membership_id is null and payer.package_id is null then
    raise sqlstate 'PT409' using message = 'no active membership or package credit pays for this session',
      detail = 'no_credit';
  end if;
  new.membership_id := case when new.status = 'booked' then payer.membership_id end;
  new.package_id := case when new.status = 'booked' then payer.package_id end;
  if tg_op = 'INSERT' then
    new.created_by := (select auth.uid());
    new.created_at := pg_catalog.clock_timestamp();
    new.cancelled_at := null;
    new.checked_in_at := null;
  end if;
  return new;
end
$$;
comment on function hidden.tg_session_bookings__seat() is
  'A booking that becomes booked (insert or promotion) locks its session, needs a free seat (PT409 session_full) and takes its payment (PT409 no_credit); a waitlisted insert needs a full session, room on the waitlist and a customer who could pay, and gets the next waitlist position.';
revoke all on function hidden.tg_session_bookings__seat() from public;

create or replace function hidden.tg_session_bookings__leave()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if old.status = 'booked' and new.status in ('cancelled', 'late_cancelled') then
    -- A seat frees up and a waitlisted booking may be promoted (another customer's credit): the
    -- session first, then the organization's payment lock (no-ops inside the RPCs, which hold both).
    perform from public.class_sessions c where c.org_id = new.org_id and c.id = new.session_id for update;
    perform hidden.lock_session_payments(new.org_id);
  end if;
  if new.status in ('cancelled', 'late_cancelled') then
    new.cancelled_at := pg_catalog.now();
  elsif new.status = 'attended' then
    new.checked_in_at := coalesce(new.checked_in_at, pg_catalog.now());
  end if;
  new.waitlist_position := null;
  -- An early cancellation (and a cancelled session) gives the credit back; late ones keep it.
  if old.status = 'booked' and new.status = 'cancelled' and new.package_id is not null then
    update public.class_packages p set credits_used = p.credits_used - 1
     where p.org_id = new.org_id and p.id = new.package_id;
  end if;
  return new;
end
$$;
comment on function hidden.tg_session_bookings__leave() is
  'A booking moving to cancelled, late_cancelled, attended or no_show: timestamps, off the waitlist, and the package credit back on an early cancellation (a membership needs nothing: its weekly count only counts booked, attended, no_show and late_cancelled).';
revoke all on function hidden.tg_session_bookings__leave() from public;

create or replace function hidden.promote_waitlist(org uuid, session uuid)
returns integer
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  s public.class_sessions;
  free integer;
  promoted integer := 0;
  candidate uuid;
  reason text;
begin
  select * into s from public.class_sessions c where c.org_id = org and c.id = session for update;
  if not found or s.status <> 'scheduled' or s.ends_at <= pg_catalog.now() then
    return 0;
  end if;
  perform hidden.lock_session_payments(org);
  free := s.capacity - (select pg_catalog.count(*) from public.session_bookings b
                         where b.org_id = org and b.session_id = session
                           and b.status in ('booked', 'attended', 'no_show'));
  for candidate in
    select b.id from public.session_bookings b
     where b.org_id = org and b.session_id = session and b.status = 'waitlisted'
     order by b.waitlist_position, b.id
  loop
    exit when free <= 0;
    begin
      update public.session_bookings b set status = 'booked' where b.id = candidate;
      free := free - 1;
      promoted := promoted + 1;
    exception when sqlstate 'PT409' then
      get stacked diagnostics reason = pg_exception_detail;
      if reason <> 'no_credit' then
        raise;
      end if;
      -- Cannot pay any more: stays on the waitlist, the next one gets the seat.
    end;
  end loop;
  return promoted;
end
$$;
comment on function hidden.promote_waitlist(uuid, uuid) is
  'Fills free seats of a scheduled, not yet ended session from its waitlist in FIFO order, skipping whoever cannot pay; returns how many were promoted. Runs in the transaction that freed the seats.';
revoke all on function hidden.promote_waitlist(uuid, uuid) from public;

create or replace function hidden.tg_session_bookings__promote()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.promote_waitlist(new.org_id, new.session_id);
  return null;
end
$$;
comment on function hidden.tg_session_bookings__promote() is
  'A freed seat (booked -> cancelled or late_cancelled) promotes the first waitlisted booking that can pay, in the same transaction.';
revoke all on function hidden.tg_session_bookings__promote() from public;

create or replace function hidden.tg_session_bookings__protect()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  raise sqlstate 'PT422' using
    message = 'a booking''s organization, session, customer and group cannot be changed',
    detail = 'immutable_column', hint = 'session_id';
end
$$;
comment on function hidden.tg_session_bookings__protect() is 'Refuses moving a booking to another organization, session, customer or group.';
revoke all on function hidden.tg_session_bookings__protect() from public;

drop trigger if exists _050_protect on public.session_bookings;
create trigger _050_protect
  before update on public.session_bookings
  for each row when (
    old.org_id is distinct from new.org_id or old.session_id is distinct from new.session_id
    or old.customer_id is distinct from new.customer_id or old.group_id is distinct from new.group_id)
  execute function hidden.tg_session_bookings__protect();

drop trigger if exists _100_timestamps on public.session_bookings;
create trigger _100_timestamps
  before update on public.session_bookings
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

select private.define_status_machine(
  machine => 'session_booking', on_table => 'public.session_bookings',
  transitions => '{"waitlisted": ["booked", "cancelled"],
                   "booked": ["cancelled", "late_cancelled", "attended", "no_show"],
                   "no_show": ["attended"]}',
  changed_events => '{"booked": "session_booking.promoted", "cancelled": "session_booking.cancelled",
                      "late_cancelled": "session_booking.cancelled"}',
  created_event => 'session_booking.created',
  initial_statuses => '{booked, waitlisted}',
  events_table => 'public.session_booking_status_events', subject_column => 'booking_id', note_column => 'note',
  payload => '{id, org_id, session_id, customer_id, status, waitlist_position, membership_id, package_id, group_id,
               booked_at, cancelled_at, checked_in_at, created_by, created_at, updated_at}');

drop trigger if exists _300_seat_insert on public.session_bookings;
create trigger _300_seat_insert
  before insert on public.session_bookings
  for each row execute function hidden.tg_session_bookings__seat();

drop trigger if exists _300_seat_promote on public.session_bookings;
create trigger _300_seat_promote
  before update on public.session_bookings
  for each row when (old.status = 'waitlisted' and new.status = 'booked')
  execute function hidden.tg_session_bookings__seat();

drop trigger if exists _310_leave on public.session_bookings;
create trigger _310_leave
  before update on public.session_bookings
  for each row when (old.status is distinct from new.status and new.status not in ('booked', 'waitlisted'))
  execute function hidden.tg_session_bookings__leave();

-- After the booking's own status event and outbox row, so `.cancelled` precedes `.promoted`.
drop trigger if exists _950_promote on public.session_bookings;
create trigger _950_promote
  after update on public.session_bookings
  for each row when (old.status = 'booked' and new.status in ('cancelled', 'late_cancelled'))
  execute function hidden.tg_session_bookings__promote();

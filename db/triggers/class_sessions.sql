-- class_sessions (and the text and timestamps of memberships and class_packages): normalised text,
-- protected org_id, timestamps, capacity, the class_session machine (scheduled ->
-- cancelled, outbox class_session.cancelled) and what a change does to its bookings.

create or replace function hidden.tg_class_sessions__capacity()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  -- The row is locked by this update: no booking can take a seat meanwhile.
  if (select pg_catalog.count(*) from public.session_bookings b
       where b.org_id = new.org_id and b.session_id = new.id
         and b.status in ('booked', 'attended', 'no_show')) > new.capacity then
    raise sqlstate 'PT409' using message = 'capacity cannot be below the seats already booked',
      detail = 'capacity_below_booked', hint = 'capacity';
  end if;
  return new;
end
$$;
comment on function hidden.tg_class_sessions__capacity() is 'Refuses a capacity below the seats already taken.';
revoke all on function hidden.tg_class_sessions__capacity() from public;

create or replace function hidden.tg_class_sessions__bookings()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if new.status = 'cancelled' then
    -- Everyone booked or waiting is cancelled; the booking triggers give the credits back.
    perform hidden.lock_session_payments(new.org_id);
    update public.session_bookings b set status = 'cancelled'
     where b.org_id = new.org_id and b.session_id = new.id and b.status in ('booked', 'waitlisted');
  else
    perform hidden.promote_waitlist(new.org_id, new.id);
  end if;
  return null;
end
$$;
comment on function hidden.tg_class_sessions__bookings() is
  'A cancelled session cancels (and refunds) every booked and waitlisted booking; a larger capacity promotes from the waitlist.';
revoke all on function hidden.tg_class_sessions__bookings() from public;

create or replace function hidden.tg_class_sessions__normalize_text()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if tg_table_name = 'class_sessions' then
    new.title := hidden.text_normalize(new.title, 'title');
    new.location := nullif(hidden.text_normalize(new.location, 'label'), '');
  else
    new.plan := hidden.text_normalize(new.plan, 'label');
  end if;
  return new;
end
$$;
comment on function hidden.tg_class_sessions__normalize_text() is
  'Stores class_sessions.title/location and memberships.plan in the text rules'' normalised form (the CHECKs refuse anything else).';
revoke all on function hidden.tg_class_sessions__normalize_text() from public;

drop trigger if exists _040_normalize_text on public.class_sessions;
create trigger _040_normalize_text
  before insert or update of title, location on public.class_sessions
  for each row execute function hidden.tg_class_sessions__normalize_text();

drop trigger if exists _040_normalize_text on public.memberships;
create trigger _040_normalize_text
  before insert or update of plan on public.memberships
  for each row execute function hidden.tg_class_sessions__normalize_text();

drop trigger if exists _100_timestamps on public.memberships;
create trigger _100_timestamps
  before update on public.memberships
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

drop trigger if exists _100_timestamps on public.class_packages;
create trigger _100_timestamps
  before update on public.class_packages
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

drop trigger if exists _050_protect on public.class_sessions;
create trigger _050_protect
  before update on public.class_sessions
  for each row when (old.org_id is distinct from new.org_id)
  execute function hidden.tg__protect_org_id();

drop trigger if exists _100_timestamps on public.class_sessions;
create trigger _100_timestamps
  before update on public.class_sessions
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

select private.define_status_machine(
  machine => 'class_session', on_table => 'public.class_sessions',
  transitions => '{"scheduled": ["cancelled"]}',
  changed_events => '{"cancelled": "class_session.cancelled"}',
  initial_statuses => '{scheduled}',
  payload => '{id, org_id, title, starts_at, ends_at, capacity, location, instructor_id, status,
               created_at, updated_at}');

drop trigger if exists _300_capacity on public.class_sessions;
create trigger _300_capacity
  before update on public.class_sessions
  for each row when (new.capacity < old.capacity)
  execute function hidden.tg_class_sessions__capacity();

-- After the session's own outbox row, so class_session.cancelled precedes the bookings' events.
drop trigger if exists _950_bookings on public.class_sessions;
create trigger _950_bookings
  after update on public.class_sessions
  for each row when ((new.status = 'cancelled' and old.status <> 'cancelled')
                     or (new.status = 'scheduled' and new.capacity > old.capacity))
  execute function hidden.tg_class_sessions__bookings();

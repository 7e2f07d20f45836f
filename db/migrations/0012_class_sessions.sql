-- Class sessions (SPEC 12): sessions with capacity and a waitlist, bookings of customers (leads and
-- clients alike), memberships and credit packages that pay for them, the bookings' status history.
-- The staff RPCs and the frontend views are in db/functions/class_sessions.sql.
--
-- Rules live in db/triggers/class_sessions.sql and db/triggers/session_bookings.sql, for every
-- writer: the status machines, seats (never more than capacity), payment (credits taken when a
-- booking becomes booked, given back on an early cancellation or a cancelled session), waitlist
-- order and promotion.
--
-- Locking, the same order everywhere, so that nothing deadlocks:
--   1. class_sessions rows FOR UPDATE (several: in id order);
--   2. the organization's session-payment lock (hidden.lock_session_payments), taken only by
--      what can touch the payment rows of more than one customer (a cancellation that promotes,
--      a cancelled session, a larger capacity);
--   3. booking rows, then membership / package rows.
-- API roles write bookings only through the RPCs (SECURITY DEFINER with explicit role
-- checks): a direct UPDATE would lock the booking row before its session and could deadlock with
-- them. service_role may only move a status (mark-no-shows: booked -> no_show frees no seat, so it
-- takes no session lock). A multi-row UPDATE of class_sessions (a filtered PATCH) locks them in
-- scan order, not id order: it can deadlock with book_sessions over the same sessions (then
-- Postgres aborts one; nothing is overbooked).
-- The hot case (every client on one session) runs one booking at a time: bench/bench_sessions.py.

create type public.class_session_status as enum ('scheduled', 'cancelled');
comment on type public.class_session_status is 'scheduled -> cancelled. Nothing else.';

create type public.session_booking_status as enum (
  'booked', 'waitlisted', 'cancelled', 'late_cancelled', 'attended', 'no_show');
comment on type public.session_booking_status is
  'Starts booked or waitlisted; waitlisted -> booked (promoted) or cancelled; booked -> cancelled, late_cancelled, attended or no_show; no_show -> attended.';

create type public.membership_status as enum ('active', 'paused', 'cancelled');
comment on type public.membership_status is 'Only an active membership pays for bookings.';

-- ---------------------------------------------------------------------------------------------
-- class_sessions
-- ---------------------------------------------------------------------------------------------
create table public.class_sessions (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  title text not null,
  starts_at timestamptz not null,
  ends_at timestamptz not null,
  capacity integer not null,
  waitlist_capacity integer,
  location text,
  instructor_id uuid,
  cancel_cutoff interval not null default interval '12 hours',
  status public.class_session_status not null default 'scheduled',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint class_sessions_org_id_id_key unique (org_id, id),
  constraint class_sessions_instructor_staff_fkey foreign key (org_id, instructor_id)
    references public.staff (org_id, user_id) on delete set null (instructor_id),
  constraint class_sessions_title_text check (hidden.is_clean_text(title, 'title')),
  constraint class_sessions_ends_after_start check (ends_at > starts_at),
  constraint class_sessions_capacity_range check (capacity between 1 and 10000),
  constraint class_sessions_waitlist_capacity_range check (waitlist_capacity between 0 and 10000),
  constraint class_sessions_location_text check (hidden.is_clean_text(location, 'label')),
  constraint class_sessions_cancel_cutoff_range check (
    cancel_cutoff >= interval '0' and cancel_cutoff <= interval '30 days')
);
comment on table public.class_sessions is
  'A class at a time with a capacity and an optional waitlist limit; its status follows the class_session machine (scheduled -> cancelled). Cancelling it cancels and refunds every booking (trigger).';
comment on column public.class_sessions.waitlist_capacity is 'Most waitlisted bookings; null = unbounded, 0 = no waitlist.';
comment on column public.class_sessions.cancel_cutoff is
  'A booking cancelled later than this before starts_at is late_cancelled and keeps its credit.';

create index class_sessions_org_starts_idx on public.class_sessions (org_id, starts_at);
create index class_sessions_instructor_idx on public.class_sessions (org_id, instructor_id)
  where instructor_id is not null;
-- mark-no-shows looks for ended sessions that still have booked bookings.
create index class_sessions_scheduled_ends_idx on public.class_sessions (ends_at) where status = 'scheduled';

-- ---------------------------------------------------------------------------------------------
-- memberships and class_packages (what pays)
-- ---------------------------------------------------------------------------------------------
create table public.memberships (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  customer_id uuid not null,
  plan text not null,
  starts_on date not null,
  ends_on date,
  status public.membership_status not null default 'active',
  weekly_limit integer,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint memberships_org_id_id_key unique (org_id, id),
  constraint memberships_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint memberships_plan_text check (hidden.is_clean_text(plan, 'label')),
  constraint memberships_ends_after_start check (ends_on >= starts_on),
  constraint memberships_weekly_limit_positive check (weekly_limit between 1 and 100)
);
comment on table public.memberships is
  'A customer''s membership: pays for bookings of sessions on days from starts_on to ends_on (null = open) while active, at most weekly_limit a week (ISO week, UTC; null = unlimited).';

create index memberships_org_customer_idx on public.memberships (org_id, customer_id);

create table public.class_packages (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  customer_id uuid not null,
  credits_total integer not null,
  credits_used integer not null default 0,
  expires_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint class_packages_org_id_id_key unique (org_id, id),
  constraint class_packages_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint class_packages_credits_total_range check (credits_total between 1 and 1000),
  constraint class_packages_credits_within_total check (credits_used >= 0 and credits_used <= credits_total)
);
comment on table public.class_packages is
  'Credits a customer bought: one per booked session starting before expires_at (null = never expires). The package expiring first pays when no membership does.';
comment on column public.class_packages.credits_used is
  'Written by the booking triggers only: +1 when a booking it pays becomes booked, -1 on an early cancellation or a cancelled session.';

create index class_packages_org_customer_idx on public.class_packages (org_id, customer_id, expires_at);

-- ---------------------------------------------------------------------------------------------
-- session_bookings and their status events
-- ---------------------------------------------------------------------------------------------
create table public.session_bookings (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  session_id uuid not null,
  customer_id uuid not null,
  status public.session_booking_status not null default 'booked',
  waitlist_position integer,
  membership_id uuid,
  package_id uuid,
  booked_at timestamptz,
  cancelled_at timestamptz,
  checked_in_at timestamptz,
  created_by uuid references auth.users (id) on delete set null,
  group_id uuid,
  created_at timestamptz not null default clock_timestamp(),
  updated_at timestamptz not null default now(),
  constraint session_bookings_org_id_id_key unique (org_id, id),
  constraint session_bookings_session_fkey foreign key (org_id, session_id)
    references public.class_sessions (org_id, id) on delete cascade,
  constraint session_bookings_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint session_bookings_membership_fkey foreign key (org_id, membership_id)
    references public.memberships (org_id, id) on delete set null (membership_id),
  constraint session_bookings_package_fkey foreign key (org_id, package_id)
    references public.class_packages (org_id, id) on delete set null (package_id),
  constraint session_bookings_one_payer check (num_nonnulls(membership_id, package_id) <= 1),
  constraint session_bookings_waitlist_position check (
    (status = 'waitlisted') = (waitlist_position is not null) and waitlist_position > 0)
);
comment on table public.session_bookings is
  'A customer''s place in a class session (booked) or on its waitlist; status follows the session_booking machine. Written by the booking RPCs and triggers only.';
comment on column public.session_bookings.waitlist_position is 'FIFO order on the waitlist (set while waitlisted).';
comment on column public.session_bookings.membership_id is 'The membership that paid (set when booked; kept for history).';
comment on column public.session_bookings.package_id is
  'The package whose credit paid (set when booked; kept for history — a cancelled booking''s credit was given back).';
comment on column public.session_bookings.group_id is 'Shared by the bookings of one book_sessions call.';
comment on column public.session_bookings.created_at is 'When the booking was written (clock time, under the session lock: arrival order).';

-- At most one booked/waitlisted booking per customer and session, for every writer.
create unique index session_bookings_one_active_key on public.session_bookings (session_id, customer_id)
  where status in ('booked', 'waitlisted');
create index session_bookings_session_idx on public.session_bookings (org_id, session_id, status, waitlist_position);
create index session_bookings_customer_idx on public.session_bookings (org_id, customer_id, created_at desc);
create index session_bookings_membership_idx on public.session_bookings (org_id, membership_id)
  where membership_id is not null;
create index session_bookings_package_idx on public.session_bookings (org_id, package_id) where package_id is not null;
create index session_bookings_created_by_idx on public.session_bookings (created_by) where created_by is not null;
create index session_bookings_booked_idx on public.session_bookings (session_id) where status = 'booked';

create table public.session_booking_status_events (
  id bigint generated always as identity primary key,
  org_id uuid not null references public.organizations (id) on delete cascade,
  booking_id uuid not null,
  from_status public.session_booking_status,
  to_status public.session_booking_status not null,
  changed_by uuid references auth.users (id) on delete set null,
  note text,
  created_at timestamptz not null default now(),
  constraint session_booking_status_events_note_text check (hidden.is_clean_text(note, 'note')),
  constraint session_booking_status_events_booking_fkey foreign key (org_id, booking_id)
    references public.session_bookings (org_id, id) on delete cascade
);
comment on table public.session_booking_status_events is
  'History of booking statuses: one row when a booking is created (from_status null) and one per change. Written by trigger only.';
create index session_booking_status_events_booking_idx on public.session_booking_status_events
  (org_id, booking_id, created_at);
create index session_booking_status_events_changed_by_idx on public.session_booking_status_events (changed_by)
  where changed_by is not null;

-- ---------------------------------------------------------------------------------------------
-- Outbox events of SPEC 12
-- ---------------------------------------------------------------------------------------------
-- Other migrations of this wave widen the same two checks: keep whatever they allow and add ours,
-- so the order in which they are applied does not matter.
do $$
declare
  constraint_name text;
  column_name text;
  ours text[];
  allowed text[];
begin
  foreach constraint_name in array array['outbox_event_type_known', 'outbox_aggregate_type_known'] loop
    if constraint_name = 'outbox_event_type_known' then
      column_name := 'event_type';
      ours := array['session_booking.created', 'session_booking.cancelled', 'session_booking.promoted',
                    'class_session.cancelled'];
    else
      column_name := 'aggregate_type';
      ours := array['session_booking', 'class_session'];
    end if;
    select array_agg(distinct x.v order by x.v) into allowed
      from (select m[1] as v
              from pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_.]+)''', 'g') m
             where c.conrelid = 'private.outbox'::regclass and c.conname = constraint_name
            union
            select unnest(ours)) x;
    execute format('alter table private.outbox drop constraint %I, add constraint %I check (%I in (%s))',
                   constraint_name, constraint_name, column_name,
                   (select string_agg(quote_literal(v), ', ' order by o) from unnest(allowed) with ordinality a(v, o)));
  end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants (policies: db/policies/class_sessions.sql)
-- ---------------------------------------------------------------------------------------------
alter table public.class_sessions enable row level security;
alter table public.memberships enable row level security;
alter table public.class_packages enable row level security;
alter table public.session_bookings enable row level security;
alter table public.session_booking_status_events enable row level security;

revoke all on public.class_sessions, public.memberships, public.class_packages, public.session_bookings,
  public.session_booking_status_events from anon, authenticated, service_role, public;
revoke all on sequence public.session_booking_status_events_id_seq from anon, authenticated, service_role, public;

-- Staff read; admins and managers (RLS) schedule sessions and sell memberships and packages.
-- No deletes: history stays. credits_used and everything on bookings are written by triggers/RPCs.
grant select on public.class_sessions, public.memberships, public.class_packages, public.session_bookings,
  public.session_booking_status_events to authenticated, service_role;
grant insert (org_id, title, starts_at, ends_at, capacity, waitlist_capacity, location, instructor_id, cancel_cutoff),
      update (title, starts_at, ends_at, capacity, waitlist_capacity, location, instructor_id, cancel_cutoff, status)
  on public.class_sessions to authenticated, service_role;
grant insert (org_id, customer_id, plan, starts_on, ends_on, status, weekly_limit),
      update (plan, starts_on, ends_on, status, weekly_limit)
  on public.memberships to authenticated, service_role;
grant insert (org_id, customer_id, credits_total, expires_at),
      update (credits_total, expires_at)
  on public.class_packages to authenticated, service_role;
-- mark-no-shows (service_role) moves ended bookings to no_show.
grant update (status) on public.session_bookings to service_role;

-- The views and RPCs are repeatable: db/functions/class_sessions.sql.

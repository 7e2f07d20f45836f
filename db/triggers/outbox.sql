-- private.outbox: queue every new event for dispatch-outbox's fan-out and wake the workers.
-- Statement-level with a transition table: a bulk insert costs one trigger call.
--
-- The wake-up is a NOTIFY crm_outbox (payload empty: a channel wake-up, not the event), sent only
-- when a worker sleeps. PostgreSQL serialises the commits of all notifying transactions (NOTIFY
-- takes a cluster-wide lock from pre-commit until after the commit record is flushed), so a NOTIFY
-- on every booking made concurrent bookings commit one at a time. A sleeping worker holds the
-- advisory lock hidden.outbox_sleep_lock() exclusively (crm.outbox.dispatch, query outbox_sleep);
-- a writer that gets it shared keeps it until its commit and sends nothing: no worker is asleep,
-- and a worker about to sleep first waits for that lock, i.e. for this commit, then looks for work
-- once more. A writer that cannot get it (a worker sleeps, or is about to) NOTIFYs. Workers poll as
-- well (a NOTIFY is lost while a listener is disconnected, and there is none behind a transaction
-- pooler).

create or replace function hidden.outbox_sleep_lock()
returns bigint
language sql immutable parallel safe
as $$
  select 4242002::bigint
$$;
comment on function hidden.outbox_sleep_lock() is
  'The advisory lock a sleeping dispatch-outbox worker holds exclusively and outbox writers try shared (db/triggers/outbox.sql).';
revoke all on function hidden.outbox_sleep_lock() from public;
grant execute on function hidden.outbox_sleep_lock() to service_role;

create or replace function hidden.tg_outbox__dispatch()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  insert into private.outbox_fanout (outbox_id) select n.id from new_rows n;
  if not pg_catalog.pg_try_advisory_xact_lock_shared(hidden.outbox_sleep_lock()) then
    perform pg_catalog.pg_notify('crm_outbox', '');
  end if;
  return null;
end
$$;
comment on function hidden.tg_outbox__dispatch() is
  'Queues new outbox events for fan-out to webhook endpoints (private.outbox_fanout); NOTIFYs crm_outbox when a worker sleeps (see the file).';
revoke all on function hidden.tg_outbox__dispatch() from public;

drop trigger if exists _900_dispatch on private.outbox;
create trigger _900_dispatch
  after insert on private.outbox
  referencing new table as new_rows
  for each statement execute function hidden.tg_outbox__dispatch();

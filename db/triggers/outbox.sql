-- private.outbox: queue every new event for dispatch-outbox's fan-out and wake the workers.
-- Statement-level with a transition table: a bulk insert costs one trigger call and one NOTIFY.
-- The payload is tiny (a channel wake-up, not the event); NOTIFY is delivered at commit and
-- collapses duplicates within a transaction, and workers poll as well (a NOTIFY is lost while a
-- listener is disconnected, and there is none behind a transaction pooler).

create or replace function hidden.tg_outbox__dispatch()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  insert into private.outbox_fanout (outbox_id) select n.id from new_rows n;
  perform pg_catalog.pg_notify('crm_outbox', '');
  return null;
end
$$;
comment on function hidden.tg_outbox__dispatch() is
  'Queues new outbox events for fan-out to webhook endpoints (private.outbox_fanout) and NOTIFYs crm_outbox.';
revoke all on function hidden.tg_outbox__dispatch() from public;

drop trigger if exists _900_dispatch on private.outbox;
create trigger _900_dispatch
  after insert on private.outbox
  referencing new table as new_rows
  for each statement execute function hidden.tg_outbox__dispatch();

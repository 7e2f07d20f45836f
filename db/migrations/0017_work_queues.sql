-- One leased work queue (issue 11): the image cache, webhook deliveries and the inbox claim, lease,
-- renew, hold and schedule their work through the same functions (db/functions/000_work_queue.sql)
-- instead of three copies of the claim SQL. Each queue keeps its own table (its rows are its domain:
-- a delivery, an inbound event, an order to cache) and is declared here as a row naming the table's
-- standard columns; a new queue is a table with those columns and one more row.
--
-- Existing rows migrate in place: the inbox gains the lease token the other two already have (a
-- running lease keeps running, under a token nobody holds, so it simply expires as before), and the
-- image queue's claimed_at goes (nothing read it; the claim no longer writes it).

create table private.work_queues (
  name text primary key,
  relation regclass not null unique,
  key_column name not null,
  due_column name not null,
  lease_column name not null,
  token_column name not null,
  count_column name,
  ready text,
  constraint work_queues_name_format check (name ~ '^[a-z][a-z0-9_]*$')
);
comment on table private.work_queues is
  'The leased work queues and the columns of their tables the generic queue functions use (private.queue_*). Written by migrations only.';
comment on column private.work_queues.key_column is 'The primary key of one work item.';
comment on column private.work_queues.due_column is
  'When the item may be claimed; null: nothing to do (finished, dead); infinity: paused.';
comment on column private.work_queues.lease_column is
  'Until when the worker holding the item keeps it (may be the due column itself: the image queue pushes available_at past the lease).';
comment on column private.work_queues.token_column is
  'The lease token of the worker holding the item (null when none does); a result is written only under it.';
comment on column private.work_queues.count_column is 'Incremented by every claim (attempts, claims), or null.';
comment on column private.work_queues.ready is
  'Extra condition on a claimable row, the table aliased t: its own columns only (e.g. its status, matching the table''s partial due index), so a claim reads the due index in order and stops at the limit.';

insert into private.work_queues (name, relation, key_column, due_column, lease_column, token_column, count_column, ready)
values
  ('image_cache', 'private.image_cache_queue', 'order_id', 'available_at', 'available_at', 'claim_token', 'claims',
   null),
  ('webhook_deliveries', 'public.webhook_deliveries', 'id', 'next_attempt_at', 'locked_until', 'lease_token',
   'attempts',
   -- A disabled endpoint's deliveries wait at next_attempt_at = infinity (its trigger), so they are never due.
   $$t.status in ('pending', 'failed')$$),
  ('inbox', 'private.inbound_events', 'id', 'next_attempt_at', 'locked_until', 'lease_token', null,
   $$t.status in ('pending', 'failed')$$);

alter table private.work_queues enable row level security;
revoke all on private.work_queues from public, anon, authenticated, service_role;
grant select on private.work_queues to service_role;

-- The inbox: a lease now names its holder, as deliveries' do.
alter table private.inbound_events add column lease_token uuid;
update private.inbound_events set lease_token = gen_random_uuid() where locked_until is not null;
alter table private.inbound_events
  add constraint inbound_events_lease_pair check ((locked_until is null) = (lease_token is null));
comment on column private.inbound_events.lease_token is
  'Token of the process-inbox run holding the lease; its result is recorded only while it still matches.';

alter table private.image_cache_queue drop column claimed_at;

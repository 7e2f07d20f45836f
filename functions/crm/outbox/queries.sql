-- Webhooks out: what dispatch-outbox and purge-outbox run (as service_role). Rules live in
-- db/functions/webhooks.sql; these are the queue's moves.

-- outbox_pending_secrets --
-- Secrets an RPC just generated, to be sealed under CRM_SECRETS_KEY (the database never has it).
select s.id, s.endpoint_id, s.pending
  from private.webhook_secrets s
 where s.pending is not null
 order by s.created_at
 limit 100
   for update skip locked

-- outbox_seal_secret --
update private.webhook_secrets set sealed = %(sealed)s, pending = null where id = %(id)s

-- outbox_fan_out --
-- Queued events -> one delivery per enabled endpoint of the event's org whose filter matches, in
-- the transaction that takes them off the fan-out queue (so each is fanned out exactly once).
with batch as (
  delete from private.outbox_fanout f
   where f.outbox_id in (select q.outbox_id from private.outbox_fanout q
                          order by q.outbox_id limit %(limit)s for update skip locked)
  returning f.outbox_id
), created as (
  insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)
  select o.org_id, e.id, o.event_id, o.event_type
    from batch b
    join private.outbox o on o.id = b.outbox_id
    join public.webhook_endpoints e
      on e.org_id = o.org_id and e.enabled
     and (e.event_types = '{}' or o.event_type = any (e.event_types))
  on conflict on constraint webhook_deliveries_endpoint_event_key do nothing
  returning 1
)
select (select count(*) from batch) as events, (select count(*) from created) as deliveries

-- outbox_claim --
-- Due deliveries leased to this worker with what sending needs (private.webhook_claim: the generic
-- leased claim of db/functions/000_work_queue.sql, then the rows).
select * from private.webhook_claim(%(token)s, %(limit)s, make_interval(secs => %(lease_seconds)s))

-- outbox_renew_leases --
select private.queue_renew('webhook_deliveries', %(token)s, %(ids)s::text[], make_interval(secs => %(lease_seconds)s))

-- outbox_live_secrets --
select s.id, s.endpoint_id, s.sealed, s.pending, s.expires_at
  from private.webhook_secrets s
 where s.endpoint_id = any (%(endpoint_ids)s::uuid[])
   and (s.expires_at is null or s.expires_at > now())
 order by s.created_at desc

-- outbox_record_attempts --
select * from private.webhook_record_attempts(%(token)s, %(results)s::jsonb)

-- outbox_next_due --
-- Seconds until a delivery becomes claimable by this worker (null: none), for the worker's sleep:
-- retries that come due and leases of a stopped worker that run out.
select private.queue_next_due('webhook_deliveries', %(token)s) as seconds

-- outbox_purge --
select * from private.purge_outbox(make_interval(days => %(retention_days)s), %(batch)s)

-- outbox_listen --
listen crm_outbox

-- outbox_sleep --
-- A serving worker is about to wait: it holds this lock while it waits, so outbox writers NOTIFY
-- (db/triggers/outbox.sql). Taking it waits for the writers in flight that did not (lock_timeout of
-- the sleeper's own session connection).
select pg_advisory_lock(hidden.outbox_sleep_lock())

-- outbox_wake --
select pg_advisory_unlock(hidden.outbox_sleep_lock())

-- outbox_sleeper_exists --
-- Whether another worker holds the sleep lock (so writers NOTIFY, and this worker hears it too).
select exists (select from pg_catalog.pg_locks l
                where l.locktype = 'advisory' and l.granted and l.mode = 'ExclusiveLock' and l.pid <> pg_backend_pid()
                  and l.classid = 0 and l.objid = hidden.outbox_sleep_lock() and l.objsubid = 1) as sleeping

-- outbox_cli_add_endpoint --
-- `crm webhooks add` (an operator, as the owner): the same core as create_webhook_endpoint.
select set_config('crm.webhook_allow_loopback', %(allow_loopback)s, true),
       private.webhook_endpoint_create(o.id, %(url)s, %(event_types)s::text[], %(description)s) as endpoint
  from public.organizations o
 where o.slug = %(org)s

-- outbox_cli_retry --
select to_jsonb(private.webhook_retry(%(delivery_id)s::uuid, false)) as delivery

-- outbox_cli_replay --
select private.webhook_replay(%(endpoint_id)s::uuid, %(since)s::timestamptz,
                              coalesce(%(until)s::timestamptz, now()), false) as queued

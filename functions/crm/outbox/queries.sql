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
-- One statement: pick due, unleased deliveries (SKIP LOCKED passes over rows another worker is
-- claiming right now), lease them to this worker, and return what sending needs. The attempt is
-- counted at claim, so a worker killed mid-send still used one. payload::text is the body: jsonb's
-- text form is a function of the stored value, so every attempt sends (and signs) the same bytes
-- unless the event itself was changed (e.g. scrubbed by an erasure).
with due as (
  select d.id, d.locked_until as lost_lease
    from public.webhook_deliveries d
   where d.status in ('pending', 'failed')
     and d.next_attempt_at <= now()
     and (d.locked_until is null or d.locked_until < now())
   order by d.next_attempt_at
   limit %(limit)s
     for update skip locked
), claimed as (
  update public.webhook_deliveries d
     set locked_until = now() + make_interval(secs => %(lease_seconds)s),
         lease_token = %(token)s,
         attempts = d.attempts + 1
    from due, public.webhook_endpoints e, private.outbox o
   where d.id = due.id and e.id = d.endpoint_id and e.enabled and o.event_id = d.event_id
  returning d.id, d.org_id, d.event_id, d.endpoint_id, d.attempts, due.lost_lease, e.url, e.secret_version,
            o.payload::text as body
), lost as (
  -- A lease that ran out: its worker died mid-send. That attempt is recorded now, its outcome unknown.
  insert into public.webhook_attempts (org_id, delivery_id, endpoint_id, event_id, attempt, started_at,
                                       duration_ms, error, outcome)
  select c.org_id, c.id, c.endpoint_id, c.event_id, c.attempts - 1, c.lost_lease, 0,
         'lease expired at started_at: the worker sending it stopped; whether the receiver got it is unknown',
         'failed'
    from claimed c
   where c.lost_lease is not null
)
select c.id, c.event_id, c.endpoint_id, c.attempts, c.url, c.secret_version, c.body from claimed c

-- outbox_renew_leases --
update public.webhook_deliveries
   set locked_until = now() + make_interval(secs => %(lease_seconds)s)
 where lease_token = %(token)s and id = any (%(ids)s::uuid[])

-- outbox_live_secrets --
select s.id, s.endpoint_id, s.sealed, s.pending, s.expires_at
  from private.webhook_secrets s
 where s.endpoint_id = any (%(endpoint_ids)s::uuid[])
   and (s.expires_at is null or s.expires_at > now())
 order by s.created_at desc

-- outbox_record_attempts --
select * from private.webhook_record_attempts(%(token)s, %(results)s::jsonb)

-- outbox_next_due --
-- Seconds until the next unleased delivery is due (null: none), for the worker's sleep.
select extract(epoch from min(d.next_attempt_at) - now())::float8 as seconds
  from public.webhook_deliveries d
 where d.status in ('pending', 'failed') and d.locked_until is null and d.next_attempt_at < 'infinity'

-- outbox_purge --
select * from private.purge_outbox(make_interval(days => %(retention_days)s), %(batch)s)

-- outbox_listen --
listen crm_outbox

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

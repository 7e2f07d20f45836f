-- Webhooks out (SPEC 9): URL rules, the admin RPCs, the retry schedule and attempt recording, purge.
-- Tables and the secrets design are in the migration that created webhook_endpoints.
-- plpgsql throughout where a body names RLS helpers: this file is applied before db/policies/.

-- ---------------------------------------------------------------------------------------------
-- URL rules (a first refusal; the dispatcher's pinned client checks every resolved address)
-- ---------------------------------------------------------------------------------------------
create or replace function private.webhook_url_refusal(url text, allow_loopback boolean)
returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  m text[];
  host text;
  ip inet;
begin
  if url is null or pg_catalog.char_length(url) > 2048 then
    return 'must be an http(s) URL of at most 2048 characters';
  end if;
  m := pg_catalog.regexp_match(url, '^(https?)://([^/?#]*)', 'i');
  if m is null then
    return 'must be an http or https URL';
  end if;
  if pg_catalog.lower(m[1]) = 'http' and not allow_loopback then
    return 'must be https (http only where loopback receivers are allowed: tests, demos)';
  end if;
  if pg_catalog.strpos(m[2], '@') > 0 then
    return 'must not contain credentials';
  end if;
  host := pg_catalog.lower(pg_catalog.regexp_replace(m[2], ':[0-9]*$', ''));
  if host like '[%]' then
    host := pg_catalog.substr(host, 2, pg_catalog.length(host) - 2);
  end if;
  host := pg_catalog.rtrim(host, '.');
  if host = '' then
    return 'must name a host';
  end if;
  if host = 'localhost' or host like '%.localhost' then
    return case when allow_loopback then null else 'names a loopback host' end;
  end if;
  if host ~ '^((0x[0-9a-f]*|[0-9]+)\.?){1,4}$'
     and host !~ '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$' then
    return 'names an address in a non-standard form';  -- 127.1, 0x7f.1, 2130706433, 0177.0.0.1
  end if;
  begin
    ip := host::inet;
  exception when invalid_text_representation then
    return null;  -- a host name: judged by the dispatcher after resolution
  end;
  if ip <<= any (array['127.0.0.0/8', '::1/128', '::ffff:127.0.0.0/104']::inet[]) then
    return case when allow_loopback then null else 'names a loopback address' end;
  end if;
  if ip <<= any (array[
      '0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24',
      '192.0.2.0/24', '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24',
      '224.0.0.0/4', '240.0.0.0/4', '::/128', '::ffff:0:0/96', '64:ff9b::/96', '100::/64',
      '2001:db8::/32', 'fc00::/7', 'fe80::/10', 'fec0::/10', 'ff00::/8']::inet[]) then
    return 'names a private, link-local, multicast or reserved address';
  end if;
  return null;
end
$$;
comment on function private.webhook_url_refusal(text, boolean) is
  'Why an endpoint URL is refused (not https, or http where loopback is not allowed; credentials; a loopback/private/link-local/metadata/reserved address written literally), or null. Host names pass: the dispatcher checks every address they resolve to and pins the connection.';
revoke all on function private.webhook_url_refusal(text, boolean) from public;

create or replace function hidden.webhook_allow_loopback()
returns boolean
language sql stable
set search_path = ''
as $$
  select coalesce(pg_catalog.current_setting('crm.webhook_allow_loopback', true), '') in ('on', '1', 'true')
$$;
comment on function hidden.webhook_allow_loopback() is
  'Setting crm.webhook_allow_loopback: tests and crm dev set it where CRM_WEBHOOK_ALLOW_LOOPBACK=1, so a loopback receiver can be registered. Only a first refusal: the dispatcher refuses loopback unless its own CRM_WEBHOOK_ALLOW_LOOPBACK=1.';
revoke all on function hidden.webhook_allow_loopback() from public;
grant execute on function hidden.webhook_allow_loopback() to authenticated, service_role;

create or replace function hidden.new_webhook_secret()
returns text
language sql volatile
set search_path = ''
as $$
  -- Core only (pgcrypto is not everywhere, e.g. the embedded server): gen_random_uuid() draws 122
  -- bits from the server's strong random source; SHA-256 of three of them is 32 bytes of full entropy.
  select 'whsec_' || pg_catalog.encode(pg_catalog.sha256(
           pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
           || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), 'base64')
$$;
comment on function hidden.new_webhook_secret() is 'A Standard Webhooks secret: whsec_ + base64 of 32 random bytes.';
revoke all on function hidden.new_webhook_secret() from public;

-- ---------------------------------------------------------------------------------------------
-- Admin RPCs
-- ---------------------------------------------------------------------------------------------
-- Each RPC is a public wrapper (who may) around a private core (what happens), which the `crm`
-- CLI calls directly for operators (SPEC 4: `crm webhooks retry|replay`, run as the owner).

create or replace function private.webhook_endpoint_create(org uuid, url text, event_types text[], description text)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  endpoint public.webhook_endpoints;
  secret text := hidden.new_webhook_secret();
begin
  insert into public.webhook_endpoints (org_id, url, description, event_types)
  values (org, pg_catalog.btrim(url), description, coalesce(event_types, '{}'))
  returning * into endpoint;
  insert into private.webhook_secrets (endpoint_id, pending) values (endpoint.id, secret);
  perform pg_catalog.pg_notify('crm_outbox', 'secret');  -- a worker seals it now
  return pg_catalog.to_jsonb(endpoint) - 'secret_version' || pg_catalog.jsonb_build_object('secret', secret);
end
$$;
comment on function private.webhook_endpoint_create(uuid, text, text[], text) is
  'Creates an endpoint and its first secret (parked for the dispatcher to seal); returns the endpoint with the secret.';
revoke all on function private.webhook_endpoint_create(uuid, text, text[], text) from public;

create or replace function public.create_webhook_endpoint(org_id uuid, url text, event_types text[] default '{}',
                                                          description text default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.org_admin_check(create_webhook_endpoint.org_id, 'webhook endpoints');
  return private.webhook_endpoint_create(create_webhook_endpoint.org_id, create_webhook_endpoint.url,
                                         create_webhook_endpoint.event_types, create_webhook_endpoint.description);
end
$$;
comment on function public.create_webhook_endpoint(uuid, text, text[], text) is
  'Admins: a webhook endpoint for their org and its signing secret (whsec_…), shown once. PT422 for a URL that is not http(s) or names a refused address literally; PT404/PT403 for non-staff/non-admins.';
revoke all on function public.create_webhook_endpoint(uuid, text, text[], text) from public, anon;
grant execute on function public.create_webhook_endpoint(uuid, text, text[], text) to authenticated;

create or replace function private.webhook_endpoint_for(endpoint uuid, check_admin boolean)
returns public.webhook_endpoints
language plpgsql stable
set search_path = ''
as $$
declare
  e public.webhook_endpoints;
begin
  select x.* into e from public.webhook_endpoints x where x.id = endpoint;
  if not found then
    raise sqlstate 'PT404' using message = 'webhook endpoint not found', detail = 'not_found';
  end if;
  if check_admin then
    perform hidden.org_admin_check(e.org_id, 'webhook endpoints', 'webhook endpoint');
  end if;
  return e;
end
$$;
comment on function private.webhook_endpoint_for(uuid, boolean) is
  'The endpoint (PT404 if absent), checking the caller is its org''s admin when asked.';
revoke all on function private.webhook_endpoint_for(uuid, boolean) from public;

create or replace function private.webhook_rotate_secret(endpoint uuid, keep_old interval, check_admin boolean)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  e public.webhook_endpoints := private.webhook_endpoint_for(endpoint, check_admin);
  secret text := hidden.new_webhook_secret();
  old_until timestamptz;
begin
  if keep_old is null or keep_old < interval '0' or keep_old > interval '30 days' then
    raise sqlstate 'PT422' using message = 'keep_old must be between 0 and 30 days',
      detail = 'keep_old_out_of_range', hint = 'keep_old';
  end if;
  old_until := pg_catalog.now() + keep_old;
  delete from private.webhook_secrets s where s.endpoint_id = e.id and s.expires_at <= pg_catalog.now();
  update private.webhook_secrets s
     set expires_at = least(coalesce(s.expires_at, old_until), old_until)
   where s.endpoint_id = e.id;
  insert into private.webhook_secrets (endpoint_id, pending) values (e.id, secret);
  update public.webhook_endpoints x set secret_version = x.secret_version + 1 where x.id = e.id;
  perform pg_catalog.pg_notify('crm_outbox', 'secret');
  return pg_catalog.jsonb_build_object('endpoint_id', e.id, 'secret', secret, 'old_secrets_expire_at', old_until);
end
$$;
comment on function private.webhook_rotate_secret(uuid, interval, boolean) is
  'A new secret for the endpoint; older ones keep signing until keep_old has passed.';
revoke all on function private.webhook_rotate_secret(uuid, interval, boolean) from public;

create or replace function public.rotate_webhook_secret(endpoint_id uuid, keep_old interval default '24 hours')
returns jsonb
language sql volatile security definer
set search_path = ''
as $$
  select private.webhook_rotate_secret(endpoint_id, keep_old, true)
$$;
comment on function public.rotate_webhook_secret(uuid, interval) is
  'Admins: a new signing secret, shown once. Older secrets keep signing (a second signature) until keep_old has passed (0 to 30 days).';
revoke all on function public.rotate_webhook_secret(uuid, interval) from public, anon;
grant execute on function public.rotate_webhook_secret(uuid, interval) to authenticated;

create or replace function hidden.requeue_webhook_delivery(d public.webhook_deliveries)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
begin
  if d.locked_until is not null and d.locked_until > pg_catalog.now() then
    return false;  -- in flight right now: never twice at once
  end if;
  update public.webhook_deliveries x
     set status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), locked_until = null,
         lease_token = null
   where x.id = d.id;
  return true;
end
$$;
comment on function hidden.requeue_webhook_delivery(public.webhook_deliveries) is
  'Queues a delivery to be sent now with a fresh retry schedule (same webhook-id), unless a worker is sending it right now.';
revoke all on function hidden.requeue_webhook_delivery(public.webhook_deliveries) from public;

create or replace function private.webhook_retry(delivery uuid, check_admin boolean)
returns public.webhook_deliveries
language plpgsql volatile
set search_path = ''
as $$
declare
  d public.webhook_deliveries;
begin
  select x.* into d from public.webhook_deliveries x where x.id = delivery for update;
  if not found or (check_admin and hidden.staff_role(d.org_id) is distinct from 'admin') then
    -- Deliveries are admin-only reading: for anyone else the row does not exist.
    raise sqlstate 'PT404' using message = 'webhook delivery not found', detail = 'not_found';
  end if;
  if not (select e.enabled from public.webhook_endpoints e where e.id = d.endpoint_id) then
    raise sqlstate 'PT409' using message = 'the endpoint is disabled: enable it first', detail = 'endpoint_disabled';
  end if;
  perform hidden.requeue_webhook_delivery(d);
  perform pg_catalog.pg_notify('crm_outbox', 'retry');
  select x.* into d from public.webhook_deliveries x where x.id = delivery;
  return d;
end
$$;
comment on function private.webhook_retry(uuid, boolean) is 'Sends a delivery again now (see retry_webhook_delivery).';
revoke all on function private.webhook_retry(uuid, boolean) from public;

create or replace function public.retry_webhook_delivery(delivery_id uuid)
returns public.webhook_deliveries
language sql volatile security definer
set search_path = ''
as $$
  select private.webhook_retry(delivery_id, true)
$$;
comment on function public.retry_webhook_delivery(uuid) is
  'Admins: send a delivery again now (same webhook-id), with a fresh retry schedule. PT409 if its endpoint is disabled; no change while it is in flight.';
revoke all on function public.retry_webhook_delivery(uuid) from public, anon;
grant execute on function public.retry_webhook_delivery(uuid) to authenticated;

create or replace function private.webhook_replay(endpoint uuid, since timestamptz, until timestamptz,
                                                  check_admin boolean)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  e public.webhook_endpoints := private.webhook_endpoint_for(endpoint, check_admin);
  created integer;
  requeued integer := 0;
  d public.webhook_deliveries;
begin
  if since is null or until is null or since >= until then
    raise sqlstate 'PT422' using message = 'since must be before until', detail = 'invalid_range', hint = 'since';
  end if;
  if not e.enabled then
    raise sqlstate 'PT409' using message = 'the endpoint is disabled: enable it first', detail = 'endpoint_disabled';
  end if;
  -- Existing deliveries of those events: queued again (their webhook-id stays the event id).
  for d in
    select x.* from public.webhook_deliveries x
      join private.outbox o on o.event_id = x.event_id
     where x.endpoint_id = e.id and o.org_id = e.org_id and o.created_at >= since and o.created_at < until
     for update of x
  loop
    if hidden.requeue_webhook_delivery(d) then
      requeued := requeued + 1;
    end if;
  end loop;
  -- Events it never had (created before it, or while it was disabled) that match its filter.
  insert into public.webhook_deliveries (org_id, endpoint_id, event_id, event_type)
  select o.org_id, e.id, o.event_id, o.event_type
    from private.outbox o
   where o.org_id = e.org_id and o.created_at >= since and o.created_at < until
     and (e.event_types = '{}' or o.event_type = any (e.event_types))
  on conflict on constraint webhook_deliveries_endpoint_event_key do nothing;
  get diagnostics created = row_count;
  perform pg_catalog.pg_notify('crm_outbox', 'replay');
  return created + requeued;
end
$$;
comment on function private.webhook_replay(uuid, timestamptz, timestamptz, boolean) is
  'Queues again the endpoint''s events of [since, until) (see replay_webhook_events).';
revoke all on function private.webhook_replay(uuid, timestamptz, timestamptz, boolean) from public;

create or replace function public.replay_webhook_events(endpoint_id uuid, since timestamptz,
                                                        until timestamptz default now())
returns integer
language sql volatile security definer
set search_path = ''
as $$
  select private.webhook_replay(endpoint_id, since, until, true)
$$;
comment on function public.replay_webhook_events(uuid, timestamptz, timestamptz) is
  'Admins: queue again every event of the endpoint''s org created in [since, until) that matches its filter (new deliveries for events it never had); returns how many. Same webhook-id as before. Events past the outbox retention are gone.';
revoke all on function public.replay_webhook_events(uuid, timestamptz, timestamptz) from public, anon;
grant execute on function public.replay_webhook_events(uuid, timestamptz, timestamptz) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- The dispatcher's rules: retry schedule, Retry-After, 410, five days without success
-- ---------------------------------------------------------------------------------------------
create or replace function private.webhook_retry_delay(attempt integer)
returns interval
language sql volatile
set search_path = ''
as $$
  -- After attempt n fails, wait the n-th step (±20 % jitter); null after the last: dead.
  select private.queue_backoff(attempt, array[interval '5 seconds', interval '5 minutes', interval '30 minutes',
                                              interval '2 hours', interval '5 hours', interval '10 hours',
                                              interval '10 hours'])
$$;
comment on function private.webhook_retry_delay(integer) is
  'SPEC 9 retry schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h with ±20 % jitter; null once the 8th attempt failed.';
revoke all on function private.webhook_retry_delay(integer) from public;

create or replace function private.webhook_claim(token uuid, max_items integer, lease interval)
returns table (id uuid, event_id uuid, endpoint_id uuid, attempts integer, url text, secret_version integer,
               body text)
language plpgsql volatile
set search_path = ''
as $$
declare
  claimed jsonb;
begin
  -- The generic leased claim counts the attempt (so a worker killed mid-send still used one); the
  -- rows are read by a second statement, whose snapshot sees every row the claim took.
  select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', c.id, 'lost_lease', c.lost_lease,
                                                            'attempts', c.claims))
    into claimed
    from private.queue_claim('webhook_deliveries', max_items, token, lease) c;
  if claimed is null then
    return;
  end if;
  -- An attempt recorded as failed after its endpoint was disabled (by a 410 or the five-day rule
  -- in the same batch) left a retry that came due: pause it as the endpoint's trigger pauses the rest.
  update public.webhook_deliveries d
     set next_attempt_at = 'infinity', locked_until = null, lease_token = null, attempts = d.attempts - 1
    from pg_catalog.jsonb_to_recordset(claimed) as x (id uuid), public.webhook_endpoints e
   where d.id = x.id and e.id = d.endpoint_id and not e.enabled;
  -- payload::text is the body: jsonb's text form is a function of the stored value, so every
  -- attempt sends (and signs) the same bytes unless the event itself was changed (e.g. scrubbed by
  -- an erasure).
  return query
  with c as (
    select x.id, x.lost_lease, x.attempts
      from pg_catalog.jsonb_to_recordset(claimed) as x (id uuid, lost_lease timestamptz, attempts integer)
  ), rows as (
    select d.id, d.org_id, d.event_id, d.endpoint_id, c.attempts, c.lost_lease, e.url, e.secret_version,
           o.payload::text as body
      from c
      join public.webhook_deliveries d on d.id = c.id
      join public.webhook_endpoints e on e.id = d.endpoint_id and e.enabled
      join private.outbox o on o.event_id = d.event_id
  ), lost as (
    -- A lease that ran out: its worker died mid-send. That attempt is recorded now, its outcome unknown.
    insert into public.webhook_attempts (org_id, delivery_id, endpoint_id, event_id, attempt, started_at,
                                         duration_ms, error, outcome)
    select r.org_id, r.id, r.endpoint_id, r.event_id, r.attempts - 1, r.lost_lease, 0,
           'lease expired at started_at: the worker sending it stopped; whether the receiver got it is unknown',
           'failed'
      from rows r
     where r.lost_lease is not null
  )
  select r.id, r.event_id, r.endpoint_id, r.attempts, r.url, r.secret_version, r.body from rows r;
end
$$;
comment on function private.webhook_claim(uuid, integer, interval) is
  'dispatch-outbox: leases up to max_items due deliveries of enabled endpoints to token (private.queue_claim) and returns what sending needs; an attempt whose worker let the lease run out is recorded as failed.';
revoke all on function private.webhook_claim(uuid, integer, interval) from public;
grant execute on function private.webhook_claim(uuid, integer, interval) to service_role;

create or replace function private.webhook_record_attempts(token uuid, results jsonb)
returns table (succeeded integer, failed integer, dead integer, lost integer)
language sql volatile
set search_path = ''
as $$
-- results: [{"id", "started_at", "duration_ms", "status_code" | null, "error" | null,
--            "retry_after" (seconds, or null)}], one per attempt a worker finished under `token`.
-- One statement for the whole batch (a worker records dozens at a time).
with r as (
  select x.*
    from pg_catalog.jsonb_to_recordset(results)
         as x (id uuid, started_at timestamptz, duration_ms integer, status_code integer, error text,
               retry_after double precision)
), mine as (
  -- Only deliveries still leased to this worker: a lost lease is someone else's to record.
  select w.id, w.org_id, w.endpoint_id, w.event_id, w.attempts, r.started_at, r.duration_ms, r.status_code,
         r.error, r.retry_after, private.webhook_retry_delay(w.attempts) as step
    from public.webhook_deliveries w
    join r on r.id = w.id
   where w.lease_token = token
     for update of w
), judged as (
  select m.*,
         case when m.status_code between 200 and 299 then 'succeeded'
              when m.status_code = 410 or m.step is null then 'dead'
              else 'failed' end as outcome,
         case when m.status_code in (429, 502, 503, 504) and m.retry_after is not null
              -- As told, bounded: never sooner than our schedule, never later than its longest step.
              then greatest(m.step, pg_catalog.make_interval(secs => least(greatest(m.retry_after, 1), 36000)))
              else m.step end as delay
    from mine m
), deliveries as (
  update public.webhook_deliveries w
     set status = j.outcome,
         delivered_at = case when j.outcome = 'succeeded' then pg_catalog.now() else w.delivered_at end,
         next_attempt_at = case when j.outcome = 'failed' then pg_catalog.now() + j.delay end,
         last_status_code = j.status_code,
         last_error = case when j.outcome <> 'succeeded'
                           then pg_catalog.left(coalesce(j.error, 'HTTP ' || j.status_code), 1000) end,
         locked_until = null, lease_token = null
    from judged j
   where w.id = j.id
), attempts as (
  insert into public.webhook_attempts (org_id, delivery_id, endpoint_id, event_id, attempt, started_at,
                                       duration_ms, status_code, error, outcome)
  select j.org_id, j.id, j.endpoint_id, j.event_id, j.attempts, j.started_at, j.duration_ms, j.status_code,
         pg_catalog.left(j.error, 1000), j.outcome
    from judged j
), per_endpoint as (
  select j.endpoint_id,
         bool_or(j.outcome = 'succeeded') as any_success,
         coalesce(bool_or(j.status_code = 410), false) as gone,  -- no answer: status_code null
         min(j.started_at) filter (where j.outcome <> 'succeeded') as first_failure
    from judged j
   group by j.endpoint_id
), endpoints as (
  -- A success anywhere in the batch: healthy. Else 410: disabled. Else the five-day rule.
  update public.webhook_endpoints e
     set last_success_at = case when p.any_success then pg_catalog.now() else e.last_success_at end,
         failing_since = case when p.any_success then null
                              else coalesce(e.failing_since, p.first_failure) end,
         enabled = e.enabled and not p.gone
                   and (p.any_success or coalesce(e.failing_since, p.first_failure) >= pg_catalog.now() - interval '5 days'),
         disabled_reason = case
           when not e.enabled then e.disabled_reason
           when p.gone then 'the endpoint answered 410 Gone'
           when not p.any_success and coalesce(e.failing_since, p.first_failure) < pg_catalog.now() - interval '5 days'
             then 'no successful delivery for 5 days'
           else e.disabled_reason end
    from per_endpoint p
   where e.id = p.endpoint_id
     -- Healthy endpoints are touched at most once a minute (every write is a dead tuple).
     and (not p.any_success or e.failing_since is not null or e.last_success_at is null
          or e.last_success_at < pg_catalog.now() - interval '1 minute')
)
select (count(*) filter (where j.outcome = 'succeeded'))::integer,
       (count(*) filter (where j.outcome = 'failed'))::integer,
       (count(*) filter (where j.outcome = 'dead'))::integer,
       (pg_catalog.jsonb_array_length(results) - count(*))::integer
  from judged j
$$;
comment on function private.webhook_record_attempts(uuid, jsonb) is
  'Records finished attempts of deliveries still leased under token: 2xx succeeded; 410 dead and the endpoint disabled; else failed on the retry schedule (Retry-After honoured on 429/502/503/504, bounded) or dead after the last step; an endpoint without success for 5 days is disabled. Every attempt goes to webhook_attempts.';
revoke all on function private.webhook_record_attempts(uuid, jsonb) from public;
grant execute on function private.webhook_record_attempts(uuid, jsonb) to service_role;
grant execute on function private.webhook_retry_delay(integer) to service_role;

-- ---------------------------------------------------------------------------------------------
-- purge-outbox
-- ---------------------------------------------------------------------------------------------
create or replace function private.purge_outbox(retention interval, batch integer)
returns table (deliveries integer, events integer)
language plpgsql volatile security definer
set search_path = ''
as $$
-- One small batch per call (short transactions, few locks); the job calls it until both are 0.
declare
  n_deliveries integer;
  n_events integer;
begin
  if retention is null or retention < interval '1 day' then
    raise sqlstate 'PT422' using message = 'retention must be at least 1 day', detail = 'retention_too_short',
      hint = 'retention';
  end if;
  delete from public.webhook_deliveries d
   where d.id in (select x.id from public.webhook_deliveries x
                   where x.status in ('succeeded', 'dead')
                     and x.created_at < pg_catalog.now() - retention
                     and coalesce(x.delivered_at, x.created_at) < pg_catalog.now() - retention
                   order by x.created_at
                   limit batch
                   for update skip locked);
  get diagnostics n_deliveries = row_count;
  delete from private.outbox o
   where o.id in (select x.id from private.outbox x
                   where x.created_at < pg_catalog.now() - retention
                     and not exists (select from private.outbox_fanout f where f.outbox_id = x.id)
                     and not exists (select from public.webhook_deliveries w
                                      where w.event_id = x.event_id and w.status in ('pending', 'failed'))
                   order by x.created_at
                   limit batch
                   for update skip locked);
  get diagnostics n_events = row_count;
  return query select n_deliveries, n_events;
end
$$;
comment on function private.purge_outbox(interval, integer) is
  'purge-outbox: deletes one batch of finished deliveries (with their attempts) and of outbox events without unfinished deliveries, both older than retention (at least 1 day). The only way deliveries are ever deleted; service_role only.';
revoke all on function private.purge_outbox(interval, integer) from public;
grant execute on function private.purge_outbox(interval, integer) to service_role;

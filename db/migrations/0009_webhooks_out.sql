-- Webhooks out (SPEC 8, 9): endpoints, their secrets, deliveries, every attempt, the fan-out queue.
--
-- Flow: an outbox insert also queues its id in private.outbox_fanout and NOTIFYs crm_outbox (trigger
-- in db/triggers/outbox.sql). dispatch-outbox (service_role) turns queued events into one
-- webhook_deliveries row per matching enabled endpoint of the event's org, claims due deliveries in
-- batches with one `for update skip locked` UPDATE that sets a lease, sends with no transaction
-- open, and records each attempt (private.webhook_record_attempts: the retry schedule, Retry-After,
-- 410 and the five-day rule live there). Functions in db/functions/webhooks.sql.
--
-- Secrets. The SQL RPCs (create_webhook_endpoint, rotate_webhook_secret) must return the new secret
-- to a PostgREST caller, but the database never sees CRM_SECRETS_KEY, so it cannot encrypt. Choices:
--   a) encrypt in the RPC with a key the database holds (pgcrypto)     -> the DB sees the key: no;
--   b) public-key encryption in SQL (pgp_pub_encrypt) with the private key only in the dispatcher
--                                                                       -> not AES-GCM as SPEC 9 asks,
--      and a second key to manage;
--   c) endpoints created only by a Python function holding the key      -> no PostgREST RPC: no;
--   d) the RPC generates the secret, returns it once, and parks it in private.webhook_secrets.pending;
--      the dispatcher (which holds the key) seals it (AES-GCM, pending := null) on first sight. The
--      RPC NOTIFYs crm_outbox, so a running worker seals it within milliseconds.
-- We take (d). Its window: until sealed, the plaintext is readable by the database owner in
-- private (never by an API role), and the dead tuple holding it stays in the heap until vacuum and
-- in WAL (archives, replicas' streams) for their retention. Run a worker (crm dev does) to keep the
-- first part short; rotate the secret if a WAL archive from that window leaks.

-- ---------------------------------------------------------------------------------------------
-- public.webhook_endpoints
-- ---------------------------------------------------------------------------------------------
create table public.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  url text not null,
  description text,
  event_types text[] not null default '{}',
  enabled boolean not null default true,
  disabled_reason text,
  disabled_at timestamptz,
  -- The five-day rule: the first failure since the last success.
  failing_since timestamptz,
  last_success_at timestamptz,
  -- Bumped on every rotation, so workers re-read the live secrets at once.
  secret_version integer not null default 1,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint webhook_endpoints_org_id_id_key unique (org_id, id),
  constraint webhook_endpoints_url_http check (url ~* '^https?://[^/?#]' and char_length(url) <= 2048),
  constraint webhook_endpoints_description_length check (char_length(description) <= 500),
  constraint webhook_endpoints_event_types_shape check (
    cardinality(event_types) <= 50
    and array_position(event_types, null) is null
    and array_to_string(event_types, ',') ~ '^([a-z][a-z_]*\.[a-z][a-z_]*(,|$))*$'),
  constraint webhook_endpoints_disabled_has_reason check (enabled or disabled_reason is not null),
  constraint webhook_endpoints_disabled_reason_length check (char_length(disabled_reason) <= 500)
);
comment on table public.webhook_endpoints is
  'Where an organization''s outbox events are POSTed (SPEC 9), signed as Standard Webhooks. Created by create_webhook_endpoint (admins); admins may change url, description, event_types and enabled. Secrets live in private.webhook_secrets, encrypted.';
comment on column public.webhook_endpoints.event_types is 'Event types delivered here; empty = every type.';
comment on column public.webhook_endpoints.enabled is
  'false: nothing is fanned out to it and its queued deliveries wait (next_attempt_at = infinity) until it is enabled again. The dispatcher disables on HTTP 410 and after 5 days without a success.';
comment on column public.webhook_endpoints.failing_since is 'First failed attempt since the last success; null while healthy.';

create index webhook_endpoints_org_enabled_idx on public.webhook_endpoints (org_id) where enabled;

-- ---------------------------------------------------------------------------------------------
-- private.webhook_secrets
-- ---------------------------------------------------------------------------------------------
create table private.webhook_secrets (
  id uuid primary key default gen_random_uuid(),
  endpoint_id uuid not null references public.webhook_endpoints (id) on delete cascade,
  -- AES-256-GCM under CRM_SECRETS_KEY: b'v1' || nonce(12) || ciphertext+tag, endpoint and secret id as AAD.
  sealed bytea,
  -- The plaintext `whsec_…` between the RPC and the dispatcher's first look (see the header).
  pending text,
  created_at timestamptz not null default now(),
  -- null = live; set by a rotation to now() + keep_old.
  expires_at timestamptz,
  constraint webhook_secrets_sealed_or_pending check (num_nonnulls(sealed, pending) = 1)
);
comment on table private.webhook_secrets is
  'Signing secrets of webhook endpoints, AES-GCM encrypted by the dispatcher (the database never sees CRM_SECRETS_KEY). Several are live during a rotation: every live one signs.';
create index webhook_secrets_endpoint_idx on private.webhook_secrets (endpoint_id);
create index webhook_secrets_pending_idx on private.webhook_secrets (created_at) where pending is not null;

-- ---------------------------------------------------------------------------------------------
-- private.outbox_fanout: outbox events not yet turned into deliveries
-- ---------------------------------------------------------------------------------------------
create table private.outbox_fanout (
  outbox_id bigint primary key references private.outbox (id) on delete cascade
) with (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_cost_delay = 0);
comment on table private.outbox_fanout is
  'Outbox events dispatch-outbox has not fanned out yet (filled by trigger, emptied in the transaction that creates their deliveries). Normally near empty.';

-- ---------------------------------------------------------------------------------------------
-- public.webhook_deliveries
-- ---------------------------------------------------------------------------------------------
-- Queue-table bloat control: every claim, lease renewal and result is an UPDATE, i.e. a dead tuple.
-- Claims and renewals touch only unindexed columns (locked_until, lease_token, attempts), and
-- fillfactor 70 leaves room on each page, so they are HOT updates that page pruning cleans without
-- index work; only the result (status, next_attempt_at) touches indexes. Autovacuum runs on a fixed
-- threshold instead of a fraction of a table, without cost-based naps; purge-outbox keeps the
-- table small; workers hold no transaction across the HTTP calls, so nothing pins the xmin horizon.
create table public.webhook_deliveries (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  endpoint_id uuid not null,
  event_id uuid not null,
  event_type text not null,
  status text not null default 'pending',
  attempts integer not null default 0,
  next_attempt_at timestamptz default now(),
  last_status_code integer,
  last_error text,
  created_at timestamptz not null default now(),
  delivered_at timestamptz,
  -- The lease of the worker sending it right now (null when no one is).
  locked_until timestamptz,
  lease_token uuid,
  -- An endpoint of org A can only hold deliveries of org A.
  constraint webhook_deliveries_endpoint_fkey foreign key (org_id, endpoint_id)
    references public.webhook_endpoints (org_id, id) on delete cascade,
  constraint webhook_deliveries_endpoint_event_key unique (endpoint_id, event_id),
  constraint webhook_deliveries_status_known check (status in ('pending', 'succeeded', 'failed', 'dead')),
  constraint webhook_deliveries_attempts_nonnegative check (attempts >= 0),
  constraint webhook_deliveries_scheduled check (status not in ('pending', 'failed') or next_attempt_at is not null),
  constraint webhook_deliveries_succeeded_when check (status <> 'succeeded' or delivered_at is not null),
  constraint webhook_deliveries_lease_pair check ((locked_until is null) = (lease_token is null)),
  constraint webhook_deliveries_last_error_length check (char_length(last_error) <= 1000)
) with (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000,
        autovacuum_analyze_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);
comment on table public.webhook_deliveries is
  'One row per (endpoint, outbox event): its state on the retry schedule (SPEC 9). No payloads. Admins read; written only by the dispatcher (service_role) and the admin RPCs.';
comment on column public.webhook_deliveries.status is
  'pending (not tried yet, or queued again), succeeded, failed (will retry at next_attempt_at), dead (out of attempts, or the endpoint answered 410).';
comment on column public.webhook_deliveries.next_attempt_at is
  'When a worker may send it (the retry time; infinity while its endpoint is disabled). A row is due when this has passed and no lease is running.';
comment on column public.webhook_deliveries.locked_until is
  'Lease of the worker sending it (renewed while the request runs); past it, another worker claims it again with the same webhook-id.';

create index webhook_deliveries_due_idx on public.webhook_deliveries (next_attempt_at)
  where status in ('pending', 'failed');
create index webhook_deliveries_org_created_idx on public.webhook_deliveries (org_id, created_at desc);
create index webhook_deliveries_endpoint_idx on public.webhook_deliveries (org_id, endpoint_id);
create index webhook_deliveries_event_idx on public.webhook_deliveries (event_id);
create index webhook_deliveries_finished_idx on public.webhook_deliveries (created_at)
  where status in ('succeeded', 'dead');

-- ---------------------------------------------------------------------------------------------
-- public.webhook_attempts: every attempt, for operators
-- ---------------------------------------------------------------------------------------------
create table public.webhook_attempts (
  id bigint generated always as identity primary key,
  org_id uuid not null,
  delivery_id uuid not null references public.webhook_deliveries (id) on delete cascade,
  endpoint_id uuid not null,
  event_id uuid not null,
  attempt integer not null,
  started_at timestamptz not null,
  duration_ms integer not null,
  status_code integer,
  error text,
  outcome text not null,
  created_at timestamptz not null default now(),
  constraint webhook_attempts_outcome_known check (outcome in ('succeeded', 'failed', 'dead')),
  constraint webhook_attempts_error_length check (char_length(error) <= 1000)
) with (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000);
comment on table public.webhook_attempts is
  'Every delivery attempt: when, how long, the HTTP status or the error, and what it led to. Admins read; written by the dispatcher.';
create index webhook_attempts_delivery_idx on public.webhook_attempts (delivery_id, attempt);
create index webhook_attempts_org_idx on public.webhook_attempts (org_id, created_at desc);

-- Purging the outbox must find events whose deliveries are all finished; the outbox is insert-only.
alter table private.outbox set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 5000);
create index outbox_created_idx on private.outbox (created_at);

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
alter table public.webhook_endpoints enable row level security;
alter table public.webhook_deliveries enable row level security;
alter table public.webhook_attempts enable row level security;
alter table private.webhook_secrets enable row level security;
alter table private.outbox_fanout enable row level security;

revoke all on public.webhook_endpoints, public.webhook_deliveries, public.webhook_attempts
  from anon, authenticated, service_role, public;
revoke all on private.webhook_secrets, private.outbox_fanout from anon, authenticated, service_role, public;
revoke all on sequence public.webhook_attempts_id_seq from anon, authenticated, public;

-- Admins change endpoints column by column; creation goes through create_webhook_endpoint (the
-- secret), and nobody deletes one (its deliveries are history): disable it instead.
grant select on public.webhook_endpoints to authenticated;
grant update (url, description, event_types, enabled) on public.webhook_endpoints to authenticated;
grant select on public.webhook_deliveries, public.webhook_attempts to authenticated;

-- The dispatcher (service_role, bypasses RLS): fan out, claim, record; no deletes (purge-outbox
-- deletes through private.purge_outbox only).
grant select, update on public.webhook_endpoints to service_role;
grant select, insert, update on public.webhook_deliveries to service_role;
grant select, insert on public.webhook_attempts to service_role;
grant select on private.outbox to service_role;
grant select, update, delete on private.outbox_fanout to service_role;  -- FOR UPDATE needs UPDATE
grant select, update (sealed, pending) on private.webhook_secrets to service_role;

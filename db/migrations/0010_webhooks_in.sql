-- Webhooks in (SPEC 10, 11): integrations and their sealed secrets, the inbound-event inbox,
-- the inventory cache, activities and the timeline.
--
-- Flow: POST /webhooks/{source}/{org} (service_role) reads the integration and its live secrets
-- (private.inbox_integration), verifies the raw bytes in Python, then hands the verified events to
-- private.inbox_receive: one row per (integration, event id) in private.inbound_events (a repeated
-- delivery inserts nothing and changes nothing), processed in the same transaction when that needs
-- no outside call (wms, twilio), inside a savepoint: a failure is recorded on the row (status
-- failed, error, next_attempt_at) and the event is still kept. process-inbox claims due rows
-- (`for update skip locked` with a lease), fetches what they need (Meta's Graph API) and finishes
-- them with backoff, then `dead`. Functions in db/functions/inbox.sql and db/functions/customers.sql.
--
-- Secrets: as webhook endpoint secrets (the migration of webhook_endpoints explains the choice): the
-- RPCs park a new value in private.integration_secrets.pending and return it once; a worker
-- holding CRM_SECRETS_KEY seals it (AES-GCM, pending := null) on first sight.

-- ---------------------------------------------------------------------------------------------
-- public.integrations
-- ---------------------------------------------------------------------------------------------
create table public.integrations (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  kind text not null,
  enabled boolean not null default true,
  settings jsonb not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint integrations_org_id_id_key unique (org_id, id),
  constraint integrations_org_kind_key unique (org_id, kind),
  constraint integrations_kind_known check (kind in ('wms', 'twilio', 'meta')),
  constraint integrations_settings_object check (jsonb_typeof(settings) = 'object' and pg_column_size(settings) <= 8192),
  constraint integrations_settings_without_secrets check (
    not settings ?| array['webhook_secret', 'api_key', 'auth_token', 'app_secret', 'page_access_token'])
);
comment on table public.integrations is
  'Inbound sources of an organization (SPEC 10): one per kind; enabled is the feature flag (disabled: POST /webhooks answers 404 and stores nothing). Created by create_integration (admins); admins change enabled and settings; secrets live in private.integration_secrets, encrypted.';
comment on column public.integrations.settings is
  'Non-secret settings by kind: wms base_url; meta verify_token. Secrets are refused here (CHECK).';

-- ---------------------------------------------------------------------------------------------
-- private.integration_secrets
-- ---------------------------------------------------------------------------------------------
create table private.integration_secrets (
  id uuid primary key default gen_random_uuid(),
  integration_id uuid not null references public.integrations (id) on delete cascade,
  name text not null,
  -- AES-256-GCM under CRM_SECRETS_KEY: b'v1' || nonce(12) || ciphertext+tag, 'integration:<id>:<secret id>' as AAD.
  sealed bytea,
  -- The plaintext between the RPC and a worker's first look (see the header).
  pending text,
  created_at timestamptz not null default now(),
  -- null = live; a rotation sets the old one's to now() + keep_old.
  expires_at timestamptz,
  constraint integration_secrets_sealed_or_pending check (num_nonnulls(sealed, pending) = 1),
  constraint integration_secrets_name_known check (
    name in ('webhook_secret', 'api_key', 'auth_token', 'app_secret', 'page_access_token')),
  constraint integration_secrets_pending_length check (char_length(pending) between 1 and 4096)
);
comment on table private.integration_secrets is
  'Secrets of integrations, AES-GCM encrypted by a worker (the database never sees CRM_SECRETS_KEY). Several values of one name are live during a rotation: the receiver tries each.';
create index integration_secrets_integration_idx on private.integration_secrets (integration_id, name);
create index integration_secrets_pending_idx on private.integration_secrets (created_at) where pending is not null;

-- ---------------------------------------------------------------------------------------------
-- private.inbound_events: the inbox
-- ---------------------------------------------------------------------------------------------
create table private.inbound_events (
  id bigint generated always as identity primary key,
  org_id uuid not null,
  integration_id uuid not null,
  source text not null,
  event_id text not null,
  event_type text not null,
  payload jsonb not null,
  status text not null default 'pending',
  attempts integer not null default 0,
  next_attempt_at timestamptz,
  locked_until timestamptz,
  error text,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  constraint inbound_events_integration_fkey foreign key (org_id, integration_id)
    references public.integrations (org_id, id) on delete cascade,
  constraint inbound_events_integration_event_key unique (integration_id, event_id),
  constraint inbound_events_source_known check (source in ('wms', 'twilio', 'meta')),
  constraint inbound_events_event_id_length check (char_length(event_id) between 1 and 300),
  constraint inbound_events_event_type_length check (char_length(event_type) between 1 and 100),
  constraint inbound_events_status_known check (status in ('pending', 'processed', 'ignored', 'failed', 'dead')),
  constraint inbound_events_scheduled check (status not in ('pending', 'failed') or next_attempt_at is not null),
  constraint inbound_events_attempts_nonnegative check (attempts >= 0),
  constraint inbound_events_error_length check (char_length(error) <= 1000)
) with (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 2000);
comment on table private.inbound_events is
  'Every verified inbound event, once per (integration, event id) (SPEC 10). status: pending (waits for process-inbox), processed, ignored (nothing to do, error says why), failed (retried at next_attempt_at), dead (out of attempts). Nothing verified is lost.';
comment on column private.inbound_events.payload is
  'personal: the event as the source sent it (numbers, names); erase_customer empties those of an erased customer''s activities.';
create index inbound_events_due_idx on private.inbound_events (next_attempt_at) where status in ('pending', 'failed');
create index inbound_events_org_integration_idx on private.inbound_events (org_id, integration_id, received_at desc);

-- ---------------------------------------------------------------------------------------------
-- public.inventory_items (SPEC 11: the warehouse's stock, cached)
-- ---------------------------------------------------------------------------------------------
create table public.inventory_items (
  org_id uuid not null references public.organizations (id) on delete cascade,
  sku text not null,
  name text,
  attributes jsonb not null default '{}',
  available numeric,
  reserved numeric,
  total numeric,
  unit text,
  source_updated_at timestamptz,
  cached_at timestamptz not null default now(),
  constraint inventory_items_pkey primary key (org_id, sku),
  constraint inventory_items_sku_length check (char_length(sku) between 1 and 200),
  constraint inventory_items_name_length check (char_length(name) <= 500),
  constraint inventory_items_unit_length check (char_length(unit) <= 50),
  constraint inventory_items_attributes_object check (jsonb_typeof(attributes) = 'object')
);
comment on table public.inventory_items is
  'Cache of the warehouse''s inventory (SPEC 11), one row per org and sku. Staff read; written by webhooks and reconciliation only. An update older than source_updated_at never overwrites newer data.';

-- ---------------------------------------------------------------------------------------------
-- public.activities and the timeline
-- ---------------------------------------------------------------------------------------------
create table public.activities (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  customer_id uuid,
  lead_id uuid,
  order_id uuid,
  kind text not null,
  occurred_at timestamptz not null default now(),
  summary text not null,
  data jsonb not null default '{}',
  created_by uuid default auth.uid(),
  created_at timestamptz not null default now(),
  -- Where an integration's activity came from (e.g. a call's CallSid): one activity per source thing.
  source_ref text,
  constraint activities_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint activities_lead_fkey foreign key (org_id, lead_id)
    references public.leads (org_id, id) on delete cascade,
  constraint activities_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade,
  constraint activities_kind_known check (kind in ('call', 'ad_lead', 'wms_event', 'note', 'import')),
  constraint activities_subject_required check (num_nonnulls(customer_id, lead_id, order_id) >= 1),
  constraint activities_summary_length check (char_length(btrim(summary)) between 1 and 2000),
  constraint activities_data_object check (jsonb_typeof(data) = 'object' and pg_column_size(data) <= 65536),
  constraint activities_source_ref_length check (char_length(source_ref) <= 300)
);
comment on table public.activities is
  'What happened with a customer, lead or order besides status changes (SPEC 10): calls, ad leads, warehouse events, notes. Staff read; staff (not viewers; agents on their own leads) add notes; integrations add the rest; nobody deletes or edits one.';
comment on column public.activities.summary is 'personal: free text; shown on the timeline.';
comment on column public.activities.data is 'personal: what the source said (call numbers, lead form fields).';
create index activities_org_customer_idx on public.activities (org_id, customer_id, occurred_at) where customer_id is not null;
create index activities_org_lead_idx on public.activities (org_id, lead_id, occurred_at) where lead_id is not null;
create index activities_org_order_idx on public.activities (org_id, order_id, occurred_at) where order_id is not null;
create unique index activities_source_ref_key on public.activities (org_id, kind, source_ref) where source_ref is not null;

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
alter table public.integrations enable row level security;
alter table public.inventory_items enable row level security;
alter table public.activities enable row level security;
alter table private.integration_secrets enable row level security;
alter table private.inbound_events enable row level security;

revoke all on public.integrations, public.inventory_items, public.activities
  from anon, authenticated, service_role, public;
revoke all on private.integration_secrets, private.inbound_events from anon, authenticated, service_role, public;
revoke all on sequence private.inbound_events_id_seq from anon, authenticated, service_role, public;

-- Integrations: created through create_integration (its secrets); admins change the flag and the
-- settings (policies); nobody deletes one through the API (its inbound events are history).
grant select on public.integrations to authenticated, service_role;
grant update (enabled, settings) on public.integrations to authenticated;
-- Caches: staff read, written by definer functions of the inbox and reconciliation.
grant select on public.inventory_items to authenticated, service_role;
-- Activities: staff read and add notes (policies); no update, no delete for anyone.
grant select on public.activities to authenticated, service_role;
grant insert (org_id, customer_id, lead_id, order_id, kind, occurred_at, summary, data)
  on public.activities to authenticated;
-- Workers (service_role) seal what the RPCs parked; everything else goes through definer functions.
grant select, update (sealed, pending) on private.integration_secrets to service_role;

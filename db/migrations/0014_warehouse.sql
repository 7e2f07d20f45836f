-- Warehouse integration (SPEC 11): reconciliation runs of the warehouse caches and API keys for
-- machine clients. The caches themselves (public.inventory_items, public.wms_orders) and the wms
-- integration with its sealed api_key come from earlier migrations; functions live in
-- db/functions/warehouse.sql, policies in db/policies/api_keys.sql.
--
-- Reconciliation (reconcile-inventory, reconcile-wms-orders) pages through the warehouse API with no
-- transaction open during an HTTP call; each page is compared and healed in one short transaction
-- (so a source failing mid-run leaves the cache as it was plus what was healed). A run holds a
-- lease on its private.sync_runs row (heartbeat_at), not a session lock: at most one running run
-- per integration and sync type (partial unique index), and every page transaction takes a
-- transaction-scoped advisory lock, so two runs never interleave, also behind a transaction pooler.
-- Keys seen in a run go to private.sync_run_seen (an array per page); extra cache rows are found at
-- the end of a complete pass only.

-- ---------------------------------------------------------------------------------------------
-- private.sync_runs
-- ---------------------------------------------------------------------------------------------
create table private.sync_runs (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null,
  integration_id uuid not null,
  sync_type text not null,
  status text not null default 'running',
  started_at timestamptz not null default now(),
  completed_at timestamptz,
  heartbeat_at timestamptz not null default now(),
  pages integer not null default 0,
  -- The cursor that fetched the last page done: where a failed run stopped.
  last_cursor text,
  -- null: a full pass (extra rows are judged at its end); else only what the source changed since
  -- then (reconcile-wms-orders between its daily full passes: `updated_since`).
  updated_since timestamptz,
  records_checked integer not null default 0,
  records_synced integer not null default 0,
  records_failed integer not null default 0,
  -- {"counts": {"missing", "stale", "extra", "invalid", "newer_in_cache"}, "fields": {field: n},
  --  "items": [{"key", "kind", "fields": {field: {"cache", "source"}}}, ...] (first 500), "truncated"}
  discrepancies jsonb not null default
    '{"counts": {"missing": 0, "stale": 0, "extra": 0, "invalid": 0, "newer_in_cache": 0}, "fields": {}, "items": [], "truncated": false}',
  error text,
  -- Where a failed run stopped: {"page": n, "cursor": "..."}.
  failed_at jsonb,
  constraint sync_runs_integration_fkey foreign key (org_id, integration_id)
    references public.integrations (org_id, id) on delete cascade,
  constraint sync_runs_sync_type_known check (sync_type in ('inventory', 'wms_orders')),
  constraint sync_runs_status_known check (status in ('running', 'succeeded', 'failed')),
  constraint sync_runs_completed check ((status = 'running') = (completed_at is null)),
  constraint sync_runs_counts_nonnegative check (
    least(pages, records_checked, records_synced, records_failed) >= 0),
  constraint sync_runs_error_length check (char_length(error) <= 2000),
  constraint sync_runs_discrepancies_bounded check (pg_column_size(discrepancies) <= 1048576)
);
comment on table private.sync_runs is
  'One reconciliation run of a warehouse cache (SPEC 11): counts, field-level discrepancies (bounded: the first 500 items, all counts), and for a failed run the error and where it stopped. Admins read it through public.sync_run_reports.';
create unique index sync_runs_one_running_key on private.sync_runs (integration_id, sync_type)
  where status = 'running';
create index sync_runs_org_started_idx on private.sync_runs (org_id, started_at desc);
create index sync_runs_integration_fkey_idx on private.sync_runs (org_id, integration_id);

-- Keys a run has seen, one row per page (an array: a row per key cost more than the page's
-- comparison): the extra rows of the cache are those not seen by a complete pass. Unlogged: only a
-- running run needs them, and a crash fails the run anyway. No foreign key: the run's end deletes
-- the run's rows.
create unlogged table private.sync_run_seen (
  run_id uuid not null,
  keys text[] not null
) with (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 500);
comment on table private.sync_run_seen is
  'Keys (sku, wms_order_id) seen by a running reconciliation, one row per page; emptied when the run ends.';
create index sync_run_seen_run_idx on private.sync_run_seen (run_id);

-- Reconciliation rewrites few rows, webhooks many: leave room for HOT updates.
alter table public.inventory_items set (fillfactor = 90);
alter table public.wms_orders set (fillfactor = 90);

-- ---------------------------------------------------------------------------------------------
-- API keys (machine clients, e.g. the warehouse calling functions/api)
-- ---------------------------------------------------------------------------------------------
create table public.api_keys (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  name text not null,
  -- The key's first characters ('crm_' + 8), to tell keys apart in lists and logs; not a secret.
  prefix text not null,
  scopes text[] not null,
  created_by uuid references auth.users (id) on delete set null,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  revoked_at timestamptz,
  last_used_at timestamptz,
  constraint api_keys_org_id_id_key unique (org_id, id),
  -- The text rules of every name (normalised, visible, no controls, at most 200 characters).
  constraint api_keys_name_clean check (hidden.is_clean_text(name, 'name')),
  constraint api_keys_prefix_shape check (prefix ~ '^crm_[A-Za-z0-9_-]{8}$'),
  constraint api_keys_scopes_known check (
    cardinality(scopes) >= 1 and scopes <@ array['customers:read', 'orders:read', 'leads:write']::text[])
);
comment on table public.api_keys is
  'Keys of machine clients (SPEC 11), without secrets: the key is shown once by create_api_key and only its SHA-256 is kept (private.api_key_hashes). Admins manage (create_api_key, revoke_api_key), managers read; nobody deletes one (revoked keys stay listed).';
comment on column public.api_keys.scopes is 'customers:read, orders:read, leads:write (checked in SQL on every request).';
comment on column public.api_keys.last_used_at is 'Last accepted request, to the minute (not written on every request).';
create index api_keys_org_idx on public.api_keys (org_id, created_at desc);
create index api_keys_created_by_idx on public.api_keys (created_by) where created_by is not null;

create table private.api_key_hashes (
  key_id uuid primary key references public.api_keys (id) on delete cascade,
  key_hash bytea not null,
  constraint api_key_hashes_hash_key unique (key_hash),
  constraint api_key_hashes_hash_length check (octet_length(key_hash) = 32)
);
comment on table private.api_key_hashes is 'SHA-256 of each API key (the key itself is never stored).';

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
alter table private.sync_runs enable row level security;
alter table private.sync_run_seen enable row level security;
alter table public.api_keys enable row level security;
alter table private.api_key_hashes enable row level security;

revoke all on private.sync_runs, private.sync_run_seen, private.api_key_hashes
  from anon, authenticated, service_role, public;
revoke all on public.api_keys from anon, authenticated, service_role, public;

-- Keys: listed by admins and managers (policies); created and revoked through the RPCs; admins may
-- rename one. service_role (functions/api) reads them; everything else through definer functions.
grant select on public.api_keys to authenticated, service_role;
grant update (name) on public.api_keys to authenticated;

-- Warehouse integration (SPEC 11): reconciliation runs (start, one page, finish, fail, purge), the
-- admins' view of them, and API keys (create, revoke, authenticate). Tables in the migrations that
-- created private.sync_runs. plpgsql where a body names RLS helpers (applied before db/policies/).

-- ---------------------------------------------------------------------------------------------
-- Reconciliation runs
-- ---------------------------------------------------------------------------------------------
-- A page is one statement per cache (sync_inventory_apply, sync_wms_orders_apply): the page's items
-- as typed rows against the cache rows of its key range (sync_apply: else a primary-key probe each),
-- only differing rows written, field-level detail only for those. What a page found waits in
-- private.sync_run_seen beside its range and the range's rows it left out (or its keys); the run's row takes
-- the counts as it goes and the items once, at its end (sync_run_end). Pages of one run may be
-- applied side by side (the run's lock shared): nothing a page writes depends on another page's
-- order, and the report's first 500 items are taken in page order at the end.
drop function if exists private.sync_run_touch(uuid);
drop function if exists private.sync_run_record(private.sync_runs, text, integer, integer, integer, jsonb, jsonb,
                                                 jsonb, boolean);
drop function if exists private.sync_apply(private.sync_runs, jsonb, integer);
drop function if exists private.sync_inventory_apply(private.sync_runs, jsonb, integer);
drop function if exists private.sync_wms_orders_apply(private.sync_runs, jsonb, integer);
drop function if exists private.sync_apply(private.sync_runs, jsonb, integer);
drop function if exists private.sync_inventory_apply(private.sync_runs, jsonb);
drop function if exists private.sync_wms_orders_apply(private.sync_runs, jsonb);

-- The small helpers a page calls are plpgsql: their plans are cached per connection, where an sql
-- function that cannot be inlined is planned again on every call (0.4 ms a page for these).
create or replace function private.jsonb_add_counts(a jsonb, b jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return (select coalesce(pg_catalog.jsonb_object_agg(k, coalesce((a ->> k)::bigint, 0) + coalesce((b ->> k)::bigint, 0)), '{}')
            from (select pg_catalog.jsonb_object_keys(coalesce(a, '{}'))
                  union select pg_catalog.jsonb_object_keys(coalesce(b, '{}'))) x(k));
end
$$;
comment on function private.jsonb_add_counts(jsonb, jsonb) is '{"a": 1} + {"a": 2, "b": 1} = {"a": 3, "b": 1}.';
revoke all on function private.jsonb_add_counts(jsonb, jsonb) from public;

drop function if exists private.sync_run_lock(uuid, text);
create or replace function private.sync_run_lock(integration_id uuid, sync_type text, shared boolean default false)
returns void
language plpgsql volatile
set search_path = ''
as $$
begin
  -- Transaction-scoped (nothing session-level: CRM_DB_POOLER=transaction): held by the start, the
  -- end and the purge, and shared by each page transaction, so two runs' writes never interleave
  -- for one integration (a page writes only while its run is running, which only changes under
  -- the exclusive lock) while one run's pages may go side by side.
  if shared then
    perform pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('crm.sync:' || sync_type),
                                                    pg_catalog.hashtext(integration_id::text));
  else
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crm.sync:' || sync_type),
                                             pg_catalog.hashtext(integration_id::text));
  end if;
end
$$;
revoke all on function private.sync_run_lock(uuid, text, boolean) from public;

create or replace function private.sync_run_found(p_run_id uuid, room integer)
returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_agg(t.e order by t.page, t.n), '[]')
    from (select s.page, x.e, x.n
            from private.sync_run_seen s, pg_catalog.jsonb_array_elements(s.found) with ordinality x(e, n)
           where s.run_id = p_run_id
           order by s.page, x.n
           limit greatest(room, 0)) t
$$;
comment on function private.sync_run_found(uuid, integer) is
  'The first `room` discrepancy items a running run has found, in page order (each page keeps at least its share of the first 500).';
revoke all on function private.sync_run_found(uuid, integer) from public;

create or replace function private.sync_run_end(run private.sync_runs, p_status text, p_error text, p_failed_at jsonb,
                                                extra text[])
returns private.sync_runs
language plpgsql volatile
set search_path = ''
as $$
declare
  kept jsonb := coalesce(run.discrepancies -> 'items', '[]');
  counts jsonb := private.jsonb_add_counts(run.discrepancies -> 'counts',
                                           pg_catalog.jsonb_build_object('extra', pg_catalog.cardinality(extra)));
  ended private.sync_runs;
begin
  kept := kept || private.sync_run_found(run.id, 500 - pg_catalog.jsonb_array_length(kept));
  kept := kept || (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('key', k, 'kind', 'extra')
                                                        order by i), '[]')
                     from pg_catalog.unnest(extra) with ordinality u(k, i)
                    where i <= 500 - pg_catalog.jsonb_array_length(kept));
  update private.sync_runs r
     set status = p_status, completed_at = pg_catalog.now(), heartbeat_at = pg_catalog.now(),
         error = left(p_error, 2000), failed_at = p_failed_at,
         records_synced = r.records_synced + pg_catalog.cardinality(extra),
         discrepancies = pg_catalog.jsonb_build_object(
           'counts', counts,
           'fields', r.discrepancies -> 'fields',
           'items', kept,
           -- Every counted discrepancy is an item until the report holds 500.
           'truncated', (select coalesce(pg_catalog.sum(x.n::bigint), 0) > 500
                           from pg_catalog.jsonb_each_text(counts) x(k, n)))
   where r.id = run.id
  returning * into ended;
  delete from private.sync_run_seen s where s.run_id = run.id;
  return ended;
end
$$;
comment on function private.sync_run_end(private.sync_runs, text, text, jsonb, text[]) is
  'End a run (succeeded or failed): its items found page by page, then the extra keys, go to discrepancies (the first 500); its seen keys go.';
revoke all on function private.sync_run_end(private.sync_runs, text, text, jsonb, text[]) from public;

-- The run, locked for this transaction (shared: a page), if it is still running (else null).
create or replace function private.sync_run_locked(p_run_id uuid, shared boolean default false)
returns private.sync_runs
language plpgsql volatile
set search_path = ''
as $$
declare
  run private.sync_runs;
begin
  select r.* into run from private.sync_runs r where r.id = p_run_id;
  if not found then
    return null;
  end if;
  perform private.sync_run_lock(run.integration_id, run.sync_type, shared);
  select r.* into run from private.sync_runs r where r.id = p_run_id and r.status = 'running';
  return run;
end
$$;
revoke all on function private.sync_run_locked(uuid, boolean) from public;

drop function if exists private.sync_run_start(uuid, text, interval);
create or replace function private.sync_run_start(p_integration_id uuid, p_sync_type text,
                                                  p_lease interval default '5 minutes',
                                                  p_full_every interval default null)
returns setof private.sync_runs
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  integ public.integrations;
  stale private.sync_runs;
  last_full timestamptz;
  v_since timestamptz;
begin
  select i.* into integ from public.integrations i where i.id = p_integration_id;
  if not found then
    raise sqlstate 'PT404' using message = 'integration not found', detail = 'not_found';
  end if;
  perform private.sync_run_lock(integ.id, p_sync_type);
  -- A run whose worker died (no page for longer than the lease) is failed, so the next one can go.
  for stale in select r.* from private.sync_runs r
                where r.integration_id = integ.id and r.sync_type = p_sync_type and r.status = 'running'
                  and r.heartbeat_at < pg_catalog.now() - p_lease loop
    perform private.sync_run_end(stale, 'failed',
                                 'abandoned: no progress since ' || stale.heartbeat_at || ' (page ' || stale.pages || ')',
                                 pg_catalog.jsonb_build_object('page', stale.pages + 1, 'cursor', stale.last_cursor),
                                 '{}');
  end loop;
  if exists (select from private.sync_runs r
              where r.integration_id = integ.id and r.sync_type = p_sync_type and r.status = 'running') then
    return;  -- another run is under way: nothing to do
  end if;
  -- Between full passes (at most p_full_every apart) only what changed since the last success,
  -- with ten minutes of look-back for clocks and transactions that committed late.
  if p_full_every is not null then
    select max(r.started_at) into last_full from private.sync_runs r
     where r.integration_id = integ.id and r.sync_type = p_sync_type and r.status = 'succeeded'
       and r.updated_since is null;
    if last_full > pg_catalog.now() - p_full_every then
      select max(r.started_at) - interval '10 minutes' into v_since from private.sync_runs r
       where r.integration_id = integ.id and r.sync_type = p_sync_type and r.status = 'succeeded';
    end if;
  end if;
  return query
    insert into private.sync_runs (org_id, integration_id, sync_type, updated_since)
    values (integ.org_id, integ.id, p_sync_type, v_since)
    returning *;
end
$$;
comment on function private.sync_run_start(uuid, text, interval, interval) is
  'A new running reconciliation of one integration''s cache, or no row when another is running (after failing one that made no progress within the lease). With p_full_every, a run within that time of the last successful full pass only asks for what changed (updated_since).';
revoke all on function private.sync_run_start(uuid, text, interval, interval) from public;
grant execute on function private.sync_run_start(uuid, text, interval, interval) to service_role;

create or replace function private.sync_runs_purge(p_integration_id uuid, p_sync_type text, p_keep integer,
                                                   p_max_age interval default null)
returns integer
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  n integer;
begin
  if p_keep is null or p_keep < 1 then
    raise sqlstate 'PT422' using message = 'keep must be at least 1 run', detail = 'keep_too_small', hint = 'keep';
  end if;
  perform private.sync_run_lock(p_integration_id, p_sync_type);
  with ranked as (
    select r.id, r.status, r.started_at, r.updated_since,
           pg_catalog.row_number() over (order by r.started_at desc, r.id desc) as nth
      from private.sync_runs r
     where r.integration_id = p_integration_id and r.sync_type = p_sync_type
  ), anchors as (
    -- sync_run_start reads these two: the last success and the last successful full pass.
    (select x.id from ranked x where x.status = 'succeeded' order by x.started_at desc limit 1)
    union all
    (select x.id from ranked x where x.status = 'succeeded' and x.updated_since is null
      order by x.started_at desc limit 1)
  ), gone as (
    delete from private.sync_runs r
     using ranked x
     where r.id = x.id and x.status <> 'running'
       and (x.nth > p_keep or x.started_at < pg_catalog.now() - p_max_age)
       and not exists (select from anchors a where a.id = x.id)
    returning r.id)
  select pg_catalog.count(*) into n from gone;
  return n;
end
$$;
comment on function private.sync_runs_purge(uuid, text, integer, interval) is
  'Retention of reconciliation runs: deletes the finished runs of one integration and kind beyond the newest p_keep, or older than p_max_age, but never the last success nor the last successful full pass (the next run starts from them). Returns how many.';
revoke all on function private.sync_runs_purge(uuid, text, integer, interval) from public;
grant execute on function private.sync_runs_purge(uuid, text, integer, interval) to service_role;

-- Field by field, what differs between a cache row and a source item (both as jsonb, the item
-- named as the cache's columns): {field: {cache, source}}, updated_at for source_updated_at.
create or replace function private.sync_row_diff(cache jsonb, source jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return (select pg_catalog.jsonb_object_agg(case k when 'source_updated_at' then 'updated_at' else k end,
                                             pg_catalog.jsonb_build_object('cache', cache -> k, 'source', source -> k))
            from pg_catalog.jsonb_object_keys(source) k
           where (cache -> k) is distinct from (source -> k));
end
$$;
revoke all on function private.sync_row_diff(jsonb, jsonb) from public;

-- The two caches' pages share their rules through these (their statements differ only in the
-- columns and the table: one statement for both would be dynamic SQL, planned again on every
-- page, which cost more than the page). One-expression SQL without `set search_path`, so the
-- planner inlines them (as db/migrations/0015_inline_sql_helpers.sql explains: invoker, every name
-- qualified).
create or replace function private.sync_source_wins(source_at timestamptz, cache_at timestamptz)
returns boolean
language sql immutable
as $$
  select cache_at is null or (source_at is not null and source_at >= cache_at)
$$;
comment on function private.sync_source_wins(timestamptz, timestamptz) is
  'Last writer by the source''s updated_at, never by arrival: may the source''s version (updated at source_at) replace the cache''s (updated at cache_at)? A cache row newer than the source (a webhook that came in after the page was served) stays.';
revoke all on function private.sync_source_wins(timestamptz, timestamptz) from public;

create or replace function private.sync_found(key text, missing boolean, older boolean, cache jsonb, source jsonb)
returns jsonb
language sql immutable
as $$
  select pg_catalog.jsonb_build_object(
           'key', key,
           'kind', case when missing then 'missing' when older then 'newer_in_cache' else 'stale' end,
           'fields', case when not missing then private.sync_row_diff(cache, source) end)
$$;
comment on function private.sync_found(text, boolean, boolean, jsonb, jsonb) is
  'A discrepancy item of a page: {key, kind (missing, stale, newer_in_cache), fields} from the cache row and the source item (as jsonb, named as the cache''s columns).';
revoke all on function private.sync_found(text, boolean, boolean, jsonb, jsonb) from public;

-- What one page found (`diffs`: [{key, kind, fields or null}] or null): counts by kind, a tally of
-- the stale fields, the first `room` items by key (without "fields" where there are none).
create or replace function private.sync_page_result(checked bigint, synced bigint, diffs jsonb, room integer)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return (with d as (
    select case when e -> 'fields' = 'null' then e - 'fields' else e end as d
      from pg_catalog.jsonb_array_elements(coalesce(diffs, '[]')) e
  )
  select pg_catalog.jsonb_build_object(
           'checked', checked,
           'synced', synced,
           'counts', (select pg_catalog.jsonb_build_object(
                               'missing', pg_catalog.count(*) filter (where x.d ->> 'kind' = 'missing'),
                               'stale', pg_catalog.count(*) filter (where x.d ->> 'kind' = 'stale'),
                               'newer_in_cache', pg_catalog.count(*) filter (where x.d ->> 'kind' = 'newer_in_cache'))
                        from d x),
           'fields', (select coalesce(pg_catalog.jsonb_object_agg(k, n), '{}')
                        from (select k, pg_catalog.count(*) as n
                                from d x, pg_catalog.jsonb_object_keys(coalesce(x.d -> 'fields', '{}')) k
                               where x.d ->> 'kind' = 'stale' group by k) t),
           'items', (select coalesce(pg_catalog.jsonb_agg(t.d order by t.d ->> 'key'), '[]')
                       from (select x.d from d x order by x.d ->> 'key' limit greatest(room, 0)) t)));
end
$$;
revoke all on function private.sync_page_result(bigint, bigint, jsonb, integer) from public;

-- One page of inventory items, assumed well-formed (the caller falls back to one item at a time):
-- how many it checked and healed, the keys it listed, the discrepancies it found. Last writer by
-- the source's updated_at (sync_source_wins): a cache row newer than the source is left alone and
-- counted as newer_in_cache.
create or replace function private.sync_inventory_apply(run private.sync_runs, items jsonb, lo text, hi text,
                                                        out checked bigint, out synced bigint, out keys text[],
                                                        out gone text[], out diffs jsonb)
language plpgsql volatile
set search_path = ''
as $$
-- plpgsql, not sql: its statement's plan is cached per connection (an sql function with this many
-- CTEs is planned again on every call, which cost more than the page itself).
begin
    with src as (
      -- Named as the cache's columns. Values read as jsonb_to_recordset would (a JSON null is
      -- NULL, numbers and times through their text), a little faster. The newest of a key twice
      -- in a page wins; bytewise order is enough for that ("C": no locale comparisons).
      select distinct on (x.sku collate "C") x.*
        from (select e ->> 'sku' as sku, e ->> 'name' as name,
                     coalesce(nullif(e -> 'attributes', 'null'), '{}') as attributes,
                     (e ->> 'available')::numeric as available, (e ->> 'reserved')::numeric as reserved,
                     (e ->> 'total')::numeric as total, e ->> 'unit' as unit,
                     (e ->> 'updated_at')::timestamptz as source_updated_at, true as listed
                from pg_catalog.jsonb_array_elements(items) e) x
       order by x.sku collate "C", x.source_updated_at desc nulls last
    ), cache as (
      -- A page in key order: the cache rows of its key range, one index range scan (lo, hi: its
      -- first and last key).
      select i.* from public.inventory_items i
       where lo is not null and i.org_id = run.org_id and i.sku >= lo and i.sku <= hi
      union all
      -- Else one primary-key probe per item. Lateral with a limit (never flattened into a join),
      -- whatever the statistics say: a hash join would scan the organization's whole cache.
      select c.* from src s
        cross join lateral (select i.* from public.inventory_items i
                             where i.org_id = run.org_id and i.sku = s.sku limit 1) c
       where lo is null
    ), cmp as (
      -- listed: an item of the page; else a cache row of the range the page did not list. Plain
      -- columns, no whole-row values: a row value per item and cache row, read back field by field,
      -- cost 5 % of this statement's CPU.
      select coalesce(s.sku, c.sku) as key, coalesce(s.listed, false) as listed, c.sku is null as missing,
             s.name, s.attributes, s.available, s.reserved, s.total, s.unit, s.source_updated_at,
             c.name as c_name, c.attributes as c_attributes, c.available as c_available, c.reserved as c_reserved,
             c.total as c_total, c.unit as c_unit, c.source_updated_at as c_source_updated_at,
             c.cached_at as c_cached_at,
             (c.name, c.attributes, c.available, c.reserved, c.total, c.unit, c.source_updated_at)
               is distinct from (s.name, s.attributes, s.available, s.reserved, s.total, s.unit, s.source_updated_at)
               as differs,
             not private.sync_source_wins(s.source_updated_at, c.source_updated_at) as older
        from src s
        full join cache c on c.sku = s.sku
    ), heal as (
      insert into public.inventory_items as i (org_id, sku, name, attributes, available, reserved, total, unit,
                                               source_updated_at, cached_at)
      select run.org_id, x.key, x.name, x.attributes, x.available, x.reserved, x.total, x.unit, x.source_updated_at,
             pg_catalog.now()
        from cmp x
       where x.listed and (x.missing or (x.differs and not x.older))
      on conflict on constraint inventory_items_pkey do update
         set name = excluded.name, attributes = excluded.attributes, available = excluded.available,
             reserved = excluded.reserved, total = excluded.total, unit = excluded.unit,
             source_updated_at = excluded.source_updated_at, cached_at = excluded.cached_at
       where private.sync_source_wins(excluded.source_updated_at, i.source_updated_at)
      returning 1
    )
    select pg_catalog.count(*) filter (where x.listed), (select pg_catalog.count(*) from heal),
           case when lo is null then coalesce(pg_catalog.array_agg(x.key) filter (where x.listed), '{}') else '{}' end,
           coalesce(pg_catalog.array_agg(x.key) filter (where not x.listed and x.c_cached_at < run.started_at), '{}'),
           pg_catalog.jsonb_agg(private.sync_found(
             x.key, x.missing, x.older,
             case when not x.missing then pg_catalog.jsonb_build_object(
               'sku', x.key, 'name', x.c_name, 'attributes', x.c_attributes, 'available', x.c_available,
               'reserved', x.c_reserved, 'total', x.c_total, 'unit', x.c_unit,
               'source_updated_at', x.c_source_updated_at) end,
             pg_catalog.jsonb_build_object(
               'sku', x.key, 'name', x.name, 'attributes', x.attributes, 'available', x.available,
               'reserved', x.reserved, 'total', x.total, 'unit', x.unit, 'source_updated_at', x.source_updated_at)))
             filter (where x.listed and (x.missing or x.differs))
      from cmp x
      into checked, synced, keys, gone, diffs;
end
$$;
revoke all on function private.sync_inventory_apply(private.sync_runs, jsonb, text, text) from public;

-- One page of warehouse orders, as sync_inventory_apply. The source is the truth for every field;
-- our order learns the warehouse's id as the webhooks teach it (unless another order has it).
create or replace function private.sync_wms_orders_apply(run private.sync_runs, items jsonb, lo text, hi text,
                                                         out checked bigint, out synced bigint, out keys text[],
                                                         out gone text[], out diffs jsonb)
language plpgsql volatile
set search_path = ''
as $$
begin
    with src as (
      select distinct on (x.wms_order_id collate "C") x.*
        from (select e ->> 'wms_order_id' as wms_order_id, private.inbox_uuid(e ->> 'crm_customer_id') as crm_customer_id,
                     private.inbox_uuid(e ->> 'crm_order_id') as crm_order_id, e ->> 'status' as status,
                     coalesce(nullif(e -> 'lines', 'null'), '[]') as lines, nullif(e -> 'shipment', 'null') as shipment,
                     (e ->> 'updated_at')::timestamptz as source_updated_at, true as listed
                from pg_catalog.jsonb_array_elements(items) e) x
       order by x.wms_order_id collate "C", x.source_updated_at desc nulls last
    ), cache as (
      select w.* from public.wms_orders w
       where lo is not null and w.org_id = run.org_id and w.wms_order_id >= lo and w.wms_order_id <= hi
      union all
      select c.* from src s
        cross join lateral (select w.* from public.wms_orders w
                             where w.org_id = run.org_id and w.wms_order_id = s.wms_order_id limit 1) c
       where lo is null
    ), cmp as (
      -- plain columns, as in sync_inventory_apply
      select coalesce(s.wms_order_id, c.wms_order_id) as key, coalesce(s.listed, false) as listed,
             c.wms_order_id is null as missing,
             s.crm_customer_id, s.crm_order_id, s.status, s.lines, s.shipment, s.source_updated_at,
             c.crm_customer_id as c_crm_customer_id, c.crm_order_id as c_crm_order_id, c.status as c_status,
             c.lines as c_lines, c.shipment as c_shipment, c.source_updated_at as c_source_updated_at,
             c.cached_at as c_cached_at,
             (c.crm_customer_id, c.crm_order_id, c.status, c.lines, c.shipment, c.source_updated_at)
               is distinct from (s.crm_customer_id, s.crm_order_id, s.status, s.lines, s.shipment, s.source_updated_at)
               as differs,
             not private.sync_source_wins(s.source_updated_at, c.source_updated_at) as older
        from src s
        full join cache c on c.wms_order_id = s.wms_order_id
    ), heal as (
      insert into public.wms_orders as w (org_id, wms_order_id, crm_customer_id, crm_order_id, status, lines, shipment,
                                          source_updated_at, cached_at)
      select run.org_id, x.key, x.crm_customer_id, x.crm_order_id, x.status, x.lines, x.shipment, x.source_updated_at,
             pg_catalog.now()
        from cmp x
       where x.listed and (x.missing or (x.differs and not x.older))
      on conflict on constraint wms_orders_pkey do update
         set crm_customer_id = excluded.crm_customer_id, crm_order_id = excluded.crm_order_id,
             status = excluded.status, lines = excluded.lines, shipment = excluded.shipment,
             source_updated_at = excluded.source_updated_at, cached_at = excluded.cached_at
       where private.sync_source_wins(excluded.source_updated_at, w.source_updated_at)
      returning 1
    ), link as (
      update public.orders o set wms_order_id = l.wms_order_id
        from (select distinct on (s.crm_order_id) s.crm_order_id, s.wms_order_id
                from src s where s.crm_order_id is not null order by s.crm_order_id, s.wms_order_id) l
       where o.org_id = run.org_id and o.id = l.crm_order_id and o.wms_order_id is null
         and not exists (select from public.orders x where x.org_id = run.org_id and x.wms_order_id = l.wms_order_id)
    )
    select pg_catalog.count(*) filter (where x.listed), (select pg_catalog.count(*) from heal),
           case when lo is null then coalesce(pg_catalog.array_agg(x.key) filter (where x.listed), '{}') else '{}' end,
           coalesce(pg_catalog.array_agg(x.key) filter (where not x.listed and x.c_cached_at < run.started_at), '{}'),
           pg_catalog.jsonb_agg(private.sync_found(
             x.key, x.missing, x.older,
             case when not x.missing then pg_catalog.jsonb_build_object(
               'wms_order_id', x.key, 'crm_customer_id', x.c_crm_customer_id, 'crm_order_id', x.c_crm_order_id,
               'status', x.c_status, 'lines', x.c_lines, 'shipment', x.c_shipment,
               'source_updated_at', x.c_source_updated_at) end,
             pg_catalog.jsonb_build_object(
               'wms_order_id', x.key, 'crm_customer_id', x.crm_customer_id, 'crm_order_id', x.crm_order_id,
               'status', x.status, 'lines', x.lines, 'shipment', x.shipment,
               'source_updated_at', x.source_updated_at)))
             filter (where x.listed and (x.missing or x.differs))
      from cmp x
      into checked, synced, keys, gone, diffs;
end
$$;
revoke all on function private.sync_wms_orders_apply(private.sync_runs, jsonb, text, text) from public;

-- One page of either cache: what it found (sync_page_result, the first `room` items), and what
-- the run's end needs to find the extra rows. by_range: the page compared with the cache rows of
-- its key range (lo, hi: its least and greatest key), which gives the range's cache rows it did not
-- list (gone); that is for a page in key order, so a range holding far more cache rows than the
-- page (a source not in key order) falls back to a probe per item, which gives its keys instead.
create or replace function private.sync_apply(run private.sync_runs, items jsonb, room integer, by_range boolean,
                                              out result jsonb, out keys text[], out lo text, out hi text,
                                              out gone text[])
language plpgsql volatile
set search_path = ''
as $$
declare
  checked bigint;
  synced bigint;
  diffs jsonb;
  cap integer;
  n integer;
begin
  if by_range then
    select pg_catalog.min(e ->> k), pg_catalog.max(e ->> k), 2 * pg_catalog.count(*) + 100 into lo, hi, cap
      from pg_catalog.jsonb_array_elements(items) e,
           (select case run.sync_type when 'inventory' then 'sku' else 'wms_order_id' end) f(k);
    if lo is not null then
      if run.sync_type = 'inventory' then
        select pg_catalog.count(*) into n from (select from public.inventory_items i
                                                 where i.org_id = run.org_id and i.sku >= lo and i.sku <= hi
                                                 limit cap) x;
      else
        select pg_catalog.count(*) into n from (select from public.wms_orders w
                                                 where w.org_id = run.org_id and w.wms_order_id >= lo
                                                   and w.wms_order_id <= hi
                                                 limit cap) x;
      end if;
      if n >= cap then
        lo := null;
        hi := null;
      end if;
    end if;
  end if;
  if run.sync_type = 'inventory' then
    select a.checked, a.synced, a.keys, a.gone, a.diffs into checked, synced, keys, gone, diffs
      from private.sync_inventory_apply(run, items, lo, hi) a;
  else
    select a.checked, a.synced, a.keys, a.gone, a.diffs into checked, synced, keys, gone, diffs
      from private.sync_wms_orders_apply(run, items, lo, hi) a;
  end if;
  result := private.sync_page_result(checked, synced, diffs, room);
end
$$;
revoke all on function private.sync_apply(private.sync_runs, jsonb, integer, boolean) from public;

-- p_number: the page's number in the run (null: the next), the order of the report's items.
drop function if exists private.sync_run_page(uuid, jsonb, text);
create or replace function private.sync_run_page(p_run_id uuid, p_page jsonb, p_cursor text,
                                                 p_number integer default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  run private.sync_runs := private.sync_run_locked(p_run_id, shared => true);
  v_number integer := coalesce(p_number, run.pages + 1);
  room integer;
  items jsonb := p_page -> 'items';
  res jsonb;
  keys text[];
  one jsonb;
  one_keys text[];
  lo text;
  hi text;
  gone text[];
  item jsonb;
  n integer := 0;
  checked integer := 0;
  synced integer := 0;
  invalid jsonb := '[]';
  counts jsonb := '{}';
  fields jsonb := '{}';
  found_items jsonb := '[]';
  v_key text;
  key_field text := case run.sync_type when 'inventory' then 'sku' else 'wms_order_id' end;
begin
  if run.id is null then
    if not exists (select from private.sync_runs r where r.id = p_run_id) then
      raise sqlstate 'PT404' using message = 'sync run not found', detail = 'not_found';
    end if;
    raise sqlstate 'PT409' using message = 'this sync run is no longer running (it was failed as abandoned)',
      detail = 'sync_run_superseded';
  end if;
  if pg_catalog.jsonb_typeof(items) is distinct from 'array' then
    raise sqlstate 'PT502' using message = 'the warehouse answered a page without an items array',
      detail = 'bad_page';
  end if;
  -- A cache page need not wait for its WAL flush: a crash loses at most the last pages' healing,
  -- which the next run does again (the run itself is failed as abandoned). Runs, keys and
  -- everything else commit as usual.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  -- What the report still keeps after the pages before this one (pages not done yet do not count:
  -- the end takes the first 500 in page order).
  room := 500 - pg_catalog.jsonb_array_length(coalesce(run.discrepancies -> 'items', '[]'))
          - (select coalesce(pg_catalog.sum(pg_catalog.jsonb_array_length(s.found)), 0)
               from private.sync_run_seen s where s.run_id = run.id and s.page < v_number);
  -- The fast path: the whole page in one statement. By key range in a full pass only (a run of
  -- changes only judges no extras, and its pages' ranges are sparse).
  begin
    select a.result, a.keys, a.lo, a.hi, a.gone into res, keys, lo, hi, gone
      from private.sync_apply(run, items, room, run.updated_since is null) a;
  exception when data_exception or integrity_constraint_violation or cardinality_violation
                 or invalid_parameter_value or datatype_mismatch then
    res := null;  -- some item is malformed: apply them one by one, count the bad ones
  end;
  if res is null then
    keys := '{}';
    lo := null;
    hi := null;
    gone := '{}';
    for item in select x from pg_catalog.jsonb_array_elements(items) x loop
      n := n + 1;
      v_key := case when pg_catalog.jsonb_typeof(item) = 'object' then left(item ->> key_field, 200) end;
      begin
        if nullif(v_key, '') is null then
          raise exception 'no %', key_field;
        end if;
        select a.result, a.keys into one, one_keys
          from private.sync_apply(run, pg_catalog.jsonb_build_array(item), room, false) a;
        checked := checked + 1;
        synced := synced + (one ->> 'synced')::integer;
        counts := private.jsonb_add_counts(counts, one -> 'counts');
        fields := private.jsonb_add_counts(fields, one -> 'fields');
        found_items := found_items || (one -> 'items');
        keys := keys || one_keys;
        room := room - pg_catalog.jsonb_array_length(one -> 'items');
      exception when others then
        invalid := invalid || pg_catalog.jsonb_build_object('key', coalesce(v_key, '#' || n), 'kind', 'invalid',
                                                            'error', left(sqlerrm, 200));
      end;
    end loop;
    if pg_catalog.jsonb_array_length(invalid) > greatest(room, 0) then
      invalid := (select coalesce(pg_catalog.jsonb_agg(e order by i), '[]')
                    from pg_catalog.jsonb_array_elements(invalid) with ordinality x(e, i) where i <= greatest(room, 0));
    end if;
    res := pg_catalog.jsonb_build_object(
             'checked', n, 'synced', synced, 'failed', n - checked,
             'counts', private.jsonb_add_counts(counts, pg_catalog.jsonb_build_object('invalid', n - checked)),
             'fields', fields, 'items', found_items || invalid);
  end if;
  if pg_catalog.cardinality(keys) > 0 or lo is not null or pg_catalog.jsonb_array_length(res -> 'items') > 0 then
    insert into private.sync_run_seen (run_id, page, keys, found, lo, hi, gone)
    values (run.id, v_number, coalesce(keys, '{}'), res -> 'items', lo, hi, coalesce(gone, '{}'));
  end if;
  -- The run's row stays small: counts and field tallies only (the items wait beside the keys).
  update private.sync_runs r
     set pages = r.pages + 1, heartbeat_at = pg_catalog.now(),
         last_cursor = case when v_number > r.pages then p_cursor else r.last_cursor end,
         records_checked = r.records_checked + (res ->> 'checked')::integer,
         records_synced = r.records_synced + (res ->> 'synced')::integer,
         records_failed = r.records_failed + coalesce((res ->> 'failed')::integer, 0),
         discrepancies = pg_catalog.jsonb_build_object(
           'counts', private.jsonb_add_counts(r.discrepancies -> 'counts', res -> 'counts'),
           'fields', private.jsonb_add_counts(r.discrepancies -> 'fields', res -> 'fields'),
           'items', r.discrepancies -> 'items',
           'truncated', r.discrepancies -> 'truncated')
   where r.id = run.id;
  return pg_catalog.jsonb_build_object('checked', (res ->> 'checked')::integer, 'synced', (res ->> 'synced')::integer,
                                       'failed', coalesce((res ->> 'failed')::integer, 0), 'counts', res -> 'counts');
end
$$;
comment on function private.sync_run_page(uuid, jsonb, text, integer) is
  'Compare one page of the warehouse (`{"items": [...]}`) with the cache of the run''s organization and heal it (missing and stale rows, last writer by the source''s updated_at); malformed items are counted as failed and reported. Returns the page''s counts. p_number: the page''s number in the run (null: the next).';
revoke all on function private.sync_run_page(uuid, jsonb, text, integer) from public;
grant execute on function private.sync_run_page(uuid, jsonb, text, integer) to service_role;

create or replace function private.sync_run_finish(p_run_id uuid)
returns setof private.sync_runs
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  run private.sync_runs := private.sync_run_locked(p_run_id);
  extra text[];
begin
  if run.id is null then
    raise sqlstate 'PT409' using message = 'this sync run is no longer running (it was failed as abandoned)',
      detail = 'sync_run_superseded';
  end if;
  -- A complete pass: cache rows the source did not list are extra. Rows a webhook wrote since the
  -- run started are not judged (the source may have listed them before they existed). A run of
  -- changes only (updated_since) judges none.
  --
  -- A page compared by key range (lo, hi) listed every cache row of its range except those in its
  -- `gone`; a page compared key by key listed its `keys`. So a cache row no page listed is one that
  -- every range holding it gave as gone, or one outside every range (an index range scan per gap
  -- between the ranges: none for a source in key order), and in no page's keys. Whatever the
  -- source's order, pages in key order cost a few small scans here.
  -- The keys of pages compared key by key in one hash (100,000 keys: ~9 MB), not in batches on disk.
  perform pg_catalog.set_config('work_mem', '64MB', true);
  if run.updated_since is not null then
    extra := '{}';
  else
    -- Once per run: one statement for both caches (%1$I the table, %2$I its key), planned here.
    execute pg_catalog.format($q$
      with seen as (
        select s.lo, s.hi, s.gone, s.keys from private.sync_run_seen s where s.run_id = $1
      ), keyed as (
        select k as key from seen s, pg_catalog.unnest(s.keys) k
      ), ranges as (
        select s.lo, s.hi from seen s where s.lo is not null
      ), merged as (
        -- The ranges' union: overlapping ranges merged (a new one starts past the reach of those before).
        select pg_catalog.min(x.lo) as lo, pg_catalog.max(x.hi) as hi
          from (select y.lo, y.hi, pg_catalog.count(*) filter (where y.reach is null or y.lo > y.reach)
                                     over (order by y.lo, y.hi rows between unbounded preceding and current row) as grp
                  from (select r.lo, r.hi, pg_catalog.max(r.hi) over (order by r.lo, r.hi
                                                                   rows between unbounded preceding and 1 preceding) as reach
                          from ranges r) y) x
         group by x.grp
      ), gaps as (
        select m.hi as after, pg_catalog.lead(m.lo) over (order by m.lo) as before from merged m
      ), unlisted as (
        -- outside every range: before the first, between two, after the last (or all, without ranges)
        select i.%2$I as key from public.%1$I i
         where i.org_id = $2 and i.%2$I < (select pg_catalog.min(m.lo) from merged m)
        union all
        select i.%2$I from public.%1$I i
         where i.org_id = $2 and not exists (select from merged)
        union all
        select x.key from gaps g
         cross join lateral (select i.%2$I as key from public.%1$I i
                              where i.org_id = $2 and i.%2$I > g.after and i.%2$I < g.before offset 0) x
         where g.before is not null
        union all
        select i.%2$I from public.%1$I i
         where i.org_id = $2 and i.%2$I > (select pg_catalog.max(m.hi) from merged m)
        union all
        -- inside: gone from every range that holds it
        select c.key from (select k as key, pg_catalog.count(*) as n from seen s, pg_catalog.unnest(s.gone) k
                            group by k) c
         where c.n = (select pg_catalog.count(*) from ranges r where c.key >= r.lo and c.key <= r.hi)
      ), gone as (
        delete from public.%1$I i
         using unlisted u
         where i.org_id = $2 and i.%2$I = u.key and i.cached_at < $3
           and not exists (select from keyed where keyed.key = i.%2$I)
        returning i.%2$I as key)
      select coalesce(pg_catalog.array_agg(g.key order by g.key), '{}') from gone g
    $q$, case run.sync_type when 'inventory' then 'inventory_items' else 'wms_orders' end,
         case run.sync_type when 'inventory' then 'sku' else 'wms_order_id' end)
    into extra using run.id, run.org_id, run.started_at;
  end if;
  return next private.sync_run_end(run, 'succeeded', null, null, extra);
end
$$;
comment on function private.sync_run_finish(uuid) is
  'End a complete pass: remove the cache rows the source did not list (extra), record them, mark the run succeeded.';
revoke all on function private.sync_run_finish(uuid) from public;
grant execute on function private.sync_run_finish(uuid) to service_role;

create or replace function private.sync_run_fail(p_run_id uuid, p_error text, p_page integer, p_cursor text)
returns setof private.sync_runs
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  run private.sync_runs := private.sync_run_locked(p_run_id);
begin
  if run.id is not null then
    return next private.sync_run_end(run, 'failed', coalesce(p_error, 'failed'),
                                     pg_catalog.jsonb_build_object('page', p_page, 'cursor', p_cursor), '{}');
  end if;
end
$$;
comment on function private.sync_run_fail(uuid, text, integer, text) is
  'A run that could not finish: failed, with the error and where it stopped (page number and the cursor that fetched it). Extra rows are not judged; what was healed stays.';
revoke all on function private.sync_run_fail(uuid, text, integer, text) from public;
grant execute on function private.sync_run_fail(uuid, text, integer, text) to service_role;

-- Admins read the runs of their organizations: a private table behind a definer function filtered
-- by the caller's admin organizations, exposed by a security_invoker view.
-- Dropped first: a changed column list cannot be replaced in place (grants are given again below).
drop view if exists public.sync_run_reports;
drop function if exists hidden.sync_run_reports();
create function hidden.sync_run_reports()
returns table (id uuid, org_id uuid, integration_id uuid, sync_type text, status text, started_at timestamptz,
               completed_at timestamptz, updated_since timestamptz, pages integer, records_checked integer,
               records_synced integer, records_failed integer, discrepancies jsonb, error text, failed_at jsonb)
language plpgsql stable security definer
set search_path = ''
as $$
begin
  return query
    select r.id, r.org_id, r.integration_id, r.sync_type, r.status, r.started_at, r.completed_at, r.updated_since,
           r.pages,
           r.records_checked, r.records_synced, r.records_failed, r.discrepancies, r.error, r.failed_at
      from private.sync_runs r
     where pg_catalog.current_setting('role') in ('service_role', 'none')
        or r.org_id = any (hidden.staff_org_ids('admin'::public.staff_role));
end
$$;
comment on function hidden.sync_run_reports() is
  'Reconciliation runs of the organizations where the caller is admin (all of them for the service role and the owner).';
revoke all on function hidden.sync_run_reports() from public;
grant execute on function hidden.sync_run_reports() to authenticated, service_role;

create view public.sync_run_reports
with (security_invoker = true)
as
select * from hidden.sync_run_reports();
comment on view public.sync_run_reports is
  'Reconciliation runs of the warehouse caches (SPEC 11), newest first when ordered by started_at: status, counts, field-level discrepancies (first 500 and all counts), and for a failed run the error and failed_at {page, cursor}. Admins only.';
revoke all on public.sync_run_reports from anon, authenticated, service_role, public;
grant select on public.sync_run_reports to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- API keys
-- ---------------------------------------------------------------------------------------------
create or replace function public.create_api_key(org_id uuid, name text, scopes text[],
                                                 expires_at timestamptz default null)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_key text := 'crm_' || hidden.random_token(32);
  v_name text;
  v_scopes text[];
  k public.api_keys;
begin
  perform hidden.org_admin_check(create_api_key.org_id, 'API keys');
  v_name := hidden.text_normalize(coalesce(create_api_key.name, ''), 'name');
  if hidden.text_problem(v_name, 'name') is not null then
    raise sqlstate 'PT422' using message = 'name must be 1 to 200 visible characters without control characters',
      detail = 'name_' || hidden.text_problem(v_name, 'name'), hint = 'name';
  end if;
  select coalesce(pg_catalog.array_agg(distinct s order by s), '{}') into v_scopes
    from pg_catalog.unnest(create_api_key.scopes) s;
  if pg_catalog.cardinality(v_scopes) = 0
     or not v_scopes <@ array['customers:read', 'orders:read', 'leads:write'] then
    raise sqlstate 'PT422' using message = 'scopes must be one or more of customers:read, orders:read, leads:write',
      detail = 'scopes_invalid', hint = 'scopes';
  end if;
  if create_api_key.expires_at is not null and create_api_key.expires_at <= pg_catalog.now() then
    raise sqlstate 'PT422' using message = 'expires_at must be in the future', detail = 'expires_at_past',
      hint = 'expires_at';
  end if;
  insert into public.api_keys (org_id, name, prefix, scopes, created_by, expires_at)
  values (create_api_key.org_id, v_name, pg_catalog.left(v_key, 12), v_scopes,
          (select u.id from auth.users u where u.id = auth.uid()), create_api_key.expires_at)
  returning * into k;
  insert into private.api_key_hashes (key_id, key_hash)
  values (k.id, pg_catalog.sha256(pg_catalog.convert_to(v_key, 'UTF8')));
  return pg_catalog.to_jsonb(k) || pg_catalog.jsonb_build_object('key', v_key);
end
$$;
comment on function public.create_api_key(uuid, text, text[], timestamptz) is
  'Admins: a key for a machine client of their organization (SPEC 11) with scopes (customers:read, orders:read, leads:write) and an optional expiry. Returns the key row and, under "key", the key itself: shown once, only its SHA-256 is stored.';
revoke all on function public.create_api_key(uuid, text, text[], timestamptz) from public, anon;
grant execute on function public.create_api_key(uuid, text, text[], timestamptz) to authenticated, service_role;

create or replace function public.revoke_api_key(key_id uuid)
returns public.api_keys
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  k public.api_keys;
begin
  select a.* into k from public.api_keys a where a.id = revoke_api_key.key_id;
  if not found then
    raise sqlstate 'PT404' using message = 'API key not found', detail = 'not_found';
  end if;
  perform hidden.org_admin_check(k.org_id, 'API keys');
  update public.api_keys a set revoked_at = coalesce(a.revoked_at, pg_catalog.now())
   where a.id = k.id
  returning * into k;
  return k;
end
$$;
comment on function public.revoke_api_key(uuid) is
  'Admins: the key stops working at once (401); it stays listed with revoked_at. Revoking twice changes nothing.';
revoke all on function public.revoke_api_key(uuid) from public, anon;
grant execute on function public.revoke_api_key(uuid) to authenticated, service_role;

create or replace function private.api_authenticate(p_key_hash bytea, p_scope text)
returns table (key_id uuid, org_id uuid, default_country text, prefix text)
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  k public.api_keys;
begin
  select a.* into k from private.api_key_hashes h join public.api_keys a on a.id = h.key_id
   where h.key_hash = p_key_hash;
  if not found then
    raise sqlstate 'PT401' using message = 'invalid API key', detail = 'api_key_invalid';
  elsif k.revoked_at is not null then
    raise sqlstate 'PT401' using message = 'this API key was revoked', detail = 'api_key_revoked';
  elsif k.expires_at is not null and k.expires_at <= pg_catalog.now() then
    raise sqlstate 'PT401' using message = 'this API key has expired', detail = 'api_key_expired';
  elsif not p_scope = any (k.scopes) then
    raise sqlstate 'PT403' using message = 'this API key lacks the scope ' || p_scope, detail = 'missing_scope';
  end if;
  -- To the minute: no write per request.
  update public.api_keys a set last_used_at = pg_catalog.now()
   where a.id = k.id and (a.last_used_at is null or a.last_used_at < pg_catalog.now() - interval '1 minute');
  return query select k.id, k.org_id, o.default_country, k.prefix
                 from public.organizations o where o.id = k.org_id;
end
$$;
comment on function private.api_authenticate(bytea, text) is
  'The API key with this SHA-256, checked for one scope: its organization (and country, for phone numbers), else PT401 (unknown, revoked, expired) or PT403 (scope missing). Notes last_used_at to the minute.';
revoke all on function private.api_authenticate(bytea, text) from public;
grant execute on function private.api_authenticate(bytea, text) to service_role;

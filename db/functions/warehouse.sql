-- Warehouse integration (SPEC 11): reconciliation runs (start, one page, finish, fail), the admins'
-- view of them, and API keys (create, revoke, authenticate). Tables in the migration that created
-- private.sync_runs. plpgsql where a body names RLS helpers (applied before db/policies/).

-- ---------------------------------------------------------------------------------------------
-- Reconciliation runs
-- ---------------------------------------------------------------------------------------------
create or replace function private.jsonb_add_counts(a jsonb, b jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(pg_catalog.jsonb_object_agg(k, coalesce((a ->> k)::bigint, 0) + coalesce((b ->> k)::bigint, 0)), '{}')
    from (select pg_catalog.jsonb_object_keys(coalesce(a, '{}')) union select pg_catalog.jsonb_object_keys(coalesce(b, '{}'))) x(k)
$$;
comment on function private.jsonb_add_counts(jsonb, jsonb) is '{"a": 1} + {"a": 2, "b": 1} = {"a": 3, "b": 1}.';
revoke all on function private.jsonb_add_counts(jsonb, jsonb) from public;

create or replace function private.sync_run_lock(integration_id uuid, sync_type text)
returns void
language sql volatile
set search_path = ''
as $$
  -- Transaction-scoped (nothing session-level: CRM_DB_POOLER=transaction): held by the start and
  -- by each page transaction, so two runs' writes never interleave for one integration.
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('crm.sync:' || sync_type),
                                          pg_catalog.hashtext(integration_id::text))
$$;
revoke all on function private.sync_run_lock(uuid, text) from public;

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
  last_full timestamptz;
  v_since timestamptz;
begin
  select i.* into integ from public.integrations i where i.id = p_integration_id;
  if not found then
    raise sqlstate 'PT404' using message = 'integration not found', detail = 'not_found';
  end if;
  perform private.sync_run_lock(integ.id, p_sync_type);
  -- A run whose worker died (no page for longer than the lease) is failed, so the next one can go.
  with abandoned as (
    update private.sync_runs r
       set status = 'failed', completed_at = pg_catalog.now(),
           error = 'abandoned: no progress since ' || r.heartbeat_at || ' (page ' || r.pages || ')',
           failed_at = pg_catalog.jsonb_build_object('page', r.pages + 1, 'cursor', r.last_cursor)
     where r.integration_id = integ.id and r.sync_type = p_sync_type and r.status = 'running'
       and r.heartbeat_at < pg_catalog.now() - p_lease
    returning r.id)
  delete from private.sync_run_seen s using abandoned a where s.run_id = a.id;
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

create or replace function private.sync_run_touch(p_run_id uuid)
returns private.sync_runs
language plpgsql volatile
set search_path = ''
as $$
declare
  run private.sync_runs;
begin
  select r.* into run from private.sync_runs r where r.id = p_run_id;
  if not found then
    raise sqlstate 'PT404' using message = 'sync run not found', detail = 'not_found';
  end if;
  perform private.sync_run_lock(run.integration_id, run.sync_type);
  update private.sync_runs r set heartbeat_at = pg_catalog.now()
   where r.id = p_run_id and r.status = 'running'
  returning * into run;
  if not found then
    raise sqlstate 'PT409' using message = 'this sync run is no longer running (it was failed as abandoned)',
      detail = 'sync_run_superseded';
  end if;
  return run;
end
$$;
revoke all on function private.sync_run_touch(uuid) from public;

create or replace function private.sync_run_record(run private.sync_runs, page_cursor text, checked integer,
                                                   synced integer, failed integer, counts jsonb, fields jsonb,
                                                   items jsonb, more boolean)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
  d jsonb := run.discrepancies;
  room integer := 500 - pg_catalog.jsonb_array_length(run.discrepancies -> 'items');
  kept jsonb := coalesce(items, '[]');
begin
  if pg_catalog.jsonb_array_length(kept) > room then
    kept := (select coalesce(pg_catalog.jsonb_agg(e order by n), '[]')
               from pg_catalog.jsonb_array_elements(kept) with ordinality x(e, n) where n <= room);
    more := true;
  end if;
  d := pg_catalog.jsonb_build_object(
         'counts', private.jsonb_add_counts(d -> 'counts', counts),
         'fields', private.jsonb_add_counts(d -> 'fields', fields),
         'items', (d -> 'items') || kept,
         'truncated', (d ->> 'truncated')::boolean or more);
  update private.sync_runs r
     set pages = r.pages + 1, last_cursor = page_cursor,
         records_checked = r.records_checked + checked, records_synced = r.records_synced + synced,
         records_failed = r.records_failed + failed, discrepancies = d
   where r.id = run.id;
  return pg_catalog.jsonb_build_object('checked', checked, 'synced', synced, 'failed', failed, 'counts', counts);
end
$$;
revoke all on function private.sync_run_record(private.sync_runs, text, integer, integer, integer, jsonb, jsonb, jsonb, boolean) from public;

-- What one page found (`diffs`: [{key, kind, fields or null}] or null): counts by kind, a tally of
-- the stale fields, the first `room` items by key (without "fields" where there are none).
create or replace function private.sync_page_result(checked bigint, synced bigint, diffs jsonb, room integer)
returns jsonb
language sql immutable
set search_path = ''
as $$
  with d as (
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
                       from (select x.d from d x order by x.d ->> 'key' limit greatest(room, 0)) t),
           'more', (select pg_catalog.count(*) from d) > greatest(room, 0))
$$;
revoke all on function private.sync_page_result(bigint, bigint, jsonb, integer) from public;

-- One page of inventory items, assumed well-formed (the caller falls back to one item at a time).
-- Last writer by the source's updated_at: a cache row newer than the source (a webhook that came
-- in after the page was served) is left alone and counted as newer_in_cache.
create or replace function private.sync_inventory_apply(run private.sync_runs, items jsonb, room integer)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
-- plpgsql, not sql: its statement's plan is cached per connection (an sql function with this many
-- CTEs is planned again on every call, which cost more than the page itself).
declare
  result jsonb;
begin
    with src as (
      select distinct on (x.sku) x.sku, x.name, coalesce(x.attributes, '{}') as attributes, x.available,
             x.reserved, x.total, x.unit, x.updated_at
        from pg_catalog.jsonb_to_recordset(items) as x(sku text, name text, attributes jsonb, available numeric,
                                                       reserved numeric, total numeric, unit text,
                                                       updated_at timestamptz)
       order by x.sku, x.updated_at desc nulls last
    ), cmp as (
      select s.*, c.sku is null as missing,
             c.sku is not null
               and (c.name, c.attributes, c.available, c.reserved, c.total, c.unit, c.source_updated_at)
                   is distinct from (s.name, s.attributes, s.available, s.reserved, s.total, s.unit, s.updated_at)
               as differs,
             c.source_updated_at is not null and (s.updated_at is null or s.updated_at < c.source_updated_at)
               as older,
             c as cached
        from src s
        -- Lateral with a limit (never flattened into a join): one primary-key probe per item, whatever
        -- the statistics say; a hash join would scan the organization's whole cache for every page.
        left join lateral (select i.* from public.inventory_items i
                            where i.org_id = run.org_id and i.sku = s.sku limit 1) c on true
    ), seen as (
      insert into private.sync_run_seen (run_id, keys) select run.id, pg_catalog.array_agg(s.sku) from src s
        having pg_catalog.count(*) > 0
    ), heal as (
      insert into public.inventory_items as i (org_id, sku, name, attributes, available, reserved, total, unit,
                                               source_updated_at, cached_at)
      select run.org_id, c.sku, c.name, c.attributes, c.available, c.reserved, c.total, c.unit, c.updated_at,
             pg_catalog.now()
        from cmp c
       where c.missing or (c.differs and not c.older)
      on conflict on constraint inventory_items_pkey do update
         set name = excluded.name, attributes = excluded.attributes, available = excluded.available,
             reserved = excluded.reserved, total = excluded.total, unit = excluded.unit,
             source_updated_at = excluded.source_updated_at, cached_at = excluded.cached_at
       where i.source_updated_at is null
          or (excluded.source_updated_at is not null and excluded.source_updated_at >= i.source_updated_at)
      returning i.sku
    ), diffs as (
      select c.sku, case when c.missing then 'missing' when c.older then 'newer_in_cache' else 'stale' end as kind,
             case when not c.missing then
               (select pg_catalog.jsonb_object_agg(f.k, pg_catalog.jsonb_build_object('cache', f.was, 'source', f.now))
                  from (values ('name', pg_catalog.to_jsonb((c.cached).name), pg_catalog.to_jsonb(c.name)),
                               ('attributes', (c.cached).attributes, c.attributes),
                               ('available', pg_catalog.to_jsonb((c.cached).available), pg_catalog.to_jsonb(c.available)),
                               ('reserved', pg_catalog.to_jsonb((c.cached).reserved), pg_catalog.to_jsonb(c.reserved)),
                               ('total', pg_catalog.to_jsonb((c.cached).total), pg_catalog.to_jsonb(c.total)),
                               ('unit', pg_catalog.to_jsonb((c.cached).unit), pg_catalog.to_jsonb(c.unit)),
                               ('updated_at', pg_catalog.to_jsonb((c.cached).source_updated_at),
                                              pg_catalog.to_jsonb(c.updated_at))) f(k, was, now)
                 where f.was is distinct from f.now)
             end as fields
        from cmp c
       where c.missing or c.differs
    )
    select private.sync_page_result((select pg_catalog.count(*) from src), (select pg_catalog.count(*) from heal),
                                    (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                              'key', d.sku, 'kind', d.kind, 'fields', d.fields)) from diffs d), room)
      into result;
  return result;
end
$$;
revoke all on function private.sync_inventory_apply(private.sync_runs, jsonb, integer) from public;

-- One page of warehouse orders, as sync_inventory_apply. The source is the truth for every field;
-- our order learns the warehouse's id as the webhooks teach it (unless another order has it).
create or replace function private.sync_wms_orders_apply(run private.sync_runs, items jsonb, room integer)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
-- plpgsql, not sql: its statement's plan is cached per connection (an sql function with this many
-- CTEs is planned again on every call, which cost more than the page itself).
declare
  result jsonb;
begin
    with src as (
      select distinct on (x.wms_order_id) x.wms_order_id, private.inbox_uuid(x.crm_customer_id) as crm_customer_id,
             private.inbox_uuid(x.crm_order_id) as crm_order_id, x.status, coalesce(x.lines, '[]') as lines,
             x.shipment, x.updated_at
        from pg_catalog.jsonb_to_recordset(items) as x(wms_order_id text, crm_customer_id text, crm_order_id text,
                                                       status text, lines jsonb, shipment jsonb,
                                                       updated_at timestamptz)
       order by x.wms_order_id, x.updated_at desc nulls last
    ), cmp as (
      select s.*, c.wms_order_id is null as missing,
             c.wms_order_id is not null
               and (c.crm_customer_id, c.crm_order_id, c.status, c.lines, c.shipment, c.source_updated_at)
                   is distinct from (s.crm_customer_id, s.crm_order_id, s.status, s.lines, s.shipment, s.updated_at)
               as differs,
             c.source_updated_at is not null and (s.updated_at is null or s.updated_at < c.source_updated_at)
               as older,
             c as cached
        from src s
        left join lateral (select w.* from public.wms_orders w
                            where w.org_id = run.org_id and w.wms_order_id = s.wms_order_id limit 1) c on true
    ), seen as (
      insert into private.sync_run_seen (run_id, keys) select run.id, pg_catalog.array_agg(s.wms_order_id) from src s
        having pg_catalog.count(*) > 0
    ), heal as (
      insert into public.wms_orders as w (org_id, wms_order_id, crm_customer_id, crm_order_id, status, lines, shipment,
                                          source_updated_at, cached_at)
      select run.org_id, c.wms_order_id, c.crm_customer_id, c.crm_order_id, c.status, c.lines, c.shipment,
             c.updated_at, pg_catalog.now()
        from cmp c
       where c.missing or (c.differs and not c.older)
      on conflict on constraint wms_orders_pkey do update
         set crm_customer_id = excluded.crm_customer_id, crm_order_id = excluded.crm_order_id,
             status = excluded.status, lines = excluded.lines, shipment = excluded.shipment,
             source_updated_at = excluded.source_updated_at, cached_at = excluded.cached_at
       where w.source_updated_at is null
          or (excluded.source_updated_at is not null and excluded.source_updated_at >= w.source_updated_at)
      returning w.wms_order_id
    ), link as (
      update public.orders o set wms_order_id = l.wms_order_id
        from (select distinct on (s.crm_order_id) s.crm_order_id, s.wms_order_id
                from src s where s.crm_order_id is not null order by s.crm_order_id, s.wms_order_id) l
       where o.org_id = run.org_id and o.id = l.crm_order_id and o.wms_order_id is null
         and not exists (select from public.orders x where x.org_id = run.org_id and x.wms_order_id = l.wms_order_id)
    ), diffs as (
      select c.wms_order_id as key,
             case when c.missing then 'missing' when c.older then 'newer_in_cache' else 'stale' end as kind,
             case when not c.missing then
               (select pg_catalog.jsonb_object_agg(f.k, pg_catalog.jsonb_build_object('cache', f.was, 'source', f.now))
                  from (values ('crm_customer_id', pg_catalog.to_jsonb((c.cached).crm_customer_id),
                                                   pg_catalog.to_jsonb(c.crm_customer_id)),
                               ('crm_order_id', pg_catalog.to_jsonb((c.cached).crm_order_id), pg_catalog.to_jsonb(c.crm_order_id)),
                               ('status', pg_catalog.to_jsonb((c.cached).status), pg_catalog.to_jsonb(c.status)),
                               ('lines', (c.cached).lines, c.lines),
                               ('shipment', (c.cached).shipment, c.shipment),
                               ('updated_at', pg_catalog.to_jsonb((c.cached).source_updated_at),
                                              pg_catalog.to_jsonb(c.updated_at))) f(k, was, now)
                 where f.was is distinct from f.now)
             end as fields
        from cmp c
       where c.missing or c.differs
    )
    select private.sync_page_result((select pg_catalog.count(*) from src), (select pg_catalog.count(*) from heal),
                                    (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                              'key', d.key, 'kind', d.kind, 'fields', d.fields)) from diffs d), room)
      into result;
  return result;
end
$$;
revoke all on function private.sync_wms_orders_apply(private.sync_runs, jsonb, integer) from public;

create or replace function private.sync_apply(run private.sync_runs, items jsonb, room integer)
returns jsonb
language plpgsql volatile
set search_path = ''
as $$
begin
  if run.sync_type = 'inventory' then
    return private.sync_inventory_apply(run, items, room);
  end if;
  return private.sync_wms_orders_apply(run, items, room);
end
$$;
revoke all on function private.sync_apply(private.sync_runs, jsonb, integer) from public;

create or replace function private.sync_run_page(p_run_id uuid, p_page jsonb, p_cursor text)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  run private.sync_runs := private.sync_run_touch(p_run_id);
  room integer := 500 - pg_catalog.jsonb_array_length(run.discrepancies -> 'items');
  items jsonb := p_page -> 'items';
  res jsonb;
  one jsonb;
  item jsonb;
  n integer := 0;
  checked integer := 0;
  synced integer := 0;
  invalid jsonb := '[]';
  counts jsonb := '{}';
  fields jsonb := '{}';
  found_items jsonb := '[]';
  more boolean := false;
  v_key text;
  key_field text := case run.sync_type when 'inventory' then 'sku' else 'wms_order_id' end;
begin
  if pg_catalog.jsonb_typeof(items) is distinct from 'array' then
    raise sqlstate 'PT502' using message = 'the warehouse answered a page without an items array',
      detail = 'bad_page';
  end if;
  -- A cache page need not wait for its WAL flush: a crash loses at most the last pages' healing,
  -- which the next run does again (the run itself is failed as abandoned). Runs, keys and
  -- everything else commit as usual.
  perform pg_catalog.set_config('synchronous_commit', 'off', true);
  -- The fast path: the whole page in one statement.
  begin
    res := private.sync_apply(run, items, room);
    return private.sync_run_record(run, p_cursor, (res ->> 'checked')::integer, (res ->> 'synced')::integer, 0,
                                   res -> 'counts', res -> 'fields', res -> 'items', (res ->> 'more')::boolean);
  exception when data_exception or integrity_constraint_violation or cardinality_violation
                 or invalid_parameter_value or datatype_mismatch then
    null;  -- some item is malformed: apply them one by one, count the bad ones
  end;
  for item in select x from pg_catalog.jsonb_array_elements(items) x loop
    n := n + 1;
    v_key := case when pg_catalog.jsonb_typeof(item) = 'object' then left(item ->> key_field, 200) end;
    begin
      if nullif(v_key, '') is null then
        raise exception 'no %', key_field;
      end if;
      one := private.sync_apply(run, pg_catalog.jsonb_build_array(item), room);
      checked := checked + 1;
      synced := synced + (one ->> 'synced')::integer;
      counts := private.jsonb_add_counts(counts, one -> 'counts');
      fields := private.jsonb_add_counts(fields, one -> 'fields');
      found_items := found_items || (one -> 'items');
      room := room - pg_catalog.jsonb_array_length(one -> 'items');
      more := more or (one ->> 'more')::boolean;
    exception when others then
      invalid := invalid || pg_catalog.jsonb_build_object('key', coalesce(v_key, '#' || n), 'kind', 'invalid',
                                                          'error', left(sqlerrm, 200));
    end;
  end loop;
  if pg_catalog.jsonb_array_length(invalid) > greatest(room, 0) then
    more := true;
    invalid := (select coalesce(pg_catalog.jsonb_agg(e order by i), '[]')
                  from pg_catalog.jsonb_array_elements(invalid) with ordinality x(e, i) where i <= greatest(room, 0));
  end if;
  return private.sync_run_record(run, p_cursor, n, synced, n - checked,
                                 private.jsonb_add_counts(counts, pg_catalog.jsonb_build_object('invalid', n - checked)),
                                 fields, found_items || invalid, more);
end
$$;
comment on function private.sync_run_page(uuid, jsonb, text) is
  'Compare one page of the warehouse (`{"items": [...]}`) with the cache of the run''s organization and heal it (missing and stale rows, last writer by the source''s updated_at); malformed items are counted as failed and reported. Returns the page''s counts.';
revoke all on function private.sync_run_page(uuid, jsonb, text) from public;
grant execute on function private.sync_run_page(uuid, jsonb, text) to service_role;

create or replace function private.sync_run_finish(p_run_id uuid)
returns setof private.sync_runs
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  run private.sync_runs := private.sync_run_touch(p_run_id);
  extra text[];
  room integer := 500 - pg_catalog.jsonb_array_length(run.discrepancies -> 'items');
begin
  -- A complete pass: cache rows the source did not list are extra. Rows a webhook wrote since the
  -- run started are not judged (the source may have listed them before they existed). A run of
  -- changes only (updated_since) judges none.
  if run.updated_since is not null then
    extra := '{}';
  elsif run.sync_type = 'inventory' then
    with seen as materialized (
      select k as key from private.sync_run_seen s, pg_catalog.unnest(s.keys) k where s.run_id = run.id
    ), gone as (
      delete from public.inventory_items i
       where i.org_id = run.org_id and i.cached_at < run.started_at
         and not exists (select from seen where seen.key = i.sku)
      returning i.sku)
    select coalesce(pg_catalog.array_agg(g.sku order by g.sku), '{}') into extra from gone g;
  else
    with seen as materialized (
      select k as key from private.sync_run_seen s, pg_catalog.unnest(s.keys) k where s.run_id = run.id
    ), gone as (
      delete from public.wms_orders w
       where w.org_id = run.org_id and w.cached_at < run.started_at
         and not exists (select from seen where seen.key = w.wms_order_id)
      returning w.wms_order_id)
    select coalesce(pg_catalog.array_agg(g.wms_order_id order by g.wms_order_id), '{}') into extra from gone g;
  end if;
  delete from private.sync_run_seen s where s.run_id = run.id;
  return query
    update private.sync_runs r
       set status = 'succeeded', completed_at = pg_catalog.now(), heartbeat_at = pg_catalog.now(),
           records_synced = r.records_synced + pg_catalog.cardinality(extra),
           discrepancies = pg_catalog.jsonb_build_object(
             'counts', private.jsonb_add_counts(r.discrepancies -> 'counts',
                                                pg_catalog.jsonb_build_object('extra', pg_catalog.cardinality(extra))),
             'fields', r.discrepancies -> 'fields',
             'items', (r.discrepancies -> 'items')
                      || (select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('key', k, 'kind', 'extra')
                                                               order by i), '[]')
                            from pg_catalog.unnest(extra) with ordinality u(k, i) where i <= greatest(room, 0)),
             'truncated', (r.discrepancies ->> 'truncated')::boolean or pg_catalog.cardinality(extra) > greatest(room, 0))
     where r.id = run.id
    returning *;
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
begin
  delete from private.sync_run_seen s where s.run_id = p_run_id;
  return query
    update private.sync_runs r
       set status = 'failed', completed_at = pg_catalog.now(), heartbeat_at = pg_catalog.now(),
           error = left(coalesce(p_error, 'failed'), 2000),
           failed_at = pg_catalog.jsonb_build_object('page', p_page, 'cursor', p_cursor)
     where r.id = p_run_id and r.status = 'running'
    returning *;
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

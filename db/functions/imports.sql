-- Imports (SPEC 13): `crm import customers|leads|orders` hands batches of prepared rows to
-- private.import_rows, which writes them through the same rules as every other writer: the
-- customer found or created by E.164 phone, then email (race-free, as private.find_or_create_customer),
-- the enums, CHECKs and triggers (status events and outbox rows carry the note 'import').
-- Set-based: the batch is staged in a temporary table and written with one statement per table
-- (customers, leads, activities; the triggers' status events and outbox rows are statement-level
-- on insert). A statement the database refuses is retried on each half of its rows, down to a few
-- rows, which take the per-row path (a savepoint each) and report their refusal; so a bad row never
-- half-writes and never blocks the good ones. Rows whose outcome depends on another row of the batch
-- (a phone, email or legacy_id shared with another row) and rows a cheap check already finds bad take
-- the per-row path at once, in line order: the result is the one the rows written one by one give.
-- The dry run calls the same function in a transaction it rolls back, so its report is what --apply
-- would do. Idempotent by legacy_id: a row whose values are already there updates nothing (no new
-- row version, updated_at unchanged).
-- Backup pulls (pull-leads): private.pull_receive feeds provider rows into the inbox with the
-- webhooks' event ids; the table of cursors is in the migration that added orders.legacy_id.

create or replace function private.import_number_problem(value text, money boolean)
returns text
language sql immutable
-- No SET clause: inlined where the batch is checked (SECURITY INVOKER, qualified names).
as $$
  select case
    when value is null then null
    when not money and value !~ '^\s*[0-9]{1,18}\s*$' then 'must be a whole number'
    when value !~ '^\s*-?[0-9]{1,18}(\.[0-9]+)?\s*$' then 'must be a number (a dot before the decimals)'
    -- Money is refused beyond cents, never rounded (numeric(12, 2) would round it silently).
    when value ~ '\.[0-9]*[1-9][0-9]*\s*$' and value !~ '\.[0-9]{1,2}0*\s*$' then 'must not have more than cents'
  end
$$;
comment on function private.import_number_problem(text, boolean) is
  'crm import: why a file''s text is not an id (whole, not money) or money (at most cents), or null when it is one.';
revoke all on function private.import_number_problem(text, boolean) from public;

create or replace function private.import_number(value text, field text, money boolean)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
declare
  problem text := private.import_number_problem(value, money);
begin
  if problem is not null then
    raise sqlstate 'PT422' using message = problem,
      detail = case when problem like '%cents' then 'invalid_amount' else 'invalid_number' end, hint = field;
  end if;
  return value::numeric;
end
$$;
comment on function private.import_number(text, text, boolean) is
  'crm import: a file''s text as a number, PT422 naming the field otherwise: an id (whole, not money) or money (at most cents).';
revoke all on function private.import_number(text, text, boolean) from public;

create or replace function private.import_time_or_null(value text)
returns timestamptz
language plpgsql stable
set search_path = ''
as $$
begin
  if value is null then
    return null;  -- before the exception block: no subtransaction for the rows without a time
  end if;
  begin
    return value::timestamptz;
  exception when others then
    return null;
  end;
end
$$;
revoke all on function private.import_time_or_null(text) from public;

create or replace function private.import_time(value text, field text)
returns timestamptz
language plpgsql stable
set search_path = ''
as $$
declare
  parsed timestamptz := private.import_time_or_null(value);
begin
  if parsed is null and value is not null then
    raise sqlstate 'PT422' using message = 'must be a date and time (ISO 8601)', detail = 'invalid_time', hint = field;
  end if;
  return parsed;
end
$$;
revoke all on function private.import_time(text, text) from public;

create or replace function private.import_enum(value text, field text, allowed anyarray)
returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  if value is not null and not value = any (allowed::text[]) then
    raise sqlstate 'PT422' using message = 'must be one of ' || pg_catalog.array_to_string(allowed::text[], ', '),
      detail = 'invalid_value', hint = field;
  end if;
  return value;
end
$$;
revoke all on function private.import_enum(text, text, anyarray) from public;

-- Replaced by the set-based private.import_write (databases migrated before it still have them).
drop function if exists private.import_customer(uuid, jsonb), private.import_lead(uuid, jsonb, uuid);

create or replace function private.import_stage()
returns void
language plpgsql volatile
set search_path = ''
as $$
begin
  -- One staging table per transaction (dropped at commit, so nothing outlives it behind a transaction
  -- pooler), emptied at the start of every batch.
  if pg_catalog.to_regclass('pg_temp.import_stage') is null then
    create temporary table import_stage (
      line integer primary key,
      seq integer,  -- the rows of one import_write call: a range of it
      r jsonb,  -- the row as given (orders: import_order reads it)
      full_name text, phone text, email text, preferred_channel text, city text,
      legacy_txt text, status text, external_item_ref text, notes text, created_txt text,
      legacy_id bigint, created_at timestamptz,
      per_row boolean not null default false,
      customer_id uuid, customer_created boolean not null default false,
      customer_changed boolean not null default false,
      lead_id uuid, lead_org uuid, outcome text,
      err_state text, err_message text, err_hint text, err_constraint text, err_column text
    ) on commit drop;
    create index on pg_temp.import_stage (seq);
  elsif exists (select from pg_temp.import_stage) then
    truncate pg_temp.import_stage;  -- the dry run's one transaction; --apply's commits dropped it
  end if;
end
$$;
comment on function private.import_stage() is
  'crm import: the transaction''s staging table pg_temp.import_stage, created on first use (on commit drop) and emptied per batch.';
revoke all on function private.import_stage() from public;

create or replace function private.import_write(p_org uuid, p_kind text, p_first integer, p_last integer)
returns void
language plpgsql volatile
set search_path = ''
as $$
declare
  v_line integer;
  v_outcome text;
begin
  -- Either every staged row of seq p_first..p_last is written, or it raises the first refusal:
  -- called for a set (import_write_set) and for one row in a savepoint (the per-row path). Rows
  -- sharing a contact or a legacy_id never meet in one set call (import_rows routes them to the
  -- per-row path; the guards below hold it also under concurrency).
  if exists (select from pg_temp.import_stage s
              where s.seq between p_first and p_last and s.phone is null and s.email is null) then
    -- as private.find_or_create_customer
    raise sqlstate 'PT422' using message = 'give a phone number or an email address',
      detail = 'contact_required', hint = 'phone';
  end if;

  -- The customer: by phone, then by email (an erased customer is never found), else created. ON
  -- CONFLICT DO NOTHING against both unique indexes makes a concurrent first contact of one person
  -- (a booking, a webhook, another import) meet on one row: the loser inserts nothing and finds the
  -- winner's row on the next pass (a new snapshot per statement), as private.find_or_create_customer.
  for attempt in 1..3 loop
    update pg_temp.import_stage s
       set customer_id = coalesce(
             (select c.id from public.customers c
               where c.org_id = p_org and c.phone_e164 = s.phone and c.erased_at is null),
             (select c.id from public.customers c
               where c.org_id = p_org and pg_catalog.lower(c.email) = s.email and c.erased_at is null))
     where s.seq between p_first and p_last and s.customer_id is null;
    exit when not exists (select from pg_temp.import_stage s
                           where s.seq between p_first and p_last and s.customer_id is null);
    with made as (
      insert into public.customers as c (org_id, full_name, phone_e164, email, preferred_channel, city)
      select p_org, coalesce(nullif(pg_catalog.btrim(s.full_name), ''), s.phone, s.email), s.phone, s.email,
             s.preferred_channel, s.city
        from pg_temp.import_stage s
       where s.seq between p_first and p_last and s.customer_id is null
       order by s.phone, s.email  -- one lock order for concurrent imports
      on conflict do nothing
      returning c.id, c.phone_e164, c.email)
    update pg_temp.import_stage s set customer_id = m.id, customer_created = true
      from made m
     where s.seq between p_first and p_last and s.customer_id is null
       and (m.phone_e164 = s.phone or (s.phone is null and m.email = s.email));
  end loop;
  if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last and s.customer_id is null) then
    raise sqlstate 'PT409' using message = 'The customer changed concurrently; retry.', detail = 'concurrent_update';
  end if;
  if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last
              group by s.customer_id having pg_catalog.count(*) > 1) then
    raise exception 'import: rows of one customer in one set';  -- split: they take the per-row path
  end if;

  -- A known customer gets only what it lacks (the CRM's data wins over the legacy file), and only
  -- when something differs, so a second import writes nothing.
  with changed as (
    update public.customers c
       set full_name = case when c.full_name in (c.phone_e164, c.email) and s.full_name is not null
                            then s.full_name else c.full_name end,
           phone_e164 = coalesce(c.phone_e164, case when not exists (
                          select from public.customers o where o.org_id = p_org and o.phone_e164 = s.phone)
                          then s.phone end),
           email = coalesce(c.email, case when not exists (
                     select from public.customers o where o.org_id = p_org and pg_catalog.lower(o.email) = s.email)
                     then s.email end),
           preferred_channel = coalesce(c.preferred_channel, s.preferred_channel),
           city = coalesce(c.city, s.city)
      from pg_temp.import_stage s
     where s.seq between p_first and p_last and not s.customer_created and c.id = s.customer_id
       and ((c.full_name in (c.phone_e164, c.email) and s.full_name is not null
             and s.full_name is distinct from c.full_name)
            or (c.phone_e164 is null and s.phone is not null)
            or (c.email is null and s.email is not null)
            or (c.preferred_channel is null and s.preferred_channel is not null)
            or (c.city is null and s.city is not null))
    returning c.id)
  update pg_temp.import_stage s set customer_changed = true
    from changed
   where s.seq between p_first and p_last and s.customer_id = changed.id;

  if p_kind = 'customers' then
    update pg_temp.import_stage s
       set outcome = case when s.customer_created then 'created' when s.customer_changed then 'updated'
                          else 'skipped' end
     where s.seq between p_first and p_last;
    return;
  elsif p_kind = 'orders' then
    for v_line in select s.line from pg_temp.import_stage s where s.seq between p_first and p_last order by s.line loop
      select private.import_order(p_org, s.r, s.customer_id) into v_outcome
        from pg_temp.import_stage s where s.line = v_line;
      update pg_temp.import_stage s
         set outcome = case when v_outcome <> 'unchanged' then v_outcome
                            when s.customer_created or s.customer_changed then 'updated' else 'skipped' end
       where s.line = v_line;
    end loop;
    return;
  end if;

  -- Leads. The row's values were parsed when staged; one that is not a value raises here, in the
  -- order the per-row path checks them (legacy_id, status, created_at).
  perform private.import_number(s.legacy_txt, 'legacy_id', false),
          private.import_enum(s.status, 'status', pg_catalog.enum_range(null::public.lead_status)),
          private.import_time(s.created_txt, 'created_at')
     from pg_temp.import_stage s
    where s.seq between p_first and p_last
      and (private.import_number_problem(s.legacy_txt, false) is not null
           or not coalesce(s.status = any (pg_catalog.enum_range(null::public.lead_status)::text[]), true)
           or (s.created_txt is not null and s.created_at is null));
  if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last and s.legacy_id is null) then
    raise sqlstate 'PT422' using message = 'is required: the lead''s id in the old system', detail = 'required',
      hint = 'legacy_id';
  end if;
  if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last
              group by s.legacy_id having pg_catalog.count(*) > 1) then
    raise exception 'import: one legacy_id twice in one set';  -- split: they take the per-row path
  end if;

  for attempt in 1..2 loop
    -- Leads already there (a rerun, or a concurrent import that inserted them first). Not locked:
    -- org_id never changes, and the update below re-checks its condition on the row it locks.
    update pg_temp.import_stage s set lead_id = l.id, lead_org = l.org_id
      from public.leads l
     where s.seq between p_first and p_last and s.lead_id is null and l.legacy_id = s.legacy_id;
    if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last and s.lead_org <> p_org) then
      raise sqlstate 'PT409' using message = 'this legacy_id belongs to a lead of another organization',
        detail = 'legacy_id_taken', hint = 'legacy_id';
    end if;
    exit when attempt = 2;
    with made as (
      insert into public.leads (legacy_id, org_id, customer_id, source, status, external_item_ref, notes, created_at)
      select s.legacy_id, p_org, s.customer_id, 'import', coalesce(s.status, 'new')::public.lead_status,
             s.external_item_ref, s.notes, coalesce(s.created_at, pg_catalog.now())
        from pg_temp.import_stage s
       where s.seq between p_first and p_last and s.lead_id is null
       order by s.legacy_id
      on conflict on constraint leads_legacy_id_key do nothing
      returning id, legacy_id)
    update pg_temp.import_stage s set lead_id = m.id, lead_org = p_org, outcome = 'created'
      from made m
     where s.seq between p_first and p_last and s.legacy_id = m.legacy_id;
    exit when not exists (select from pg_temp.import_stage s
                           where s.seq between p_first and p_last and s.lead_id is null);
  end loop;
  if exists (select from pg_temp.import_stage s where s.seq between p_first and p_last and s.lead_id is null) then
    raise sqlstate 'PT409' using message = 'The lead changed concurrently; retry.', detail = 'concurrent_update';
  end if;

  insert into public.activities (org_id, customer_id, lead_id, kind, occurred_at, summary, data, created_by, source_ref)
  select p_org, s.customer_id, s.lead_id, 'import', pg_catalog.now(), 'Imported lead ' || s.legacy_id,
         pg_catalog.jsonb_build_object('legacy_id', s.legacy_id), null, 'lead:' || s.legacy_id
    from pg_temp.import_stage s
   where s.seq between p_first and p_last and s.outcome = 'created';

  -- An existing lead is updated only where the row differs (a status through the lead machine).
  with changed as (
    update public.leads l
       set status = coalesce(s.status::public.lead_status, l.status),
           external_item_ref = coalesce(s.external_item_ref, l.external_item_ref),
           notes = coalesce(s.notes, l.notes)
      from pg_temp.import_stage s
     where s.seq between p_first and p_last and s.outcome is null and l.id = s.lead_id
       and (coalesce(s.status::public.lead_status, l.status), coalesce(s.external_item_ref, l.external_item_ref),
            coalesce(s.notes, l.notes))
           is distinct from (l.status, l.external_item_ref, l.notes)
    returning l.id)
  update pg_temp.import_stage s set outcome = 'updated'
    from changed
   where s.seq between p_first and p_last and s.lead_id = changed.id;
  update pg_temp.import_stage s
     set outcome = case when s.customer_created or s.customer_changed then 'updated' else 'skipped' end
   where s.seq between p_first and p_last and s.outcome is null;
end
$$;
comment on function private.import_write(uuid, text, integer, integer) is
  'crm import: writes the staged rows whose seq is p_first..p_last (customers set-based: found by phone, then email, else created race-free; a known one gets only the fields it lacks; then the leads by legacy_id, or each order) and sets their outcome, or raises the first refusal (the caller splits or reports it).';
revoke all on function private.import_write(uuid, text, integer, integer) from public;

create or replace function private.import_write_set(p_org uuid, p_kind text, p_first integer, p_last integer)
returns void
language plpgsql volatile
set search_path = ''
as $$
declare
  half integer := (p_first + p_last) / 2;
begin
  if p_first > p_last then
    return;
  end if;
  begin  -- a savepoint: a refused set leaves nothing behind
    perform private.import_write(p_org, p_kind, p_first, p_last);
    return;
  exception when others then
    null;  -- split below (a cancel is not caught: Ctrl-C still ends the batch)
  end;
  if p_last - p_first < 4 then  -- a few rows: cheaper one by one than split further
    update pg_temp.import_stage s set per_row = true where s.seq between p_first and p_last;
    return;
  end if;
  perform private.import_write_set(p_org, p_kind, p_first, half);
  perform private.import_write_set(p_org, p_kind, half + 1, p_last);
end
$$;
comment on function private.import_write_set(uuid, text, integer, integer) is
  'crm import: private.import_write of the staged rows of seq p_first..p_last; refused, each half again, down to a few rows, which are left to the per-row path.';
revoke all on function private.import_write_set(uuid, text, integer, integer) from public;

create or replace function private.import_order(p_org uuid, r jsonb, p_customer uuid)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  v_legacy bigint := private.import_number(r ->> 'legacy_id', 'legacy_id', false)::bigint;
  v_status text := private.import_enum(r ->> 'status', 'status', pg_catalog.enum_range(null::public.order_status));
  v_created timestamptz := private.import_time(r ->> 'created_at', 'created_at');
  v_lead_legacy bigint := private.import_number(r ->> 'lead_legacy_id', 'lead_legacy_id', false)::bigint;
  v_snapshot jsonb := r -> 'item_snapshot';
  v_lead uuid;
  existing public.orders;
  v_id uuid;
  n integer;
begin
  if v_legacy is null then
    raise sqlstate 'PT422' using message = 'is required: the order''s id in the old system', detail = 'required',
      hint = 'legacy_id';
  end if;
  select o.* into existing from public.orders o where o.org_id = p_org and o.legacy_id = v_legacy for update;
  if existing.id is null then
    if v_lead_legacy is not null then
      select l.id into v_lead from public.leads l where l.org_id = p_org and l.legacy_id = v_lead_legacy;
      if v_lead is null then
        raise sqlstate 'PT422' using message = 'no lead of this organization has this legacy_id (import the leads first)',
          detail = 'lead_not_found', hint = 'lead_legacy_id';
      end if;
    end if;
    insert into public.orders (legacy_id, org_id, customer_id, lead_id, item_id, external_item_ref, item_snapshot,
                               archived_item, status, price_amount, currency, booking_amount, delivery_method,
                               created_at)
    values (v_legacy, p_org, p_customer, v_lead, v_snapshot ->> 'item_id', v_snapshot ->> 'external_ref', v_snapshot,
            coalesce((r ->> 'archived_item')::boolean, false),
            coalesce(v_status, 'pending_manager')::public.order_status,
            private.import_number(r ->> 'price_amount', 'price_amount', true), r ->> 'currency',
            private.import_number(r ->> 'booking_amount', 'booking_amount', true), r ->> 'delivery_method',
            coalesce(v_created, pg_catalog.now()))
    on conflict (org_id, legacy_id) where legacy_id is not null do nothing
    returning id into v_id;
    if v_id is not null then
      insert into public.activities (org_id, customer_id, order_id, lead_id, kind, occurred_at, summary, data,
                                     created_by, source_ref)
      values (p_org, p_customer, v_id, v_lead, 'import', pg_catalog.now(), 'Imported order ' || v_legacy,
              pg_catalog.jsonb_build_object('legacy_id', v_legacy,
                                            'archived_item', coalesce((r ->> 'archived_item')::boolean, false)),
              null, 'order:' || v_legacy);
      return 'created';
    end if;
    -- Inserted by a concurrent import meanwhile (see import_lead): compared like a rerun's row.
    select o.* into existing from public.orders o where o.org_id = p_org and o.legacy_id = v_legacy for update;
  end if;
  -- The snapshot and the item are immutable; what a later import may move is the status.
  update public.orders o set status = v_status::public.order_status
   where o.id = existing.id and v_status is not null and o.status is distinct from v_status::public.order_status;
  get diagnostics n = row_count;
  return case when n > 0 then 'updated' else 'unchanged' end;
end
$$;
comment on function private.import_order(uuid, jsonb, uuid) is
  'crm import orders: a new order by legacy_id (per org) with its snapshot, or the existing one''s status moved through the order machine when the row says another.';
revoke all on function private.import_order(uuid, jsonb, uuid) from public;

create or replace function private.import_rows(p_org uuid, p_kind text, p_rows jsonb)
returns table (line integer, outcome text, customer_created boolean, err_state text, err_message text,
               err_hint text, err_constraint text, err_column text)
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_seq integer;
  v_state text;
  v_message text;
  v_hint text;
  v_constraint text;
  v_column text;
begin
  if p_kind not in ('customers', 'leads', 'orders') then
    raise sqlstate 'PT422' using message = 'kind must be customers, leads or orders', detail = 'kind_unknown';
  end if;
  -- Status events and outbox rows of this transaction say where the change came from.
  perform pg_catalog.set_config('crm.status_note', 'import', true);
  perform private.import_stage();
  -- One statement stages the batch: contacts as private.find_or_create_customer reads them (trimmed,
  -- email lower-case), the values that parse, and the path each row takes. The per-row path: every
  -- order (each looks up its lead and item), and the rows whose result depends on another row of the
  -- batch or that a cheap check already finds bad (so that they do not split a set): a contact or
  -- legacy_id shared with another row, no contact, a legacy_id, status or time that is not one. The
  -- set is seq 1..n in line order; a row of the per-row path is its own range, seq -line.
  insert into pg_temp.import_stage (line, seq, per_row, r, full_name, phone, email, preferred_channel, city,
                                    legacy_txt, legacy_id, status, external_item_ref, notes, created_txt, created_at)
  select v.line,
         case when v.per_row then -v.line
              else pg_catalog.row_number() over (partition by v.per_row order by v.line) end,
         v.per_row, v.r, v.full_name, v.phone, v.email, v.preferred_channel, v.city, v.legacy_txt,
         case when v.legacy_ok then v.legacy_txt::bigint end, v.status, v.external_item_ref, v.notes, v.created_txt,
         v.created_at
    from (select x.*,
                 p_kind = 'orders' or (x.phone is null and x.email is null)
                 or (x.phone is not null and pg_catalog.count(*) over (partition by x.phone) > 1)
                 or (x.email is not null and pg_catalog.count(*) over (partition by x.email) > 1)
                 or (p_kind = 'leads'
                     and (not x.legacy_ok
                          or pg_catalog.count(*) over (partition by pg_catalog.btrim(x.legacy_txt)) > 1
                          or not coalesce(x.status = any (pg_catalog.enum_range(null::public.lead_status)::text[]),
                                          true)
                          or (x.created_txt is not null and x.created_at is null))) as per_row
            from (select (j ->> 'line')::integer as line, case when p_kind = 'orders' then j end as r,
                         j ->> 'full_name' as full_name, nullif(pg_catalog.btrim(j ->> 'phone_e164'), '') as phone,
                         nullif(pg_catalog.lower(pg_catalog.btrim(j ->> 'email')), '') as email,
                         j ->> 'preferred_channel' as preferred_channel, j ->> 'city' as city,
                         j ->> 'legacy_id' as legacy_txt,
                         j ->> 'legacy_id' is not null
                           and private.import_number_problem(j ->> 'legacy_id', false) is null as legacy_ok,
                         j ->> 'status' as status, j ->> 'external_item_ref' as external_item_ref,
                         j ->> 'notes' as notes, j ->> 'created_at' as created_txt,
                         private.import_time_or_null(j ->> 'created_at') as created_at
                    from pg_catalog.jsonb_array_elements(p_rows) j) x) v;
  analyze pg_temp.import_stage;  -- plans for the batch's size (a temporary table has no statistics)
  perform private.import_write_set(p_org, p_kind, 1, (select pg_catalog.count(*)::integer from pg_temp.import_stage s
                                                       where not s.per_row));

  for v_seq in select s.seq from pg_temp.import_stage s where s.per_row order by s.line loop
    begin  -- a savepoint per row: a bad row leaves nothing behind
      perform private.import_write(p_org, p_kind, v_seq, v_seq);
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_hint = pg_exception_hint,
        v_constraint = constraint_name, v_column = column_name;
      update pg_temp.import_stage s
         set outcome = 'bad', customer_created = false, err_state = v_state, err_message = v_message,
             err_hint = v_hint, err_constraint = v_constraint, err_column = v_column
       where s.seq = v_seq;
    end;
  end loop;

  return query
    select s.line, s.outcome, s.customer_created, s.err_state, s.err_message, s.err_hint, s.err_constraint,
           s.err_column
      from pg_temp.import_stage s
     order by s.line;
end
$$;
comment on function private.import_rows(uuid, text, jsonb) is
  'crm import: writes prepared rows ([{line, legacy_id, full_name, phone_e164, email, ...}]) of one kind, set-based where the rows are independent of each other, else one by one in a savepoint; one result per row: created / updated / skipped / bad (with the refusal). The caller commits (--apply) or rolls back (dry run).';
revoke all on function private.import_rows(uuid, text, jsonb) from public;
grant execute on function private.import_rows(uuid, text, jsonb) to service_role;

-- ---------------------------------------------------------------------------------------------
-- pull-leads
-- ---------------------------------------------------------------------------------------------
create or replace function private.pull_receive(p_integration uuid, p_events jsonb)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  result jsonb;
  done integer;
  bad integer;
begin
  -- Stored by the webhooks' own function under the webhooks' keys: whichever of push and pull stores
  -- an event first wins, the other inserts nothing (PT404 for a disabled integration, as there).
  result := private.inbox_receive(p_integration, p_events);
  -- Events that wait for a fetch (a Meta lead, stored with process false; also one its webhook
  -- stored and process-inbox has not fetched yet) are finished with the row as pulled.
  select count(*) filter (where f.outcome not in ('failed', 'dead')), count(*) filter (where f.outcome in ('failed', 'dead'))
    into done, bad
    from (select private.inbox_finish(e.id, x -> 'extra', null) as outcome
            from pg_catalog.jsonb_array_elements(p_events) x
            join private.inbound_events e on e.integration_id = p_integration and e.event_id = x ->> 'event_id'
           where x ? 'extra' and e.status = 'pending'
           order by e.id) f;
  return result || pg_catalog.jsonb_build_object('processed', (result ->> 'processed')::integer + done,
                                                 'failed', (result ->> 'failed')::integer + bad);
end
$$;
comment on function private.pull_receive(uuid, jsonb) is
  'pull-leads: private.inbox_receive of provider rows ([{event_id, event_type, payload, process, extra}]), then the pending ones that carry extra (a Meta lead as pulled) finished with it instead of a fetch. A row already received by webhook changes nothing.';
revoke all on function private.pull_receive(uuid, jsonb) from public;
grant execute on function private.pull_receive(uuid, jsonb) to service_role;

create or replace function private.pull_cursor_get(p_integration uuid, p_stream text)
returns timestamptz
language sql stable security definer
set search_path = ''
as $$
  select c.cursor_at from private.pull_cursors c where c.integration_id = p_integration and c.stream = p_stream
$$;
revoke all on function private.pull_cursor_get(uuid, text) from public;
grant execute on function private.pull_cursor_get(uuid, text) to service_role;

create or replace function private.pull_cursor_set(p_integration uuid, p_stream text, p_at timestamptz)
returns void
language sql volatile security definer
set search_path = ''
as $$
  -- Never backwards: two pulls running at once leave the later cursor.
  insert into private.pull_cursors as c (integration_id, stream, cursor_at)
  values (p_integration, p_stream, p_at)
  on conflict on constraint pull_cursors_pkey do update
     set cursor_at = greatest(c.cursor_at, excluded.cursor_at), updated_at = pg_catalog.now()
$$;
revoke all on function private.pull_cursor_set(uuid, text, timestamptz) from public;
grant execute on function private.pull_cursor_set(uuid, text, timestamptz) to service_role;

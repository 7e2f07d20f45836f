-- Imports (SPEC 13): `crm import customers|leads|orders` hands batches of prepared rows to
-- private.import_rows, which writes each row in its own savepoint through the same rules as every
-- other writer: private.find_or_create_customer, the enums, CHECKs and triggers (status events and
-- outbox rows carry the note 'import'). The dry run calls the same function in a transaction it
-- rolls back, so its report is what --apply would do. Idempotent by legacy_id: a row whose values
-- are already there updates nothing (no new row version, updated_at unchanged).
-- Backup pulls (pull-leads): private.pull_receive feeds provider rows into the inbox with the
-- webhooks' event ids; the table of cursors is in the migration that added orders.legacy_id.

create or replace function private.import_number(value text, field text, money boolean)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  if value is null then
    return null;
  elsif not money and value !~ '^\s*[0-9]{1,18}\s*$' then
    raise sqlstate 'PT422' using message = 'must be a whole number', detail = 'invalid_number', hint = field;
  elsif value !~ '^\s*-?[0-9]{1,18}(\.[0-9]+)?\s*$' then
    raise sqlstate 'PT422' using message = 'must be a number (a dot before the decimals)', detail = 'invalid_number',
      hint = field;
  elsif value ~ '\.[0-9]*[1-9][0-9]*\s*$' and value !~ '\.[0-9]{1,2}0*\s*$' then
    -- Money is refused beyond cents, never rounded (numeric(12, 2) would round it silently).
    raise sqlstate 'PT422' using message = 'must not have more than cents', detail = 'invalid_amount', hint = field;
  end if;
  return value::numeric;
end
$$;
comment on function private.import_number(text, text, boolean) is
  'crm import: a file''s text as a number, PT422 naming the field otherwise: an id (whole, not money) or money (at most cents).';
revoke all on function private.import_number(text, text, boolean) from public;

create or replace function private.import_time(value text, field text)
returns timestamptz
language plpgsql stable
set search_path = ''
as $$
begin
  return value::timestamptz;
exception when others then
  raise sqlstate 'PT422' using message = 'must be a date and time (ISO 8601)', detail = 'invalid_time', hint = field;
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

create or replace function private.import_customer(p_org uuid, r jsonb, out customer_id uuid, out created boolean,
                                                   out changed boolean)
language plpgsql volatile
set search_path = ''
as $$
declare
  v_phone text := r ->> 'phone_e164';
  v_email text := r ->> 'email';
  n integer;
begin
  select f.customer_id, f.created into customer_id, created
    from private.find_or_create_customer(p_org, v_phone, v_email, r ->> 'full_name',
                                         pg_catalog.jsonb_build_object('preferred_channel', r ->> 'preferred_channel',
                                                                       'city', r ->> 'city')) f;
  changed := created;
  if created then
    return;
  end if;
  -- A known customer: fill in only what it lacks (the CRM's data wins over the legacy file), and
  -- only when something differs, so a second import writes nothing.
  update public.customers c
     set full_name = case when c.full_name in (c.phone_e164, c.email) and r ->> 'full_name' is not null
                          then r ->> 'full_name' else c.full_name end,
         phone_e164 = coalesce(c.phone_e164, case when not exists (
                        select from public.customers o where o.org_id = p_org and o.phone_e164 = v_phone)
                        then v_phone end),
         email = coalesce(c.email, case when not exists (
                   select from public.customers o where o.org_id = p_org and pg_catalog.lower(o.email) = v_email)
                   then v_email end),
         preferred_channel = coalesce(c.preferred_channel, r ->> 'preferred_channel'),
         city = coalesce(c.city, r ->> 'city')
   where c.id = import_customer.customer_id
     and ((c.full_name in (c.phone_e164, c.email) and r ->> 'full_name' is not null
           and r ->> 'full_name' is distinct from c.full_name)
          or (c.phone_e164 is null and v_phone is not null)
          or (c.email is null and v_email is not null)
          or (c.preferred_channel is null and r ->> 'preferred_channel' is not null)
          or (c.city is null and r ->> 'city' is not null));
  get diagnostics n = row_count;
  changed := n > 0;
end
$$;
comment on function private.import_customer(uuid, jsonb) is
  'crm import: the row''s customer through private.find_or_create_customer; a known one gets only the fields it lacks. Returns (customer_id, created, changed).';
revoke all on function private.import_customer(uuid, jsonb) from public;

create or replace function private.import_lead(p_org uuid, r jsonb, p_customer uuid)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  v_legacy bigint := private.import_number(r ->> 'legacy_id', 'legacy_id', false)::bigint;
  v_status text := private.import_enum(r ->> 'status', 'status', pg_catalog.enum_range(null::public.lead_status));
  v_created timestamptz := private.import_time(r ->> 'created_at', 'created_at');
  existing public.leads;
  v_id uuid;
  n integer;
begin
  if v_legacy is null then
    raise sqlstate 'PT422' using message = 'is required: the lead''s id in the old system', detail = 'required',
      hint = 'legacy_id';
  end if;
  select l.* into existing from public.leads l where l.legacy_id = v_legacy for update;
  if existing.id is null then
    insert into public.leads (legacy_id, org_id, customer_id, source, status, external_item_ref, notes, created_at)
    values (v_legacy, p_org, p_customer, 'import', coalesce(v_status, 'new')::public.lead_status,
            r ->> 'external_item_ref', r ->> 'notes', coalesce(v_created, pg_catalog.now()))
    on conflict on constraint leads_legacy_id_key do nothing
    returning id into v_id;
    if v_id is not null then
      insert into public.activities (org_id, customer_id, lead_id, kind, occurred_at, summary, data, created_by,
                                     source_ref)
      values (p_org, p_customer, v_id, 'import', pg_catalog.now(), 'Imported lead ' || v_legacy,
              pg_catalog.jsonb_build_object('legacy_id', v_legacy), null, 'lead:' || v_legacy);
      return 'created';
    end if;
    -- A concurrent import inserted this legacy_id first (the insert waited for its commit): that row is
    -- the one to compare with, as on a rerun.
    select l.* into existing from public.leads l where l.legacy_id = v_legacy for update;
  end if;
  if existing.org_id <> p_org then
    raise sqlstate 'PT409' using message = 'this legacy_id belongs to a lead of another organization',
      detail = 'legacy_id_taken', hint = 'legacy_id';
  end if;
  update public.leads l
     set status = coalesce(v_status::public.lead_status, l.status),
         external_item_ref = coalesce(r ->> 'external_item_ref', l.external_item_ref),
         notes = coalesce(r ->> 'notes', l.notes)
   where l.id = existing.id
     and (coalesce(v_status::public.lead_status, l.status), coalesce(r ->> 'external_item_ref', l.external_item_ref),
          coalesce(r ->> 'notes', l.notes))
         is distinct from (l.status, l.external_item_ref, l.notes);
  get diagnostics n = row_count;
  return case when n > 0 then 'updated' else 'unchanged' end;
end
$$;
comment on function private.import_lead(uuid, jsonb, uuid) is
  'crm import leads: a new lead (source import, activity kind import) by legacy_id, or the existing one updated only where the row differs (status through the lead machine).';
revoke all on function private.import_lead(uuid, jsonb, uuid) from public;

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
  r jsonb;
  c record;
  v_outcome text;
begin
  if p_kind not in ('customers', 'leads', 'orders') then
    raise sqlstate 'PT422' using message = 'kind must be customers, leads or orders', detail = 'kind_unknown';
  end if;
  -- Status events and outbox rows of this transaction say where the change came from.
  perform pg_catalog.set_config('crm.status_note', 'import', true);
  for r in select x from pg_catalog.jsonb_array_elements(p_rows) x loop
    line := (r ->> 'line')::integer;
    customer_created := false;
    err_state := null; err_message := null; err_hint := null; err_constraint := null; err_column := null;
    begin  -- a savepoint per row: a bad row leaves nothing behind
      c := private.import_customer(p_org, r);
      customer_created := c.created;
      v_outcome := case p_kind
        when 'customers' then case when c.changed and not c.created then 'updated'
                                   when c.created then 'created' else 'unchanged' end
        when 'leads' then private.import_lead(p_org, r, c.customer_id)
        else private.import_order(p_org, r, c.customer_id)
      end;
      outcome := case when v_outcome = 'unchanged' and c.changed and p_kind <> 'customers' then 'updated'
                      when v_outcome = 'unchanged' then 'skipped' else v_outcome end;
    exception when others then
      get stacked diagnostics err_state = returned_sqlstate, err_message = message_text, err_hint = pg_exception_hint,
        err_constraint = constraint_name, err_column = column_name;
      outcome := 'bad';
      customer_created := false;
    end;
    return next;
  end loop;
end
$$;
comment on function private.import_rows(uuid, text, jsonb) is
  'crm import: writes prepared rows ([{line, legacy_id, full_name, phone_e164, email, ...}]) of one kind, each in its own savepoint; one result per row: created / updated / skipped / bad (with the refusal). The caller commits (--apply) or rolls back (dry run).';
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

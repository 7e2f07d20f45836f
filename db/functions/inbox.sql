-- Webhooks in (SPEC 10, 11): integration RPCs, the inbox (receive, process, retry) and what each
-- source's events do; the integration_events and timeline views. Tables in the migration that
-- created public.integrations. plpgsql where a body names RLS helpers (applied before db/policies/).

-- ---------------------------------------------------------------------------------------------
-- Integration RPCs (admins)
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.integration_secret_names(kind text)
returns text[]
language sql immutable
set search_path = ''
as $$
  select case kind
    when 'wms' then array['webhook_secret', 'api_key']
    when 'twilio' then array['auth_token']
    when 'meta' then array['app_secret', 'page_access_token']
  end
$$;
comment on function hidden.integration_secret_names(text) is 'The secrets an integration of this kind holds (SPEC 10).';
revoke all on function hidden.integration_secret_names(text) from public;

create or replace function hidden.random_token(bytes integer)
returns text
language sql volatile
set search_path = ''
as $$
  -- Core only, as hidden.new_webhook_secret: gen_random_uuid() draws from the strong random source.
  select pg_catalog.translate(pg_catalog.rtrim(pg_catalog.encode(pg_catalog.substr(
           pg_catalog.sha256(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                             || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                             || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), 1, bytes), 'base64'), '='),
         '+/', '-_')
$$;
comment on function hidden.random_token(integer) is 'A URL-safe random token of up to 32 bytes (e.g. a Meta verify_token).';
revoke all on function hidden.random_token(integer) from public;

create or replace function private.check_integration_secret(kind text, name text, value jsonb)
returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  if not name = any (hidden.integration_secret_names(kind)) then
    raise sqlstate 'PT422' using message = 'a ' || kind || ' integration has no secret ' || pg_catalog.quote_literal(name)
      || ' (it has ' || pg_catalog.array_to_string(hidden.integration_secret_names(kind), ', ') || ')',
      detail = 'secret_unknown', hint = 'secrets.' || name;
  end if;
  if pg_catalog.jsonb_typeof(value) is distinct from 'string'
     or pg_catalog.char_length(value #>> '{}') not between 8 and 4096 then
    raise sqlstate 'PT422' using message = 'must be a string of 8 to 4096 characters', detail = 'secret_invalid',
      hint = 'secrets.' || name;
  end if;
  if name = 'webhook_secret' and (value #>> '{}') !~ '^whsec_[A-Za-z0-9+/]+={0,2}$' then
    raise sqlstate 'PT422' using message = 'must be a Standard Webhooks secret (whsec_ + base64)',
      detail = 'secret_invalid', hint = 'secrets.' || name;
  end if;
  return value #>> '{}';
end
$$;
revoke all on function private.check_integration_secret(text, text, jsonb) from public;

create or replace function public.create_integration(org_id uuid, kind text, settings jsonb default '{}',
                                                     secrets jsonb default '{}')
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_settings jsonb := coalesce(create_integration.settings, '{}');
  v_secrets jsonb := coalesce(create_integration.secrets, '{}');
  generated jsonb := '{}';
  integ public.integrations;
  s record;
begin
  perform hidden.org_admin_check(create_integration.org_id, 'integrations');
  if hidden.integration_secret_names(create_integration.kind) is null then
    raise sqlstate 'PT422' using message = 'kind must be wms, twilio or meta', detail = 'kind_unknown', hint = 'kind';
  end if;
  if pg_catalog.jsonb_typeof(v_settings) <> 'object' then
    raise sqlstate 'PT422' using message = 'must be a JSON object', detail = 'settings_invalid', hint = 'settings';
  end if;
  if pg_catalog.jsonb_typeof(v_secrets) <> 'object' then
    raise sqlstate 'PT422' using message = 'must be a JSON object', detail = 'secrets_invalid', hint = 'secrets';
  end if;
  if v_settings ?| array['webhook_secret', 'api_key', 'auth_token', 'app_secret', 'page_access_token'] then
    raise sqlstate 'PT422' using message = 'secrets go in secrets, never in settings', detail = 'secret_in_settings',
      hint = 'settings';
  end if;
  for s in select e.key, e.value from pg_catalog.jsonb_each(v_secrets) e loop
    perform private.check_integration_secret(create_integration.kind, s.key, s.value);
  end loop;
  if create_integration.kind = 'wms' then
    if not v_secrets ? 'webhook_secret' then
      generated := pg_catalog.jsonb_build_object('webhook_secret', hidden.new_webhook_secret());
      v_secrets := v_secrets || generated;
    end if;
  elsif create_integration.kind = 'meta' and coalesce(v_settings ->> 'verify_token', '') = '' then
    v_settings := v_settings || pg_catalog.jsonb_build_object('verify_token', hidden.random_token(24));
  end if;

  begin
    insert into public.integrations (org_id, kind, settings)
    values (create_integration.org_id, create_integration.kind, v_settings)
    returning * into integ;
  exception when unique_violation then
    raise sqlstate 'PT409' using message = 'this organization already has a ' || create_integration.kind
      || ' integration', detail = 'integration_exists';
  end;
  insert into private.integration_secrets (integration_id, name, pending)
  select integ.id, e.key, e.value from pg_catalog.jsonb_each_text(v_secrets) e;
  -- process-inbox seals them (every 5 s under crm dev and crm worker); until then the receiver reads them parked.
  return pg_catalog.to_jsonb(integ) || pg_catalog.jsonb_build_object('secrets', generated);
end
$$;
comment on function public.create_integration(uuid, text, jsonb, jsonb) is
  'Admins: an integration (wms, twilio, meta) of their org with its secrets (stored encrypted). Returns the integration and, under "secrets", any secret it generated (a wms webhook_secret when none is given), shown once. PT422 bad kind/settings/secrets, PT409 one per kind, PT404/PT403 non-staff/non-admins.';
revoke all on function public.create_integration(uuid, text, jsonb, jsonb) from public, anon;
grant execute on function public.create_integration(uuid, text, jsonb, jsonb) to authenticated, service_role;

create or replace function public.rotate_integration_secret(integration_id uuid, name text, value text default null,
                                                            keep_old interval default '24 hours')
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  integ public.integrations;
  v_value text := rotate_integration_secret.value;
  generated boolean := false;
  old_until timestamptz;
begin
  select i.* into integ from public.integrations i where i.id = rotate_integration_secret.integration_id;
  if not found then
    raise sqlstate 'PT404' using message = 'integration not found', detail = 'not_found';
  end if;
  perform hidden.org_admin_check(integ.org_id, 'integrations');
  if v_value is null then
    if rotate_integration_secret.name <> 'webhook_secret' then
      perform private.check_integration_secret(integ.kind, rotate_integration_secret.name, '"generated-value"');
      raise sqlstate 'PT422' using message = 'give the new value: the provider issues this secret',
        detail = 'value_required', hint = 'value';
    end if;
    v_value := hidden.new_webhook_secret();
    generated := true;
  end if;
  perform private.check_integration_secret(integ.kind, rotate_integration_secret.name, pg_catalog.to_jsonb(v_value));
  if keep_old is null or keep_old < interval '0' or keep_old > interval '30 days' then
    raise sqlstate 'PT422' using message = 'keep_old must be between 0 and 30 days',
      detail = 'keep_old_out_of_range', hint = 'keep_old';
  end if;
  old_until := pg_catalog.now() + keep_old;
  delete from private.integration_secrets s
   where s.integration_id = integ.id and s.expires_at <= pg_catalog.now();
  update private.integration_secrets s
     set expires_at = least(coalesce(s.expires_at, old_until), old_until)
   where s.integration_id = integ.id and s.name = rotate_integration_secret.name;
  insert into private.integration_secrets (integration_id, name, pending)
  values (integ.id, rotate_integration_secret.name, v_value);
  update public.integrations i set updated_at = pg_catalog.now() where i.id = integ.id;
  return pg_catalog.jsonb_build_object('integration_id', integ.id, 'name', rotate_integration_secret.name,
                                       'old_valid_until', old_until)
         || case when generated then pg_catalog.jsonb_build_object('value', v_value) else '{}' end;
end
$$;
comment on function public.rotate_integration_secret(uuid, text, text, interval) is
  'Admins: a new value for one secret of an integration (null value: generated, webhook_secret only; returned once). The old values keep verifying until keep_old has passed (0 to 30 days).';
revoke all on function public.rotate_integration_secret(uuid, text, text, interval) from public, anon;
grant execute on function public.rotate_integration_secret(uuid, text, text, interval) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- The inbox: receive, process, retry
-- ---------------------------------------------------------------------------------------------
create or replace function private.inbox_backoff(attempt integer)
returns interval
language sql volatile
set search_path = ''
as $$
  -- 30 s, 2 min, 10 min, 30 min, 2 h, 6 h, 12 h (+-20 % jitter); null after the 8th attempt: dead.
  select private.queue_backoff(attempt, array[interval '30 seconds', interval '2 minutes', interval '10 minutes',
                                              interval '30 minutes', interval '2 hours', interval '6 hours',
                                              interval '12 hours'])
$$;
comment on function private.inbox_backoff(integer) is
  'The inbox retry schedule: the delay after the given failed attempt, null once it was the 8th (dead).';
revoke all on function private.inbox_backoff(integer) from public;
drop function if exists private.inbox_max_attempts();

create or replace function private.inbox_uuid(value text)
returns uuid
language sql immutable
set search_path = ''
as $$
  select case when value ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then value::uuid end
$$;
revoke all on function private.inbox_uuid(text) from public;

create or replace function private.inbox_apply_wms(ev private.inbound_events)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  d jsonb := coalesce(ev.payload -> 'data', '{}');
  t text := ev.event_type;
  v_updated timestamptz := (d ->> 'updated_at')::timestamptz;
  v_wms text := nullif(d ->> 'wms_order_id', '');
  v_order public.orders;
  v_customer uuid;
  v_lines jsonb := case when pg_catalog.jsonb_typeof(d -> 'lines') = 'array' then d -> 'lines' end;
  v_shipment jsonb;
  v_items integer := 0;
  v_changed integer := 0;
  v_fresh boolean := true;  -- false: the cache holds newer data than this event
  v_summary text;
  n integer;
  item jsonb;
begin
  if t not in ('inquiry.created', 'inquiry.converted', 'reservation.created', 'reservation.released',
               'order.created', 'order.fulfilled', 'order.cancelled', 'shipment.posted',
               'inventory.updated', 'inventory.low_stock') then
    return 'unknown event type ' || t;
  end if;
  if pg_catalog.jsonb_typeof(d) <> 'object' then
    raise exception 'data must be an object';
  end if;
  select o.* into v_order from public.orders o
   where o.org_id = ev.org_id and o.id = private.inbox_uuid(d ->> 'crm_order_id');
  if v_order.id is null and v_wms is not null then
    select o.* into v_order from public.orders o where o.org_id = ev.org_id and o.wms_order_id = v_wms;
  end if;
  select c.id into v_customer from public.customers c
   where c.org_id = ev.org_id and c.id = private.inbox_uuid(d ->> 'crm_customer_id');
  v_customer := coalesce(v_customer, v_order.customer_id);

  if t like 'inventory.%' then
    if pg_catalog.jsonb_typeof(d -> 'items') is distinct from 'array' then
      raise exception 'inventory events carry items (an array)';
    end if;
    for item in select x from pg_catalog.jsonb_array_elements(d -> 'items') x loop
      v_items := v_items + 1;
      if nullif(item ->> 'sku', '') is null then
        raise exception 'item % has no sku', v_items;
      end if;
      -- Last writer by the source's updated_at, never by arrival: an older update changes nothing.
      insert into public.inventory_items as i (org_id, sku, name, attributes, available, reserved, total, unit,
                                               source_updated_at, cached_at)
      values (ev.org_id, item ->> 'sku', item ->> 'name', coalesce(item -> 'attributes', '{}'),
              (item ->> 'available')::numeric, (item ->> 'reserved')::numeric, (item ->> 'total')::numeric,
              item ->> 'unit', coalesce((item ->> 'updated_at')::timestamptz, v_updated), pg_catalog.now())
      on conflict on constraint inventory_items_pkey do update
         set name = excluded.name, attributes = excluded.attributes, available = excluded.available,
             reserved = excluded.reserved, total = excluded.total, unit = excluded.unit,
             source_updated_at = excluded.source_updated_at, cached_at = excluded.cached_at
       where i.source_updated_at is null
          or (excluded.source_updated_at is not null and excluded.source_updated_at >= i.source_updated_at);
      get diagnostics n = row_count;
      v_changed := v_changed + n;
    end loop;
  end if;

  if t = 'shipment.posted' then
    v_shipment := pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
      'provider', d ->> 'provider', 'tracking_number', d ->> 'tracking_number',
      'delivery_status', d ->> 'delivery_status', 'estimated_delivery', d ->> 'estimated_delivery'));
  end if;

  if v_wms is not null then
    insert into public.wms_orders as w (org_id, wms_order_id, crm_customer_id, crm_order_id, status, lines, shipment,
                                        source_updated_at, cached_at)
    values (ev.org_id, v_wms, private.inbox_uuid(d ->> 'crm_customer_id'), private.inbox_uuid(d ->> 'crm_order_id'),
            coalesce(nullif(d ->> 'status', ''), case t
              when 'inquiry.created' then 'inquiry' when 'inquiry.converted' then 'converted'
              when 'reservation.created' then 'reserved' when 'reservation.released' then 'released'
              when 'order.created' then 'created' when 'order.fulfilled' then 'fulfilled'
              when 'order.cancelled' then 'cancelled' when 'shipment.posted' then 'shipped' end),
            coalesce(v_lines, '[]'), v_shipment, v_updated, pg_catalog.now())
    on conflict on constraint wms_orders_pkey do update
       set crm_customer_id = coalesce(excluded.crm_customer_id, w.crm_customer_id),
           crm_order_id = coalesce(excluded.crm_order_id, w.crm_order_id),
           status = excluded.status,
           lines = coalesce(v_lines, w.lines),
           shipment = coalesce(v_shipment, w.shipment),
           source_updated_at = excluded.source_updated_at,
           cached_at = excluded.cached_at
     where w.source_updated_at is null
        or (excluded.source_updated_at is not null and excluded.source_updated_at >= w.source_updated_at);
    get diagnostics n = row_count;
    v_fresh := n > 0;
    -- Both sides keep the other's id: our order learns the warehouse's, unless another order has it.
    if v_order.id is not null and v_order.wms_order_id is null
       and not exists (select from public.orders o where o.org_id = ev.org_id and o.wms_order_id = v_wms) then
      update public.orders o set wms_order_id = v_wms where o.id = v_order.id;
    end if;
  end if;

  if t = 'shipment.posted' and v_order.id is not null and v_fresh then
    if nullif(d ->> 'provider', '') is null then
      raise exception 'shipment.posted needs a provider';
    end if;
    update public.shipments s
       set tracking_number = coalesce(d ->> 'tracking_number', s.tracking_number),
           delivery_status = coalesce(d ->> 'delivery_status', s.delivery_status),
           estimated_delivery = coalesce((d ->> 'estimated_delivery')::date, s.estimated_delivery),
           shipped_at = coalesce(s.shipped_at, v_updated, pg_catalog.now())
     where s.org_id = ev.org_id and s.order_id = v_order.id and s.provider = d ->> 'provider'
       and (s.tracking_number is null or s.tracking_number = d ->> 'tracking_number');
    get diagnostics n = row_count;
    if n = 0 then
      insert into public.shipments (org_id, order_id, provider, tracking_number, delivery_status, estimated_delivery,
                                    shipped_at)
      values (ev.org_id, v_order.id, d ->> 'provider', d ->> 'tracking_number',
              coalesce(d ->> 'delivery_status', 'in_transit'), (d ->> 'estimated_delivery')::date,
              coalesce(v_updated, pg_catalog.now()));
    end if;
    if v_order.status = 'paid_out' then
      perform pg_catalog.set_config('crm.status_note', 'Shipped by the warehouse: ' || (d ->> 'provider')
        || coalesce(' ' || (d ->> 'tracking_number'), ''), true);
      update public.orders o set status = 'shipped' where o.id = v_order.id;
      perform pg_catalog.set_config('crm.status_note', '', true);
    end if;
  end if;

  if v_customer is not null or v_order.id is not null then
    v_summary := 'Warehouse: ' || t || coalesce(' ' || v_wms, '')
      || case when t like 'inventory.%' then ' (' || v_items || ' items)' else '' end;
    insert into public.activities (org_id, customer_id, order_id, kind, occurred_at, summary, data, created_by)
    values (ev.org_id, v_customer, v_order.id, 'wms_event', coalesce(v_updated, pg_catalog.now()), v_summary,
            pg_catalog.jsonb_build_object('event_id', ev.event_id, 'type', t, 'wms_order_id', v_wms,
                                          'applied', v_fresh and (t not like 'inventory.%' or v_changed > 0)),
            null);
  end if;
  return null;
end
$$;
comment on function private.inbox_apply_wms(private.inbound_events) is
  'Effects of a warehouse event (SPEC 10, 11): inventory and wms_orders caches (last writer by updated_at), the order''s shipment and paid_out -> shipped on shipment.posted, an activity on the customer''s/order''s timeline.';
revoke all on function private.inbox_apply_wms(private.inbound_events) from public;

create or replace function private.inbox_apply_twilio(ev private.inbound_events)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  p jsonb := ev.payload;
  caller text := p #>> '{crm,caller_e164}';
  v_customer uuid;
  v_lead uuid;
  v_status text := p ->> 'CallStatus';
  v_summary text;
begin
  if caller is null then
    return 'the caller''s number (' || coalesce(p #>> '{crm,caller}', 'none') || ') is not a phone number: nothing to attach the call to';
  end if;
  select f.customer_id into v_customer from private.find_or_create_customer(ev.org_id, caller, null) f;
  -- One open lead per customer, also for concurrent calls: they queue on the customer's row.
  perform from public.customers c where c.id = v_customer for update;
  select l.id into v_lead from public.leads l
   where l.org_id = ev.org_id and l.customer_id = v_customer and l.status in ('new', 'contacted', 'qualified')
   order by l.created_at desc limit 1;
  if v_lead is null then
    insert into public.leads (org_id, customer_id, source) values (ev.org_id, v_customer, 'phone_call')
    returning id into v_lead;
  end if;
  v_summary := pg_catalog.initcap(coalesce(p #>> '{crm,direction}', 'inbound')) || ' call ' || coalesce(v_status, '')
    || coalesce(' (' || nullif(p ->> 'CallDuration', '') || ' s)', '');
  insert into public.activities as a (org_id, customer_id, lead_id, kind, occurred_at, summary, data, created_by, source_ref)
  values (ev.org_id, v_customer, v_lead, 'call', coalesce((p #>> '{crm,occurred_at}')::timestamptz, pg_catalog.now()),
          v_summary,
          pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
            'call_sid', p ->> 'CallSid', 'status', v_status, 'direction', p ->> 'Direction',
            'duration', p ->> 'CallDuration', 'from', p ->> 'From', 'to', p ->> 'To')),
          null, p ->> 'CallSid')
  on conflict (org_id, kind, source_ref) where source_ref is not null do update
     set summary = excluded.summary, data = a.data || excluded.data;
  return null;
end
$$;
comment on function private.inbox_apply_twilio(private.inbound_events) is
  'Effects of a Twilio call status callback (SPEC 10): the caller''s customer found or created by phone, a phone_call lead unless one is open, the call as one activity per CallSid (updated by later statuses).';
revoke all on function private.inbox_apply_twilio(private.inbound_events) from public;

create or replace function private.inbox_apply_meta(ev private.inbound_events, lead jsonb)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  v_customer uuid;
  v_lead uuid;
  leadgen text := ev.event_id;
begin
  if lead is null then
    raise exception 'the lead has not been fetched from the Graph API yet';
  end if;
  if exists (select from public.activities a
              where a.org_id = ev.org_id and a.kind = 'ad_lead' and a.source_ref = leadgen) then
    return 'this leadgen_id is already a lead';
  end if;
  if lead ->> 'phone_e164' is null and lead ->> 'email' is null then
    return 'the lead form has neither a phone number nor an email address';
  end if;
  select f.customer_id into v_customer
    from private.find_or_create_customer(ev.org_id, lead ->> 'phone_e164', lead ->> 'email', lead ->> 'full_name') f;
  insert into public.leads (org_id, customer_id, source) values (ev.org_id, v_customer, 'ads_form')
  returning id into v_lead;
  insert into public.activities (org_id, customer_id, lead_id, kind, occurred_at, summary, data, created_by, source_ref)
  values (ev.org_id, v_customer, v_lead, 'ad_lead', coalesce((lead ->> 'created_time')::timestamptz, pg_catalog.now()),
          'Ad lead form' || coalesce(' ' || (lead ->> 'form_id'), ''),
          pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
            'leadgen_id', leadgen, 'form_id', lead ->> 'form_id', 'ad_id', lead ->> 'ad_id',
            'page_id', ev.payload ->> 'page_id', 'fields', lead -> 'fields')),
          null, leadgen);
  return null;
end
$$;
comment on function private.inbox_apply_meta(private.inbound_events, jsonb) is
  'Effects of a Meta lead (SPEC 10), once fetched: the customer by phone then email, one ads_form lead per leadgen_id, an ad_lead activity.';
revoke all on function private.inbox_apply_meta(private.inbound_events, jsonb) from public;

create or replace function private.inbox_try(ev private.inbound_events, extra jsonb, fetch_error text default null)
returns text
language plpgsql volatile
set search_path = ''
as $$
declare
  note text;
  msg text;
  state text;
  outcome text;
  delay interval;
begin
  if fetch_error is null then
    begin  -- a savepoint: a failing event leaves no half effect, and stays stored
      note := case ev.source
        when 'wms' then private.inbox_apply_wms(ev)
        when 'twilio' then private.inbox_apply_twilio(ev)
        when 'meta' then private.inbox_apply_meta(ev, extra)
      end;
      update private.inbound_events e
         set status = case when note is null then 'processed' else 'ignored' end, error = pg_catalog.left(note, 1000),
             attempts = e.attempts + 1, processed_at = pg_catalog.now(), next_attempt_at = null, locked_until = null,
             lease_token = null
       where e.id = ev.id;
      return case when note is null then 'processed' else 'ignored' end;
    exception when others then
      get stacked diagnostics msg = message_text, state = returned_sqlstate;
      fetch_error := state || ': ' || msg;
    end;
  end if;
  delay := private.inbox_backoff(ev.attempts + 1);  -- ev is locked (inbox_finish) or just inserted
  update private.inbound_events e
     set status = case when delay is null then 'dead' else 'failed' end,
         attempts = e.attempts + 1, error = pg_catalog.left(fetch_error, 1000), locked_until = null,
         lease_token = null, next_attempt_at = pg_catalog.now() + delay
   where e.id = ev.id
  returning e.status into outcome;
  return outcome;
end
$$;
comment on function private.inbox_try(private.inbound_events, jsonb, text) is
  'Processes one stored event in a savepoint and records the outcome: processed / ignored (nothing to do, error says why) / failed (retried with backoff) / dead after 8 attempts. fetch_error: what fetching its data failed with (process-inbox).';
revoke all on function private.inbox_try(private.inbound_events, jsonb, text) from public;

create or replace function private.inbox_receive(p_integration uuid, p_events jsonb)
returns jsonb
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  integ public.integrations;
  e jsonb;
  ev private.inbound_events;
  outcome text;
  accepted integer := 0;
  duplicates integer := 0;
  processed integer := 0;
  failed integer := 0;
begin
  select i.* into integ from public.integrations i where i.id = p_integration;
  if not found or not integ.enabled then
    raise sqlstate 'PT404' using message = 'No such webhook source for this organization.', detail = 'not_found';
  end if;
  for e in select x from pg_catalog.jsonb_array_elements(p_events) x loop
    -- A repeated delivery waits here for the first one's commit, then inserts nothing: one effect.
    insert into private.inbound_events as r (org_id, integration_id, source, event_id, event_type, payload,
                                             next_attempt_at)
    values (integ.org_id, integ.id, integ.kind, e ->> 'event_id', e ->> 'event_type', e -> 'payload', pg_catalog.now())
    on conflict on constraint inbound_events_integration_event_key do nothing
    returning r.* into ev;
    if not found then
      duplicates := duplicates + 1;
      continue;
    end if;
    accepted := accepted + 1;
    if coalesce((e ->> 'process')::boolean, true) then
      outcome := private.inbox_try(ev, null);
      if outcome in ('failed', 'dead') then failed := failed + 1; else processed := processed + 1; end if;
    end if;
  end loop;
  return pg_catalog.jsonb_build_object('accepted', accepted, 'duplicates', duplicates, 'processed', processed,
                                       'failed', failed);
end
$$;
comment on function private.inbox_receive(uuid, jsonb) is
  'Stores verified events ([{event_id, event_type, payload, process}]) once per (integration, event id) and processes those marked process in the same transaction. PT404 for an unknown or disabled integration (nothing stored). service_role (the webhooks function).';
revoke all on function private.inbox_receive(uuid, jsonb) from public;
grant execute on function private.inbox_receive(uuid, jsonb) to service_role;

drop function if exists private.inbox_claim(integer, integer);
create or replace function private.inbox_claim(p_limit integer, p_lease_seconds integer, p_token uuid)
returns table (id bigint, org_id uuid, integration_id uuid, source text, event_id text, event_type text,
               payload jsonb, attempts integer, default_country text)
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  claimed bigint[];
begin
  select pg_catalog.array_agg(c.id::bigint) into claimed
    from private.queue_claim('inbox', p_limit, p_token, pg_catalog.make_interval(secs => p_lease_seconds)) c;
  -- A second statement: its snapshot sees every row the claim took.
  return query
  select e.id, e.org_id, e.integration_id, e.source, e.event_id, e.event_type, e.payload, e.attempts,
         o.default_country
    from private.inbound_events e join public.organizations o on o.id = e.org_id
   where e.id = any (claimed)
   order by e.next_attempt_at, e.id;
end
$$;
comment on function private.inbox_claim(integer, integer, uuid) is
  'process-inbox: claims up to p_limit due events (pending or failed, next_attempt_at passed, no running lease) leased to p_token (private.queue_claim); a worker that dies leaves them to the next claim after the lease.';
revoke all on function private.inbox_claim(integer, integer, uuid) from public;
grant execute on function private.inbox_claim(integer, integer, uuid) to service_role;

create or replace function private.inbox_finish(p_id bigint, p_extra jsonb, p_error text)
returns text
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  ev private.inbound_events;
begin
  select e.* into ev from private.inbound_events e where e.id = p_id for update;
  if not found or ev.status not in ('pending', 'failed') then
    return coalesce(ev.status, 'missing');  -- finished meanwhile: nothing to do
  end if;
  return private.inbox_try(ev, p_extra, p_error);
end
$$;
comment on function private.inbox_finish(bigint, jsonb, text) is
  'pull-leads: processes a stored event with the data pulled for it (p_extra) whoever holds it: the outcome is recorded once (the row lock), and a process-inbox run still fetching it finds it finished. process-inbox itself finishes under its lease (the four-argument form).';
revoke all on function private.inbox_finish(bigint, jsonb, text) from public;
grant execute on function private.inbox_finish(bigint, jsonb, text) to service_role;

create or replace function private.inbox_finish(p_id bigint, p_extra jsonb, p_error text, p_token uuid)
returns text
language sql volatile security definer
set search_path = ''
as $$
  -- Not ours any more (finished meanwhile, or the lease ran out and another run holds it): nothing to do.
  select case when private.queue_hold('inbox', p_id::text, p_token) then private.inbox_finish(p_id, p_extra, p_error)
              else coalesce((select e.status from private.inbound_events e where e.id = p_id), 'missing') end
$$;
comment on function private.inbox_finish(bigint, jsonb, text, uuid) is
  'process-inbox: processes an event claimed under p_token with what the worker fetched (p_extra), or records p_error (a failed fetch) with backoff; does nothing once the lease is no longer p_token''s.';
revoke all on function private.inbox_finish(bigint, jsonb, text, uuid) from public;
grant execute on function private.inbox_finish(bigint, jsonb, text, uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.integration_events()
returns table (id bigint, org_id uuid, integration_id uuid, source text, event_id text, event_type text,
               status text, attempts integer, error text, next_attempt_at timestamptz,
               received_at timestamptz, processed_at timestamptz)
language plpgsql stable security definer
set search_path = ''
as $$
begin
  -- private is out of the API roles' reach: this definer function is their window, admins only.
  return query
  select e.id, e.org_id, e.integration_id, e.source, e.event_id, e.event_type, e.status, e.attempts, e.error,
         e.next_attempt_at, e.received_at, e.processed_at
    from private.inbound_events e
   where e.org_id = any ((select hidden.staff_org_ids('admin'))::uuid[]);
end
$$;
comment on function hidden.integration_events() is
  'Inbound events of the organizations the caller administers, without payloads (behind public.integration_events).';
revoke all on function hidden.integration_events() from public;
grant execute on function hidden.integration_events() to authenticated;

create or replace view public.integration_events with (security_invoker = true) as
  select e.id, e.org_id, e.integration_id, e.source, e.event_id, e.event_type, e.status, e.attempts, e.error,
         e.next_attempt_at, e.received_at, e.processed_at
    from hidden.integration_events() e;
comment on view public.integration_events is
  'Admins: every inbound event of their organizations (SPEC 10): source, event id, type, status, attempts, error, received/processed times. No payloads.';
revoke all on public.integration_events from public, anon, authenticated, service_role;
grant select on public.integration_events to authenticated;

create or replace view public.timeline with (security_invoker = true) as
  select 'lead_status'::text as entry_type, e.id::text as entry_id, e.org_id, l.customer_id, e.lead_id,
         null::uuid as order_id, e.created_at as occurred_at, 'status'::text as kind,
         e.from_status::text as from_status, e.to_status::text as to_status, e.note as summary,
         '{}'::jsonb as data, e.changed_by as actor
    from public.lead_status_events e
    join public.leads l on l.org_id = e.org_id and l.id = e.lead_id
  union all
  select 'order_status', e.id::text, e.org_id, o.customer_id, o.lead_id, e.order_id, e.created_at, 'status',
         e.from_status::text, e.to_status::text, e.change_notes, '{}'::jsonb, e.changed_by
    from public.order_status_events e
    join public.orders o on o.org_id = e.org_id and o.id = e.order_id
  union all
  select 'activity', a.id::text, a.org_id, a.customer_id, a.lead_id, a.order_id, a.occurred_at, a.kind,
         null, null, a.summary, a.data, a.created_by
    from public.activities a;
comment on view public.timeline is
  'Status events and activities of a customer, lead or order in one list (SPEC 10): filter by customer_id, lead_id or order_id and order by occurred_at. Under the caller''s RLS (security_invoker).';
revoke all on public.timeline from public, anon, authenticated, service_role;
grant select on public.timeline to authenticated, service_role;

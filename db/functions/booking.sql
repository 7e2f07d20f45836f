-- create_booking (SPEC 7.1): the current definition; db/migrations/0005_booking.sql created it and
-- explains the design. Here because it now finds or creates its customer through
-- private.find_or_create_customer (db/functions/customers.sql), shared with webhooks and imports.

create or replace function public.create_booking(
  p_org text,
  p_order_id uuid,
  p_customer jsonb,
  p_item_snapshot jsonb,
  p_tracking_token_hash bytea,
  p_price_amount numeric default null,
  p_currency text default null,
  p_booking_amount numeric default null,
  p_delivery_method text default null,
  p_notes text default null,
  p_booking_meta jsonb default '{}',
  p_idempotency_key text default null,
  p_request_hash bytea default null,
  p_client inet default null,
  p_rate_limit integer default 0,
  p_rate_window_seconds integer default 600
)
returns table (order_id uuid, order_code text, status public.order_status, lead_id uuid,
               customer_id uuid, replayed boolean)
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_org uuid;
  v_key record;
  v_claimed boolean;
  v_window_start timestamptz;
  v_retry_after integer;
  v_hits integer;
  v_phone text := nullif(pg_catalog.btrim(p_customer ->> 'phone'), '');
  v_email text := nullif(pg_catalog.lower(pg_catalog.btrim(p_customer ->> 'email')), '');
  v_customer uuid;
  v_lead uuid := pg_catalog.gen_random_uuid();
  v_order uuid;
  v_code text;
begin
  if p_org ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    select o.id into v_org from public.organizations o where o.id = p_org::uuid;
  else
    select o.id into v_org from public.organizations o where o.slug = p_org;
  end if;
  if v_org is null then
    raise sqlstate 'PT404' using message = 'No such organization.', detail = 'org_not_found';
  end if;
  if p_order_id is null or p_tracking_token_hash is null then
    raise sqlstate 'PT422' using message = 'A booking needs its order id and tracking token hash.',
      detail = 'order_id_missing', hint = 'order_id';
  end if;
  -- The function checks the code's shape; the list of codes in use lives here, with the constraint.
  if p_currency is not null and not hidden.is_currency_code(p_currency) then
    raise sqlstate 'PT422' using message = 'is not an ISO 4217 currency code', detail = 'currency_unknown',
      hint = case when p_item_snapshot ? 'currency' then 'item.currency' else 'booking.currency' end;
  end if;

  -- Idempotency-Key: claim the key first. A concurrent request with the same key blocks on the
  -- unique index until this transaction ends, then finds the committed row and replays it (or,
  -- if this one rolled back, claims the key itself): one key never makes two orders. A key older
  -- than 24 hours is claimed afresh.
  if p_idempotency_key is not null then
    if p_request_hash is null then
      raise sqlstate 'PT422' using message = 'An Idempotency-Key needs the request hash.',
        detail = 'request_hash_missing', hint = 'Idempotency-Key';
    end if;
    -- The key is written once, complete: it names its order from the start (the order's id is the
    -- caller's; the foreign key is checked at commit) and holds the response's lead id, chosen here
    -- for the lead inserted below. The rest of the response is the order's own and immutable
    -- (order_code, customer_id: no role may update them), so a replay reads it from the order.
    -- (An UPDATE adding the response at the end re-ran the key's CHECKs and foreign-key checks.)
    insert into private.idempotency_keys as k (org_id, key, request_hash, order_id, response)
    values (v_org, p_idempotency_key, p_request_hash, p_order_id,
            pg_catalog.jsonb_build_object('order_id', p_order_id, 'status', 'pending_manager', 'lead_id', v_lead))
    on conflict on constraint idempotency_keys_pkey do update
       set request_hash = excluded.request_hash, order_id = excluded.order_id, response = excluded.response,
           created_at = pg_catalog.now()
     where k.created_at < pg_catalog.now() - interval '24 hours'
    returning true into v_claimed;
    if v_claimed is null then
      select k.request_hash, k.response, o.order_code, o.customer_id into v_key
        from private.idempotency_keys k
        left join public.orders o on o.id = k.order_id
       where k.org_id = v_org and k.key = p_idempotency_key;
      if v_key.request_hash is distinct from p_request_hash then
        raise sqlstate 'PT422' using
          message = 'This Idempotency-Key was already used with a different request body.',
          detail = 'idempotency_key_reused', hint = 'Idempotency-Key';
      end if;
      -- Keys written before 0020 hold the whole response.
      return query select (v_key.response ->> 'order_id')::uuid,
                          coalesce(v_key.response ->> 'order_code', v_key.order_code),
                          (v_key.response ->> 'status')::public.order_status,
                          (v_key.response ->> 'lead_id')::uuid,
                          coalesce((v_key.response ->> 'customer_id')::uuid, v_key.customer_id), true;
      return;
    end if;
  end if;

  -- Abuse limit, part 1: refuse at once, without taking any lock, a client already over it.
  if p_rate_limit > 0 and p_client is not null then
    v_window_start := pg_catalog.to_timestamp(
      pg_catalog.floor(extract(epoch from pg_catalog.now()) / p_rate_window_seconds) * p_rate_window_seconds);
    v_retry_after := greatest(1, pg_catalog.ceil(extract(epoch from
      v_window_start + pg_catalog.make_interval(secs => p_rate_window_seconds) - pg_catalog.now()))::integer);
    select c.hits into v_hits from private.booking_rate_counters c
     where c.client = p_client and c.window_start = v_window_start;
    if coalesce(v_hits, 0) >= p_rate_limit then
      raise sqlstate 'PT429' using message = 'Too many bookings from this address; try again later.',
        detail = 'rate_limited', hint = v_retry_after::text;
    end if;
  end if;

  -- The customer: the one find-or-create of every source (db/functions/customers.sql), race-free.
  select f.customer_id into v_customer
    from private.find_or_create_customer(v_org, v_phone, v_email, p_customer ->> 'full_name', p_customer) f;

  insert into public.leads as l (id, org_id, customer_id, source, item_snapshot, external_item_ref, notes)
  values (v_lead, v_org, v_customer, 'website_booking', p_item_snapshot, p_item_snapshot ->> 'external_ref', p_notes);

  -- new_order_code() skips codes in use; ON CONFLICT covers the race between two new codes.
  for attempt in 1..5 loop
    insert into public.orders as o (id, org_id, order_code, customer_id, lead_id, item_id, external_item_ref,
                                    item_snapshot, price_amount, currency, booking_amount, delivery_method,
                                    booking_meta, tracking_token_hash)
    values (p_order_id, v_org, hidden.new_order_code(), v_customer, v_lead, p_item_snapshot ->> 'item_id',
            p_item_snapshot ->> 'external_ref', p_item_snapshot, p_price_amount, p_currency, p_booking_amount,
            p_delivery_method, coalesce(p_booking_meta, '{}'), p_tracking_token_hash)
    on conflict on constraint orders_order_code_key do nothing
    returning o.id, o.order_code into v_order, v_code;
    exit when v_order is not null;
  end loop;
  if v_order is null then
    raise sqlstate 'PT503' using message = 'Could not allocate an order code; retry the booking.',
      detail = 'order_code_exhausted', hint = '1';
  end if;

  -- Abuse limit, part 2: count this booking. Done last, so the counter row stays locked only for
  -- the commit (it serialises concurrent bookings from one network, no one else).
  if v_window_start is not null then
    insert into private.booking_rate_counters as c (client, window_start, hits)
    values (p_client, v_window_start, 1)
    on conflict on constraint booking_rate_counters_pkey do update set hits = c.hits + 1
    returning c.hits into v_hits;
    if v_hits > p_rate_limit then
      raise sqlstate 'PT429' using message = 'Too many bookings from this address; try again later.',
        detail = 'rate_limited', hint = v_retry_after::text;
    end if;
  end if;

  return query select v_order, v_code, 'pending_manager'::public.order_status, v_lead, v_customer, false;
end
$$;
comment on function public.create_booking(text, uuid, jsonb, jsonb, bytea, numeric, text, numeric, text, text,
                                          jsonb, text, bytea, inet, integer, integer) is
  'POST /booking in one transaction (SPEC 7.1): resolves the org (PT404), replays or claims the Idempotency-Key (PT422 on another body), applies the abuse limit (PT429, hint = Retry-After), finds or creates the customer, creates the lead (website_booking, new) and the order (pending_manager) with id p_order_id and tracking_token_hash p_tracking_token_hash (the token is derived from that id, so each order has its own). A replay returns the earlier order''s ids. service_role only; p_customer/p_item_snapshot arrive normalised by the booking function.';
revoke all on function public.create_booking(text, uuid, jsonb, jsonb, bytea, numeric, text, numeric, text, text,
                                             jsonb, text, bytea, inet, integer, integer)
  from public, anon, authenticated;
grant execute on function public.create_booking(text, uuid, jsonb, jsonb, bytea, numeric, text, numeric, text, text,
                                                jsonb, text, bytea, inet, integer, integer)
  to service_role;

-- Booking intake (POST /booking, SPEC 7.1). Parameters are %(name)s.

-- booking_org --
-- What the booking function caches per organization: id, phone country, tracking-token key.
-- Behind the abuse limit (PT429 for a client over it); an unknown org counts against the client.
select id, default_country, token_secret
  from private.booking_org(%(org_id)s::uuid, %(slug)s::text, %(client)s::inet, %(rate_limit)s::integer,
                           %(rate_window)s::integer)

-- create_booking --
-- The one SQL call of a booking (runs as service_role); see db/migrations/0005_booking.sql.
select b.order_id, b.order_code, b.status::text as status, b.lead_id, b.customer_id, b.replayed
  from public.create_booking(
         p_org => %(org)s::text,
         p_order_id => %(order_id)s::uuid,
         p_customer => %(customer)s::jsonb,
         p_item_snapshot => %(snapshot)s::jsonb,
         p_tracking_token_hash => %(tracking_token_hash)s::bytea,
         p_price_amount => %(price_amount)s::numeric,
         p_currency => %(currency)s::text,
         p_booking_amount => %(booking_amount)s::numeric,
         p_delivery_method => %(delivery_method)s::text,
         p_notes => %(notes)s::text,
         p_booking_meta => %(booking_meta)s::jsonb,
         p_idempotency_key => %(idempotency_key)s::text,
         p_request_hash => %(request_hash)s::bytea,
         p_client => %(client)s::inet,
         p_rate_limit => %(rate_limit)s::integer,
         p_rate_window_seconds => %(rate_window)s::integer) b

-- purge_booking_state --
-- The purge-booking-state job (runs as service_role; the function is SECURITY DEFINER).
select idempotency_keys, rate_counters from private.purge_booking_state()

-- Rules the database holds for every writer (SPEC 6.6, 6.7, 7.1, 7.2): one text rule set, a
-- snapshot CHECK equal to the intake, money with at most cents, no deletes of history by any API
-- role, erasure of a customer's personal data instead, and the outbox event that says so.
--
-- What carries data lives here (columns, constraints, grants) with the immutable helpers the
-- constraints call. erase_customer, the staff guards and the normalising triggers are repeatable
-- (db/triggers/erasure.sql, staff.sql, text_rules.sql, orders_money.sql).

-- ---------------------------------------------------------------------------------------------
-- The text rule set (mirrored by functions/crm/textrules.py; tests/unit/test_text_rules.py feeds
-- one corpus to both). Refused: C0/C1 controls other than whitespace, bidi embeddings, overrides
-- and isolates (U+202A-U+202E, U+2066-U+2069). Collapsed: whitespace (single-line kinds: every run
-- becomes one space; multiline kinds: line breaks unified to \n, trailing blanks of each line
-- dropped). Refused as blank: a value with no visible character (only spaces, zero-width or other
-- invisible characters). Lengths: per kind, below. Stored values must already be normalised; the
-- normalising triggers do that for every writer, the CHECKs refuse anything else.
-- ---------------------------------------------------------------------------------------------
create function hidden.text_max(kind text)
returns integer
language sql immutable parallel safe
set search_path = ''
as $$
  select case kind
           when 'name' then 200 when 'city' then 100 when 'title' then 300 when 'label' then 100
           when 'item_id' then 100 when 'size' then 20 when 'external_ref' then 200
           when 'note' then 2000 when 'notes' then 20000 when 'description' then 20000
         end
$$;
comment on function hidden.text_max(text) is
  'Length cap (characters) of a kind of text: name 200, city 100, title 300, label 100, item_id 100, size 20, external_ref 200, note 2000, notes 20000, description 20000.';

create function hidden.text_multiline(kind text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select kind in ('note', 'notes', 'description')
$$;
comment on function hidden.text_multiline(text) is 'True for the kinds of text that keep line breaks and tabs.';

create function hidden.text_normalize(value text, kind text)
returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select case
    when value is null then null
    when hidden.text_multiline(kind) then
      pg_catalog.regexp_replace(
        pg_catalog.regexp_replace(
          pg_catalog.regexp_replace(
            pg_catalog.replace(pg_catalog.normalize(value, 'NFC'), E'\r\n', E'\n'),
            '[\u000b\u000c\u000d\u2028\u2029]', E'\n', 'g'),
          '[\u0009\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+(\n|$)', '\1', 'g'),
        '^[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$',
        '', 'g')
    else
      pg_catalog.btrim(pg_catalog.regexp_replace(
        pg_catalog.normalize(value, 'NFC'),
        '[\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+', ' ', 'g'), ' ')
  end
$$;
comment on function hidden.text_normalize(text, text) is
  'The stored form of a text of that kind: NFC; single-line kinds collapse every whitespace run to one space and trim; multiline kinds unify line breaks to \n, drop trailing blanks of each line and trim.';

create function hidden.text_problem(value text, kind text)
returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select case
    when value is null then null
    when value ~ '[\u0001-\u0008\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]' then 'invalid_characters'
    when value !~ '[^\u0009-\u000d\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2060-\u2064\u206a-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]'
      then 'blank'
    when pg_catalog.char_length(value) > hidden.text_max(kind) then 'too_long'
  end
$$;
comment on function hidden.text_problem(text, text) is
  'Why a text of that kind is refused (invalid_characters: controls or bidi overrides/isolates; blank: no visible character; too_long), or null when it passes.';

create function hidden.is_clean_text(value text, kind text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select value is null
      or (value = hidden.text_normalize(value, kind) and hidden.text_problem(value, kind) is null)
$$;
comment on function hidden.is_clean_text(text, text) is
  'True for null or a text already in its normalised form that the text rules accept: what the CHECKs require.';

-- Notes passed to the staff RPCs: the same rules, as a field error (PT422, hint note).
create or replace function hidden.check_note(note text)
returns void
language plpgsql immutable
set search_path = ''
as $$
declare
  normalized text := hidden.text_normalize(note, 'note');
  problem text := hidden.text_problem(normalized, 'note');
begin
  if normalized = '' then
    return;  -- an empty note is no note (the status event stores null)
  elsif problem = 'too_long' then
    raise sqlstate 'PT422' using message = 'note must be at most 2000 characters',
      detail = 'note_too_long', hint = 'note';
  elsif problem = 'invalid_characters' then
    raise sqlstate 'PT422' using message = 'note must not contain control characters or bidi overrides',
      detail = 'invalid_characters', hint = 'note';
  elsif problem = 'blank' then
    raise sqlstate 'PT422' using message = 'note must contain visible characters', detail = 'blank', hint = 'note';
  end if;
end
$$;
comment on function hidden.check_note(text) is
  'Refuses a note the text rules refuse (PT422, field note: note_too_long over 2000 characters, invalid_characters, blank): the one rule for PostgREST callers and PATCH /leads.';

-- ---------------------------------------------------------------------------------------------
-- The item snapshot: the intake's rules, for every writer (SPEC 7.2)
-- ---------------------------------------------------------------------------------------------
create function hidden.is_snapshot_url(value text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select pg_catalog.char_length(value) <= 2048 and hidden.is_http_url(value)
     and value !~ '[\u0001-\u001f\u007f-\u009f]'
$$;
comment on function hidden.is_snapshot_url(text) is 'An http/https URL of at most 2048 characters without controls (the intake''s URL rule).';

create function hidden.jsonb_array_or_empty(value jsonb)
returns jsonb
language sql immutable parallel safe
set search_path = ''
as $$
  select case when pg_catalog.jsonb_typeof(value) = 'array' then value else '[]'::jsonb end
$$;
comment on function hidden.jsonb_array_or_empty(jsonb) is 'The value when it is a JSON array, else [] (absent, null).';

create function hidden.item_snapshot_ok(s jsonb, external_item_ref text)
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  pair text[];
  element jsonb;
  amount numeric;
begin
  -- The shape (0003: types, required fields, http(s) images, at most 20, images_state), then the
  -- intake's own rules on top.
  if not coalesce(hidden.is_item_snapshot(s), false) then
    return false;
  end if;
  -- Only the keys the intake writes (a PostgREST writer cannot park a megabyte under another name).
  if exists (select from pg_catalog.jsonb_object_keys(s) k
              where k not in ('item_id', 'url', 'external_ref', 'title', 'brand', 'model', 'year', 'size',
                              'price', 'currency', 'main_photo_url', 'images', 'cached_images', 'images_state'))
     or s ->> 'external_ref' is distinct from external_item_ref then
    return false;
  end if;
  -- Text fields: the text rules of their kind.
  foreach pair slice 1 in array array[['external_ref', 'external_ref'], ['title', 'title'], ['item_id', 'item_id'],
                                      ['brand', 'label'], ['model', 'label'], ['size', 'size']] loop
    if not hidden.is_clean_text(s ->> pair[1], pair[2]) then
      return false;
    end if;
  end loop;
  if (s ->> 'currency' is not null and not hidden.is_currency_code(s ->> 'currency'))
     or (s ->> 'url' is not null and not hidden.is_snapshot_url(s ->> 'url'))
     or (s ->> 'main_photo_url' is not null and not hidden.is_snapshot_url(s ->> 'main_photo_url')) then
    return false;
  end if;
  -- Money: at most cents within numeric(12, 2); a plausible model year.
  amount := (s ->> 'price')::numeric;
  if amount < 0 or amount > 9999999999.99 or amount <> pg_catalog.round(amount, 2)
     or (s ->> 'year')::numeric not between 1885 and 9999 then
    return false;
  end if;
  for element in select e from pg_catalog.jsonb_array_elements(hidden.jsonb_array_or_empty(s -> 'images')) e loop
    if not hidden.is_snapshot_url(element #>> '{}') then
      return false;
    end if;
  end loop;
  -- cached_images: written by the image cache only (trigger); legacy rows may hold third-party URLs
  -- there until backfilled, so strings of URL length, at most 100 of them.
  if pg_catalog.jsonb_array_length(hidden.jsonb_array_or_empty(s -> 'cached_images')) > 100
     or exists (select from pg_catalog.jsonb_array_elements_text(hidden.jsonb_array_or_empty(s -> 'cached_images')) e
                 where pg_catalog.char_length(e) > 2048) then
    return false;
  end if;
  return true;
end
$$;
comment on function hidden.item_snapshot_ok(jsonb, text) is
  'The item snapshot of SPEC 7.2 as the intake writes it: only its keys; external_ref (= the order''s external_item_ref) and title required; text fields pass the text rules of their kind (title 300, brand/model 100, item_id 100, size 20, external_ref 200); url, main_photo_url and at most 20 images are http(s) URLs of at most 2048 characters; price has at most cents; year is whole; images_state is known.';

revoke all on function hidden.text_max(text), hidden.text_multiline(text), hidden.text_normalize(text, text),
  hidden.text_problem(text, text), hidden.is_clean_text(text, text), hidden.is_snapshot_url(text),
  hidden.jsonb_array_or_empty(jsonb), hidden.item_snapshot_ok(jsonb, text) from public;
grant execute on function hidden.text_max(text), hidden.text_multiline(text), hidden.text_normalize(text, text),
  hidden.text_problem(text, text), hidden.is_clean_text(text, text), hidden.is_snapshot_url(text),
  hidden.jsonb_array_or_empty(jsonb), hidden.item_snapshot_ok(jsonb, text) to authenticated, service_role;

alter table public.orders drop constraint orders_item_snapshot_shape;
alter table public.orders add constraint orders_item_snapshot_shape
  check (hidden.item_snapshot_ok(item_snapshot, external_item_ref)) not valid;
alter table public.orders validate constraint orders_item_snapshot_shape;

-- ---------------------------------------------------------------------------------------------
-- Text columns: the rule set for every writer
-- ---------------------------------------------------------------------------------------------
-- Rows written before the rules were held here: bring them to their stored form first. Characters
-- the rules refuse are dropped, text over its kind's cap is cut, and what is left blank becomes
-- null (or a placeholder where a value is required). Only rows the rules would refuse are touched.
create function pg_temp.scrub(value text, kind text)
returns text
language sql immutable
as $$
  select case when s = '' or hidden.text_problem(s, kind) is not null then null else s end
    from (select hidden.text_normalize(pg_catalog.left(hidden.text_normalize(pg_catalog.regexp_replace(
                   value, '[\u0001-\u0008\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]', '', 'g'),
                   kind), hidden.text_max(kind)), kind) as s) cleaned
$$;
update public.customers
   set full_name = coalesce(pg_temp.scrub(full_name, 'name'), 'Unknown'), city = pg_temp.scrub(city, 'city')
 where not (hidden.is_clean_text(full_name, 'name') and hidden.is_clean_text(city, 'city'));
update public.leads set notes = pg_temp.scrub(notes, 'notes') where not hidden.is_clean_text(notes, 'notes');
update public.tasks
   set title = coalesce(pg_temp.scrub(title, 'title'), 'Task'),
       description = pg_temp.scrub(description, 'description')
 where not (hidden.is_clean_text(title, 'title') and hidden.is_clean_text(description, 'description'));
update public.lead_status_events set note = pg_temp.scrub(note, 'note') where not hidden.is_clean_text(note, 'note');
update public.order_status_events set change_notes = pg_temp.scrub(change_notes, 'note')
 where not hidden.is_clean_text(change_notes, 'note');
drop function pg_temp.scrub(text, text);

alter table public.customers
  add constraint customers_full_name_text check (hidden.is_clean_text(full_name, 'name')) not valid,
  add constraint customers_city_text check (hidden.is_clean_text(city, 'city')) not valid;
alter table public.customers validate constraint customers_full_name_text;
alter table public.customers validate constraint customers_city_text;
alter table public.leads add constraint leads_notes_text check (hidden.is_clean_text(notes, 'notes')) not valid;
alter table public.leads validate constraint leads_notes_text;
alter table public.tasks
  add constraint tasks_title_text check (hidden.is_clean_text(title, 'title')) not valid,
  add constraint tasks_description_text check (hidden.is_clean_text(description, 'description')) not valid;
alter table public.tasks validate constraint tasks_title_text;
alter table public.tasks validate constraint tasks_description_text;
-- Status-event notes come from the RPCs (hidden.check_note) and are normalised on insert.
alter table public.lead_status_events add constraint lead_status_events_note_text
  check (hidden.is_clean_text(note, 'note')) not valid;
alter table public.lead_status_events validate constraint lead_status_events_note_text;
alter table public.order_status_events add constraint order_status_events_change_notes_text
  check (hidden.is_clean_text(change_notes, 'note')) not valid;
alter table public.order_status_events validate constraint order_status_events_change_notes_text;

-- ---------------------------------------------------------------------------------------------
-- Money: at most cents, refused (PT422 by trigger, CHECK behind it) rather than rounded
-- ---------------------------------------------------------------------------------------------
-- numeric(12, 2) rounded 2450.005 to 2450.01 before any trigger or CHECK could see it; plain
-- numeric (a catalog-only change) lets the orders_money trigger refuse it, then store it at scale 2.
alter table public.orders alter column price_amount type numeric, alter column booking_amount type numeric;
alter table public.orders
  add constraint orders_price_amount_cents check (price_amount = pg_catalog.round(price_amount, 2)
                                                  and price_amount <= 9999999999.99),
  add constraint orders_booking_amount_cents check (booking_amount = pg_catalog.round(booking_amount, 2)
                                                    and booking_amount <= 9999999999.99);

-- ---------------------------------------------------------------------------------------------
-- History is never deleted through the API (SPEC 6.6)
-- ---------------------------------------------------------------------------------------------
-- Orders are cancelled, leads closed, customers erased (erase_customer). service_role bypasses
-- RLS, so only a missing privilege stops it; organizations too, whose delete cascades to all of it.
revoke delete, truncate on public.customers, public.leads, public.orders, public.lead_status_events,
  public.order_status_events from anon, authenticated, service_role;
revoke delete, truncate on public.organizations from anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Erasure (SPEC 6.6): erase_customer (db/triggers/erasure.sql) scrubs, the history stays
-- ---------------------------------------------------------------------------------------------
alter table public.customers add column erased_at timestamptz;
comment on column public.customers.erased_at is
  'When erase_customer scrubbed this customer''s personal data; an erased customer is never found or changed again.';
alter table public.customers drop constraint customers_contact_required;
alter table public.customers add constraint customers_contact_required
  check (phone_e164 is not null or email is not null or erased_at is not null);

comment on column public.customers.full_name is 'personal: replaced by a placeholder by erase_customer.';
comment on column public.customers.city is 'personal: erased by erase_customer.';
comment on column public.customers.preferred_channel is 'personal: erased by erase_customer.';
comment on column public.leads.notes is 'personal: free text about the customer; erased by erase_customer.';
comment on column public.orders.booking_meta is
  'Booking details from the intake (channel, notes, booking currency, the contact as submitted). personal: erase_customer removes notes and contact.';
comment on column public.lead_status_events.note is 'personal: free text; erased by erase_customer.';
comment on column public.order_status_events.change_notes is 'personal: free text; erased by erase_customer.';
comment on column public.tasks.description is 'personal: free text; erased by erase_customer for the customer''s leads and orders.';
comment on column private.outbox.payload is
  'Standard Webhooks body. personal: erase_customer removes contact data and notes from the customer''s events.';

alter table private.outbox drop constraint outbox_event_type_known;
alter table private.outbox add constraint outbox_event_type_known check (event_type in (
  'customer.created', 'customer.updated', 'customer.erased', 'lead.created', 'lead.status_changed',
  'order.created', 'order.status_changed', 'payment.recorded', 'payment.status_changed'));

-- ---------------------------------------------------------------------------------------------
-- Booking: the abuse limit before the org lookup (SPEC 7.1)
-- ---------------------------------------------------------------------------------------------
create function private.booking_org(p_org_id uuid, p_slug text, p_client inet, p_rate_limit integer,
                                    p_rate_window_seconds integer)
returns table (id uuid, default_country text, token_secret bytea)
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_window_start timestamptz;
  v_hits integer;
  v_found boolean := false;
begin
  if p_rate_limit > 0 and p_client is not null then
    v_window_start := pg_catalog.to_timestamp(
      pg_catalog.floor(extract(epoch from pg_catalog.now()) / p_rate_window_seconds) * p_rate_window_seconds);
    select c.hits into v_hits from private.booking_rate_counters c
     where c.client = p_client and c.window_start = v_window_start;
    if coalesce(v_hits, 0) >= p_rate_limit then
      raise sqlstate 'PT429' using message = 'Too many bookings from this address; try again later.',
        detail = 'rate_limited',
        hint = greatest(1, pg_catalog.ceil(extract(epoch from
          v_window_start + pg_catalog.make_interval(secs => p_rate_window_seconds) - pg_catalog.now())))::text;
    end if;
  end if;
  for id, default_country, token_secret in
    select o.id, o.default_country, s.secret
      from public.organizations o
      join private.booking_secrets s on s.name = 'tracking_token'
     where o.id = p_org_id or o.slug = p_slug
  loop
    v_found := true;
    return next;
  end loop;
  -- Naming an organization that does not exist costs the client one booking of its budget, so
  -- slugs cannot be probed faster than bookings can be made.
  if not v_found and v_window_start is not null then
    insert into private.booking_rate_counters as c (client, window_start, hits)
    values (p_client, v_window_start, 1)
    on conflict on constraint booking_rate_counters_pkey do update set hits = c.hits + 1;
  end if;
end
$$;
comment on function private.booking_org(uuid, text, inet, integer, integer) is
  'The booking function''s org lookup behind the abuse limit: PT429 (hint = Retry-After) for a client over it, else the organization (id, default_country, tracking-token key); an unknown organization counts as one booking of the client''s budget. service_role only.';
revoke all on function private.booking_org(uuid, text, inet, integer, integer) from public, anon, authenticated;
grant execute on function private.booking_org(uuid, text, inet, integer, integer) to service_role;

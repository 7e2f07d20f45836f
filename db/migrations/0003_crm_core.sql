-- The CRM core: customers, leads, orders, their status events, shipments, tasks and the outbox.
--
-- This file holds what carries data (types, tables, constraints, indexes, grants) and the
-- immutable helpers the constraints call. Policies live in db/policies/, triggers (status machines,
-- status events, outbox, protected columns) in db/triggers/, RPCs in 0004.

create extension if not exists pg_trgm with schema extensions;
create extension if not exists unaccent with schema extensions;

-- ---------------------------------------------------------------------------------------------
-- Types
-- ---------------------------------------------------------------------------------------------
create type public.customer_stage as enum ('lead', 'client');
comment on type public.customer_stage is 'A customer is a lead until they buy.';

create type public.lead_source as enum ('website_booking', 'phone_call', 'ads_form', 'walk_in', 'manual', 'import');
comment on type public.lead_source is 'Where a lead came from.';

create type public.lead_status as enum ('new', 'contacted', 'qualified', 'converted', 'lost', 'junk');
comment on type public.lead_status is
  'new -> contacted -> qualified -> converted; new/contacted/qualified -> lost or junk; lost -> new (reopen).';

create type public.order_status as enum (
  'pending_manager', 'under_inspection', 'deposit_paid', 'paid_out', 'shipped', 'delivered', 'closed', 'cancelled');
comment on type public.order_status is
  'pending_manager -> under_inspection -> deposit_paid -> paid_out -> shipped -> delivered -> closed; any status before delivered -> cancelled.';

-- ---------------------------------------------------------------------------------------------
-- Immutable helpers used by constraints and generated columns (hidden: callable, not served)
-- ---------------------------------------------------------------------------------------------
create function hidden.is_http_url(value text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select value ~* '^https?://[^\s/?#@]+(?:[/?#]\S*)?$'
$$;
comment on function hidden.is_http_url(text) is 'True for an absolute http/https URL without whitespace.';

create function hidden.is_currency_code(code text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select code ~ '^[A-Z]{3}$' and code = any ('{
    AED,AFN,ALL,AMD,ANG,AOA,ARS,AUD,AWG,AZN,BAM,BBD,BDT,BGN,BHD,BIF,BMD,BND,BOB,BRL,BSD,BTN,BWP,BYN,
    BZD,CAD,CDF,CHF,CLP,CNY,COP,CRC,CUP,CVE,CZK,DJF,DKK,DOP,DZD,EGP,ERN,ETB,EUR,FJD,FKP,GBP,GEL,GHS,
    GIP,GMD,GNF,GTQ,GYD,HKD,HNL,HTG,HUF,IDR,ILS,INR,IQD,IRR,ISK,JMD,JOD,JPY,KES,KGS,KHR,KMF,KPW,KRW,
    KWD,KYD,KZT,LAK,LBP,LKR,LRD,LSL,LYD,MAD,MDL,MGA,MKD,MMK,MNT,MOP,MRU,MUR,MVR,MWK,MXN,MYR,MZN,NAD,
    NGN,NIO,NOK,NPR,NZD,OMR,PAB,PEN,PGK,PHP,PKR,PLN,PYG,QAR,RON,RSD,RUB,RWF,SAR,SBD,SCR,SDG,SEK,SGD,
    SHP,SLE,SLL,SOS,SRD,SSP,STN,SVC,SYP,SZL,THB,TJS,TMT,TND,TOP,TRY,TTD,TWD,TZS,UAH,UGX,USD,UYU,UZS,
    VED,VES,VND,VUV,WST,XAF,XCD,XCG,XOF,XPF,YER,ZAR,ZMW,ZWG,ZWL}'::text[])
$$;
comment on function hidden.is_currency_code(text) is 'True for an active ISO 4217 currency code (three capitals).';

create function hidden.is_item_snapshot(s jsonb)
returns boolean
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
  key text;
  element jsonb;
begin
  if s is null or pg_catalog.jsonb_typeof(s) <> 'object' then
    return false;
  end if;
  -- Required, non-blank strings.
  foreach key in array array['external_ref', 'title'] loop
    if pg_catalog.jsonb_typeof(s -> key) is distinct from 'string' or pg_catalog.btrim(s ->> key) = '' then
      return false;
    end if;
  end loop;
  -- Optional strings (absent or null allowed).
  foreach key in array array['item_id', 'brand', 'model', 'size', 'currency', 'main_photo_url', 'url'] loop
    if coalesce(pg_catalog.jsonb_typeof(s -> key), 'null') not in ('string', 'null') then
      return false;
    end if;
  end loop;
  if pg_catalog.jsonb_typeof(s -> 'url') = 'string' and not hidden.is_http_url(s ->> 'url') then
    return false;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(s -> 'price'), 'null') not in ('number', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(s -> 'year') = 'number' then
    if (s ->> 'year')::numeric <> pg_catalog.trunc((s ->> 'year')::numeric) then
      return false;
    end if;
  elsif coalesce(pg_catalog.jsonb_typeof(s -> 'year'), 'null') <> 'null' then
    return false;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(s -> 'images'), 'null') not in ('array', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(s -> 'images') = 'array' then
    if pg_catalog.jsonb_array_length(s -> 'images') > 20 then
      return false;
    end if;
    for element in select e from pg_catalog.jsonb_array_elements(s -> 'images') e loop
      if pg_catalog.jsonb_typeof(element) <> 'string' or not hidden.is_http_url(element #>> '{}') then
        return false;
      end if;
    end loop;
  end if;
  if coalesce(pg_catalog.jsonb_typeof(s -> 'cached_images'), 'null') not in ('array', 'null') then
    return false;
  end if;
  if pg_catalog.jsonb_typeof(s -> 'cached_images') = 'array' then
    for element in select e from pg_catalog.jsonb_array_elements(s -> 'cached_images') e loop
      if pg_catalog.jsonb_typeof(element) <> 'string' then
        return false;
      end if;
    end loop;
  end if;
  if coalesce(s ->> 'images_state', 'none') not in ('pending', 'cached', 'partial', 'failed', 'none')
     or coalesce(pg_catalog.jsonb_typeof(s -> 'images_state'), 'null') not in ('string', 'null') then
    return false;
  end if;
  return true;
end
$$;
comment on function hidden.is_item_snapshot(jsonb) is
  'The item snapshot shape of SPEC 7.2: external_ref and title required; images at most 20 http(s) URLs; images_state one of pending, cached, partial, failed, none.';

-- Search normalisation: one Latin, lower-case, accent-free form for names typed in either script,
-- so `Иванов` and `Ivanov`, `Щукина` and `Shchukina`, `José` and `jose` meet. Cyrillic is
-- transliterated first (BGN/PCGN-like), explicitly for both cases so it works under any ctype.
create function hidden.search_normalize(value text)
returns text
language sql immutable parallel safe strict
set search_path = ''
as $$
  select pg_catalog.regexp_replace(pg_catalog.btrim(pg_catalog.lower(extensions.unaccent(
           'extensions.unaccent'::regdictionary,
           pg_catalog.translate(
             pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
             pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
             pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               pg_catalog.translate(value,
                 'АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯІЇЄҐ',
                 'абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґ'),
               'щ', 'shch'), 'ж', 'zh'), 'х', 'kh'), 'ц', 'ts'), 'ч', 'ch'), 'ш', 'sh'),
               'ю', 'yu'), 'я', 'ya'), 'ї', 'yi'), 'є', 'ye'), 'ё', 'e'),
             'абвгдезийклмнопрстуфыэіґъь',
             'abvgdeziyklmnoprstufyeig')))),
         '\s+', ' ', 'g')
$$;
comment on function hidden.search_normalize(text) is
  'Lower-case, accent-free, Cyrillic transliterated to Latin: the form names are searched in.';

create function hidden.customer_search_text(full_name text, email text, phone_e164 text)
returns text
language sql immutable parallel safe
set search_path = ''
as $$
  select pg_catalog.concat_ws(' ', hidden.search_normalize(full_name),
           -- German spelling without umlauts as well, so Mueller finds Müller (and Muller still does).
           case when full_name ~ '[äöüÄÖÜ]' then hidden.search_normalize(
             pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
             pg_catalog.replace(full_name, 'ä', 'ae'), 'ö', 'oe'), 'ü', 'ue'), 'Ä', 'Ae'), 'Ö', 'Oe'), 'Ü', 'Ue'))
           end,
           email, pg_catalog.regexp_replace(phone_e164, '\D', '', 'g'))
$$;
comment on function hidden.customer_search_text(text, text, text) is
  'What search_customers matches: normalised name (plus its umlaut-expanded spelling), email and the phone''s digits.';

-- ---------------------------------------------------------------------------------------------
-- customers
-- ---------------------------------------------------------------------------------------------
create table public.customers (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  full_name text not null,
  phone_e164 text,
  email text,
  preferred_channel text,
  city text,
  stage public.customer_stage not null default 'lead',
  search_text text not null generated always as (hidden.customer_search_text(full_name, email, phone_e164)) stored,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint customers_org_id_id_key unique (org_id, id),
  constraint customers_org_phone_key unique (org_id, phone_e164),
  constraint customers_full_name_length check (char_length(btrim(full_name)) between 1 and 200),
  constraint customers_phone_e164_format check (phone_e164 ~ '^\+[1-9][0-9]{6,14}$'),
  constraint customers_email_format check (
    email = lower(btrim(email)) and email ~ '^[^@\s]+@[^@\s]+$' and char_length(email) <= 254),
  constraint customers_contact_required check (phone_e164 is not null or email is not null),
  constraint customers_preferred_channel_known check (
    preferred_channel in ('phone', 'whatsapp', 'telegram', 'viber', 'sms', 'email')),
  constraint customers_city_length check (char_length(city) <= 200)
);
comment on table public.customers is
  'People an organization sells to; found by normalised phone (E.164), then email. Contact data: never exposed to anon.';
comment on column public.customers.phone_e164 is 'E.164 (+ and up to 15 digits); unique per organization.';
comment on column public.customers.email is 'Lower-case and trimmed (normalised by trigger); unique per organization.';
comment on column public.customers.search_text is 'Generated: what search_customers matches (trigram-indexed).';

create unique index customers_org_email_key on public.customers (org_id, lower(email));
create index customers_search_text_trgm_idx on public.customers using gin (search_text extensions.gin_trgm_ops);

-- ---------------------------------------------------------------------------------------------
-- leads
-- ---------------------------------------------------------------------------------------------
create table public.leads (
  id uuid primary key default gen_random_uuid(),
  legacy_id bigint,
  org_id uuid not null references public.organizations (id) on delete cascade,
  customer_id uuid not null,
  source public.lead_source not null,
  status public.lead_status not null default 'new',
  item_snapshot jsonb,
  external_item_ref text,
  assigned_to uuid,
  notes text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint leads_legacy_id_key unique (legacy_id),
  constraint leads_org_id_id_key unique (org_id, id),
  constraint leads_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint leads_item_snapshot_object check (jsonb_typeof(item_snapshot) = 'object'),
  constraint leads_external_item_ref_length check (char_length(external_item_ref) between 1 and 500),
  constraint leads_notes_length check (char_length(notes) <= 20000)
);
comment on table public.leads is 'A sales opportunity for a customer; its status follows the lead machine (trigger).';
comment on column public.leads.legacy_id is 'Id of the lead in an older system (imports); unique when present.';
comment on column public.leads.external_item_ref is 'Catalog reference of the item asked about; immutable once set.';

create index leads_org_created_idx on public.leads (org_id, created_at desc);
create index leads_org_customer_idx on public.leads (org_id, customer_id);
-- The assignee must be staff of the lead's own organization, for every writer (a direct PostgREST
-- PATCH included); removing someone from the organization unassigns them.
alter table public.leads add constraint leads_assigned_to_staff_fkey foreign key (org_id, assigned_to)
  references public.staff (org_id, user_id) on delete set null (assigned_to);
create index leads_assigned_to_idx on public.leads (assigned_to);
create index leads_org_assigned_to_idx on public.leads (org_id, assigned_to) where assigned_to is not null;

-- ---------------------------------------------------------------------------------------------
-- orders
-- ---------------------------------------------------------------------------------------------
create function hidden.new_order_code()
returns text
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  alphabet constant text := '23456789ABCDEFGHJKMNPQRSTUVWXYZ';
  random_bytes bytea;
  code text;
  i integer;
begin
  loop
    -- gen_random_uuid() is a CSPRNG; bytes 6 and 8 carry the version/variant bits, so skip them.
    random_bytes := pg_catalog.uuid_send(pg_catalog.gen_random_uuid());
    code := 'BK-';
    foreach i in array array[0, 1, 2, 3, 4, 5, 9, 10] loop
      code := code || pg_catalog.substr(alphabet, pg_catalog.get_byte(random_bytes, i) % 31 + 1, 1);
    end loop;
    exit when not exists (select from public.orders o where o.order_code = code);
  end loop;
  return code;
end
$$;
comment on function hidden.new_order_code() is
  'A fresh human-friendly order code BK-XXXXXXXX (no 0/1/I/L/O), unused across all organizations.';

create table public.orders (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_code text not null default hidden.new_order_code(),
  customer_id uuid not null,
  lead_id uuid,
  item_id text,
  external_item_ref text not null,
  item_snapshot jsonb not null,
  archived_item boolean not null default false,
  status public.order_status not null default 'pending_manager',
  assigned_manager uuid,
  price_amount numeric(12, 2),
  currency text,
  booking_amount numeric(12, 2),
  exchange_rate numeric(18, 8),
  delivery_method text,
  booking_meta jsonb not null default '{}',
  tracking_token_hash bytea,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint orders_order_code_key unique (order_code),
  constraint orders_tracking_token_hash_key unique (tracking_token_hash),
  constraint orders_org_id_id_key unique (org_id, id),
  constraint orders_customer_fkey foreign key (org_id, customer_id)
    references public.customers (org_id, id) on delete cascade,
  constraint orders_lead_fkey foreign key (org_id, lead_id)
    references public.leads (org_id, id) on delete set null (lead_id),
  constraint orders_order_code_format check (order_code ~ '^BK-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}$'),
  constraint orders_external_item_ref_length check (char_length(external_item_ref) between 1 and 500),
  constraint orders_item_snapshot_shape check (hidden.is_item_snapshot(item_snapshot)),
  constraint orders_price_amount_nonnegative check (price_amount >= 0),
  constraint orders_booking_amount_nonnegative check (booking_amount >= 0),
  constraint orders_exchange_rate_positive check (exchange_rate > 0),
  constraint orders_currency_iso4217 check (hidden.is_currency_code(currency)),
  constraint orders_delivery_method_known check (delivery_method in ('pickup', 'shipping', 'courier')),
  constraint orders_booking_meta_object check (jsonb_typeof(booking_meta) = 'object'),
  constraint orders_tracking_token_hash_sha256 check (octet_length(tracking_token_hash) = 32)
);
comment on table public.orders is
  'A booking of a catalog item, with a durable snapshot of the item; its status follows the order machine (trigger).';
comment on column public.orders.order_code is 'Human-friendly unique code, e.g. BK-7F3K9Q2M (no 0/1/I/L/O).';
comment on column public.orders.external_item_ref is 'Catalog reference of the item; immutable.';
comment on column public.orders.item_snapshot is
  'The item as booked (SPEC 7.2); immutable except cached_images and images_state (written by the image cache).';
comment on column public.orders.tracking_token_hash is
  'sha256 of the public tracking token (shown once at booking); track_order looks orders up by it.';

-- The manager's list (newest first) and dashboard_stats read this index alone.
create index orders_org_created_idx on public.orders (org_id, created_at desc) include (status);
create index orders_org_customer_idx on public.orders (org_id, customer_id);
create index orders_org_lead_idx on public.orders (org_id, lead_id) where lead_id is not null;
alter table public.orders add constraint orders_assigned_manager_staff_fkey foreign key (org_id, assigned_manager)
  references public.staff (org_id, user_id) on delete set null (assigned_manager);
create index orders_assigned_manager_idx on public.orders (org_id, assigned_manager) where assigned_manager is not null;

-- ---------------------------------------------------------------------------------------------
-- status events (written by trigger only)
-- ---------------------------------------------------------------------------------------------
create table public.lead_status_events (
  id bigint generated always as identity primary key,
  org_id uuid not null references public.organizations (id) on delete cascade,
  lead_id uuid not null,
  from_status public.lead_status,
  to_status public.lead_status not null,
  changed_by uuid references auth.users (id) on delete set null,
  note text,
  created_at timestamptz not null default now(),
  constraint lead_status_events_lead_fkey foreign key (org_id, lead_id)
    references public.leads (org_id, id) on delete cascade
);
comment on table public.lead_status_events is
  'History of lead statuses: one row when a lead is created (from_status null) and one per change. Written by trigger only.';
create index lead_status_events_lead_idx on public.lead_status_events (org_id, lead_id, created_at);
create index lead_status_events_changed_by_idx on public.lead_status_events (changed_by) where changed_by is not null;

create table public.order_status_events (
  id bigint generated always as identity primary key,
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_id uuid not null,
  from_status public.order_status,
  to_status public.order_status not null,
  changed_by uuid references auth.users (id) on delete set null,
  change_notes text,
  created_at timestamptz not null default now(),
  constraint order_status_events_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade
);
comment on table public.order_status_events is
  'History of order statuses: one row when an order is created (from_status null) and one per change. Written by trigger only.';
create index order_status_events_order_idx on public.order_status_events (org_id, order_id, created_at);
create index order_status_events_changed_by_idx on public.order_status_events (changed_by) where changed_by is not null;

-- ---------------------------------------------------------------------------------------------
-- shipments and tasks
-- ---------------------------------------------------------------------------------------------
create table public.shipments (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_id uuid not null,
  provider text not null,
  tracking_number text,
  delivery_status text not null default 'pending',
  estimated_delivery date,
  shipped_at timestamptz,
  delivered_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint shipments_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade,
  constraint shipments_provider_length check (char_length(btrim(provider)) between 1 and 100),
  constraint shipments_tracking_number_length check (char_length(tracking_number) between 1 and 100),
  constraint shipments_delivery_status_known check (delivery_status in (
    'pending', 'label_created', 'in_transit', 'out_for_delivery', 'delivered', 'failed', 'returned'))
);
comment on table public.shipments is 'Carrier shipments of an order (provider, tracking number, delivery status).';
create index shipments_org_order_idx on public.shipments (org_id, order_id);
create unique index shipments_provider_tracking_key on public.shipments (org_id, provider, tracking_number)
  where tracking_number is not null;

create table public.tasks (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_id uuid,
  lead_id uuid,
  title text not null,
  description text,
  status text not null default 'open',
  due_at timestamptz,
  assignee uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint tasks_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade,
  constraint tasks_lead_fkey foreign key (org_id, lead_id)
    references public.leads (org_id, id) on delete cascade,
  constraint tasks_one_subject check (num_nonnulls(order_id, lead_id) = 1),
  constraint tasks_title_length check (char_length(btrim(title)) between 1 and 300),
  constraint tasks_description_length check (char_length(description) <= 20000),
  constraint tasks_status_known check (status in ('open', 'in_progress', 'done', 'cancelled'))
);
comment on table public.tasks is 'To-dos about exactly one order or one lead, optionally assigned to a staff member.';
create index tasks_org_due_idx on public.tasks (org_id, due_at);
create index tasks_org_order_idx on public.tasks (org_id, order_id) where order_id is not null;
create index tasks_org_lead_idx on public.tasks (org_id, lead_id) where lead_id is not null;
alter table public.tasks add constraint tasks_assignee_staff_fkey foreign key (org_id, assignee)
  references public.staff (org_id, user_id) on delete set null (assignee);
create index tasks_assignee_idx on public.tasks (org_id, assignee) where assignee is not null;

-- ---------------------------------------------------------------------------------------------
-- private.outbox (transactional outbox; rows written by triggers in the changing transaction)
-- ---------------------------------------------------------------------------------------------
create table private.outbox (
  id bigserial primary key,
  event_id uuid not null default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  event_type text not null,
  aggregate_type text not null,
  aggregate_id uuid not null,
  payload jsonb not null,
  created_at timestamptz not null default now(),
  constraint outbox_event_id_key unique (event_id),
  constraint outbox_event_type_known check (event_type in (
    'customer.created', 'customer.updated', 'lead.created', 'lead.status_changed',
    'order.created', 'order.status_changed')),
  constraint outbox_aggregate_type_known check (aggregate_type in ('customer', 'lead', 'order')),
  constraint outbox_payload_standard_webhook check (
    jsonb_typeof(payload) = 'object' and payload ->> 'type' = event_type
    and jsonb_typeof(payload -> 'timestamp') = 'string' and jsonb_typeof(payload -> 'data') = 'object')
);
comment on table private.outbox is
  'Transactional outbox: one row per domain event, written by trigger in the same transaction as the change; payload is a Standard Webhooks body. event_id becomes the webhook-id.';
create index outbox_org_idx on private.outbox (org_id, id);
create index outbox_aggregate_idx on private.outbox (aggregate_type, aggregate_id);

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
alter table public.customers enable row level security;
alter table public.leads enable row level security;
alter table public.orders enable row level security;
alter table public.lead_status_events enable row level security;
alter table public.order_status_events enable row level security;
alter table public.shipments enable row level security;
alter table public.tasks enable row level security;
alter table private.outbox enable row level security;

-- Supabase's default privileges granted ALL to the API roles; take it back and grant what each
-- role needs, column by column for writes. RLS then decides which rows.
revoke all on public.customers, public.leads, public.orders, public.lead_status_events,
  public.order_status_events, public.shipments, public.tasks from anon, authenticated, public;
revoke all on sequence public.lead_status_events_id_seq, public.order_status_events_id_seq
  from anon, authenticated, public;
revoke all on private.outbox from anon, authenticated, service_role, public;
revoke all on sequence private.outbox_id_seq from anon, authenticated, service_role, public;

grant select, delete on public.customers to authenticated;
grant insert (org_id, full_name, phone_e164, email, preferred_channel, city, stage),
      update (full_name, phone_e164, email, preferred_channel, city, stage)
  on public.customers to authenticated;

grant select, delete on public.leads to authenticated;
grant insert (org_id, customer_id, source, item_snapshot, external_item_ref, assigned_to, notes),
      update (status, item_snapshot, external_item_ref, assigned_to, notes)
  on public.leads to authenticated;

grant select, delete on public.orders to authenticated;
grant insert (org_id, customer_id, lead_id, item_id, external_item_ref, item_snapshot, archived_item,
              assigned_manager, price_amount, currency, booking_amount, exchange_rate, delivery_method,
              booking_meta),
      update (status, lead_id, item_id, archived_item, assigned_manager, price_amount, currency,
              booking_amount, exchange_rate, delivery_method, booking_meta)
  on public.orders to authenticated;

grant select on public.lead_status_events, public.order_status_events to authenticated;

grant select, delete on public.shipments to authenticated;
grant insert (org_id, order_id, provider, tracking_number, delivery_status, estimated_delivery, shipped_at,
              delivered_at),
      update (provider, tracking_number, delivery_status, estimated_delivery, shipped_at, delivered_at)
  on public.shipments to authenticated;

grant select, delete on public.tasks to authenticated;
grant insert (org_id, order_id, lead_id, title, description, status, due_at, assignee),
      update (title, description, status, due_at, assignee)
  on public.tasks to authenticated;

-- service_role (webhooks, jobs, booking intake) bypasses RLS; status events stay trigger-only.
grant all on public.customers, public.leads, public.orders, public.shipments, public.tasks to service_role;
revoke insert, update, delete, truncate on public.lead_status_events, public.order_status_events
  from service_role;
grant select on public.lead_status_events, public.order_status_events to service_role;

-- Helpers evaluated by constraints, defaults and generated columns run as the writing role.
revoke all on function hidden.is_http_url(text), hidden.is_currency_code(text), hidden.is_item_snapshot(jsonb),
  hidden.search_normalize(text), hidden.customer_search_text(text, text, text), hidden.new_order_code()
  from public;
grant execute on function hidden.is_http_url(text), hidden.is_currency_code(text),
  hidden.is_item_snapshot(jsonb), hidden.search_normalize(text), hidden.customer_search_text(text, text, text),
  hidden.new_order_code()
  to authenticated, service_role;

-- pg_trgm and unaccent functions the search path runs as the calling role. (On Supabase they are
-- executable by PUBLIC already; here 0002's default privileges withheld them.)
grant execute on function extensions.unaccent(regdictionary, text), extensions.similarity(text, text),
  extensions.word_similarity(text, text), extensions.word_similarity_op(text, text),
  extensions.word_similarity_commutator_op(text, text)
  to authenticated, service_role;

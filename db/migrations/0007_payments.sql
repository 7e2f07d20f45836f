-- Payments, inspections and customer profiles (SPEC 6.8), and the warehouse's order cache (SPEC 11)
-- that customer_profiles.wms_total_orders counts.
--
-- Data only (types, tables, constraints, indexes, grants) and the views. The money rules (currency =
-- the order's, refunds capped, a succeeded deposit moves the order, paid_out needs the money) are
-- triggers in db/triggers/payments.sql; policies in db/policies/{payments,inspections,wms_orders}.sql.
-- History is never deleted through the API: no API role has DELETE (or TRUNCATE) on these tables;
-- a refund is its own payment row.

-- ---------------------------------------------------------------------------------------------
-- Types
-- ---------------------------------------------------------------------------------------------
create type public.payment_kind as enum ('deposit', 'balance', 'refund');
comment on type public.payment_kind is 'deposit and balance bring money in; a refund gives it back (its own row).';

create type public.payment_status as enum ('pending', 'succeeded', 'failed');
comment on type public.payment_status is 'pending -> succeeded or failed; a settled payment stays settled (trigger).';

create type public.inspection_stage as enum ('initial', 'detailed', 'final');
comment on type public.inspection_stage is 'How far an inspection of the booked item went.';

create type public.inspection_photos_status as enum ('none', 'requested', 'received', 'verified');
comment on type public.inspection_photos_status is 'Where the inspection photos of the item stand.';

-- ---------------------------------------------------------------------------------------------
-- payments
-- ---------------------------------------------------------------------------------------------
create table public.payments (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_id uuid not null,
  kind public.payment_kind not null,
  -- Unconstrained numeric plus a CHECK: 10.005 is refused, never silently rounded to 10.01.
  amount numeric not null,
  -- Refunds count negative: sums of succeeded payments are sums of signed_amount.
  signed_amount numeric not null generated always as (case when kind = 'refund' then -amount else amount end) stored,
  currency text not null,
  method text not null default 'other',
  status public.payment_status not null default 'pending',
  external_ref text,
  paid_at timestamptz,
  recorded_by uuid default auth.uid() references auth.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint payments_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade,
  constraint payments_amount_positive check (amount > 0),
  constraint payments_amount_cents check (amount = round(amount, 2) and amount < 10000000000),
  constraint payments_currency_iso4217 check (hidden.is_currency_code(currency)),
  constraint payments_method_known check (method in ('cash', 'card', 'bank_transfer', 'online', 'other')),
  constraint payments_external_ref_length check (char_length(btrim(external_ref)) between 1 and 200),
  constraint payments_paid_at_when_succeeded check (status <> 'succeeded' or paid_at is not null)
);
comment on table public.payments is
  'Money in (deposit, balance) and out (refund, its own row) of an order, in the order''s currency. Never deleted through the API. Rules by trigger: currency = the order''s, refunds never exceed what was paid, a succeeded deposit moves an order from under_inspection to deposit_paid.';
comment on column public.payments.amount is 'Positive, at most 2 decimals, in currency (the order''s).';
comment on column public.payments.signed_amount is 'Generated: amount, negative for refunds.';
comment on column public.payments.external_ref is 'The payment provider''s id; unique per organization when set.';
comment on column public.payments.paid_at is 'When the money moved; set to now() when a payment succeeds without one.';
comment on column public.payments.recorded_by is 'Who recorded the payment (auth.uid(), set by trigger; null for service writers).';

create index payments_org_order_idx on public.payments (org_id, order_id) include (status, signed_amount);
create unique index payments_org_external_ref_key on public.payments (org_id, external_ref)
  where external_ref is not null;
create index payments_recorded_by_idx on public.payments (recorded_by) where recorded_by is not null;

-- ---------------------------------------------------------------------------------------------
-- inspections
-- ---------------------------------------------------------------------------------------------
create table public.inspections (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id) on delete cascade,
  order_id uuid not null,
  stage public.inspection_stage not null default 'initial',
  checklist jsonb not null default '{}',
  photos_status public.inspection_photos_status not null default 'none',
  next_action text,
  inspected_by uuid default auth.uid() references auth.users (id) on delete set null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint inspections_order_fkey foreign key (org_id, order_id)
    references public.orders (org_id, id) on delete cascade,
  constraint inspections_checklist_object check (jsonb_typeof(checklist) = 'object'),
  constraint inspections_checklist_size check (octet_length(checklist::text) <= 65536),
  constraint inspections_next_action_length check (char_length(btrim(next_action)) between 1 and 2000)
);
comment on table public.inspections is
  'Inspections of an order''s item (stage, checklist, photos, what happens next). Never deleted through the API.';
comment on column public.inspections.checklist is 'A JSON object (item -> finding), at most 64 KiB.';
comment on column public.inspections.inspected_by is 'Who recorded the inspection (auth.uid(), set by trigger).';

create index inspections_org_order_idx on public.inspections (org_id, order_id, created_at);
create index inspections_inspected_by_idx on public.inspections (inspected_by) where inspected_by is not null;

-- ---------------------------------------------------------------------------------------------
-- wms_orders (SPEC 11: the warehouse's orders, cached; written by webhooks and reconciliation)
-- ---------------------------------------------------------------------------------------------
create table public.wms_orders (
  org_id uuid not null references public.organizations (id) on delete cascade,
  wms_order_id text not null,
  -- The warehouse's copy of our ids: no foreign keys, a cache must take what the source says
  -- (reconciliation reports what does not match). Every reader joins on org_id as well.
  crm_customer_id uuid,
  crm_order_id uuid,
  status text not null,
  lines jsonb not null default '[]',
  shipment jsonb,
  source_updated_at timestamptz,
  cached_at timestamptz not null default now(),
  constraint wms_orders_pkey primary key (org_id, wms_order_id),
  constraint wms_orders_wms_order_id_length check (char_length(wms_order_id) between 1 and 200),
  constraint wms_orders_status_length check (char_length(status) between 1 and 100),
  constraint wms_orders_lines_array check (jsonb_typeof(lines) = 'array'),
  constraint wms_orders_shipment_object check (jsonb_typeof(shipment) = 'object')
);
comment on table public.wms_orders is
  'Cache of the warehouse''s orders (SPEC 11). Staff read; written by webhooks and reconciliation only (no API role writes).';
comment on column public.wms_orders.crm_customer_id is 'The CRM customer the warehouse has on this order (its copy; not a foreign key).';
comment on column public.wms_orders.crm_order_id is 'The CRM order the warehouse has on this order (its copy; not a foreign key).';

create index wms_orders_org_customer_idx on public.wms_orders (org_id, crm_customer_id)
  where crm_customer_id is not null;
create index wms_orders_org_order_idx on public.wms_orders (org_id, crm_order_id) where crm_order_id is not null;

alter table public.orders add column wms_order_id text;
alter table public.orders add constraint orders_wms_order_id_length check (char_length(wms_order_id) between 1 and 200);
comment on column public.orders.wms_order_id is 'The warehouse''s id of this order (SPEC 11); unique per organization when set.';
create unique index orders_org_wms_order_id_key on public.orders (org_id, wms_order_id) where wms_order_id is not null;

-- ---------------------------------------------------------------------------------------------
-- Outbox event types
-- ---------------------------------------------------------------------------------------------
alter table private.outbox drop constraint outbox_event_type_known;
alter table private.outbox add constraint outbox_event_type_known check (event_type in (
  'customer.created', 'customer.updated', 'lead.created', 'lead.status_changed',
  'order.created', 'order.status_changed', 'payment.recorded', 'payment.status_changed'));
alter table private.outbox drop constraint outbox_aggregate_type_known;
alter table private.outbox add constraint outbox_aggregate_type_known
  check (aggregate_type in ('customer', 'lead', 'order', 'payment'));

-- ---------------------------------------------------------------------------------------------
-- Row level security and grants
-- ---------------------------------------------------------------------------------------------
alter table public.payments enable row level security;
alter table public.inspections enable row level security;
alter table public.wms_orders enable row level security;

revoke all on public.payments, public.inspections, public.wms_orders
  from anon, authenticated, service_role, public;

grant select on public.payments to authenticated;
grant insert (org_id, order_id, kind, amount, currency, method, status, external_ref, paid_at),
      update (amount, method, status, external_ref, paid_at)
  on public.payments to authenticated;

grant select on public.inspections to authenticated;
grant insert (org_id, order_id, stage, checklist, photos_status, next_action),
      update (stage, checklist, photos_status, next_action)
  on public.inspections to authenticated;

grant select on public.wms_orders to authenticated;

-- service_role (webhooks, jobs) bypasses RLS: it records payments and inspections too, deletes nothing.
-- wms_orders gets its writers (webhooks, reconciliation) with the warehouse integration.
grant select, insert, update on public.payments, public.inspections to service_role;
grant select on public.wms_orders to service_role;

-- ---------------------------------------------------------------------------------------------
-- order_cards gains the paid amount
-- ---------------------------------------------------------------------------------------------
-- Same columns in the same order as before (create or replace keeps grants), paid_amount appended.
create or replace view public.order_cards
with (security_invoker = true)
as
select o.id,
       o.org_id,
       o.order_code,
       o.status,
       o.item_snapshot ->> 'title' as title,
       -- Only what the image cache wrote (state cached/partial): never a third-party URL.
       case when o.item_snapshot ->> 'images_state' in ('cached', 'partial')
            then o.item_snapshot -> 'cached_images' ->> 0 end as display_image_url,
       coalesce(o.item_snapshot ->> 'images_state', 'none') as image_state,
       o.archived_item,
       o.customer_id,
       -- A scalar sub-select rather than a join: it runs only for the rows of the page (after the
       -- sort and limit), and the planner keeps the ordered index scan on orders under RLS.
       (select c.full_name
          from public.customers c
         where c.org_id = o.org_id and c.id = o.customer_id) as customer_name,
       o.assigned_manager,
       o.created_at,
       o.updated_at,
       -- Same reasoning: per row of the page, from payments_org_order_idx alone.
       (select coalesce(sum(p.signed_amount), 0)
          from public.payments p
         where p.org_id = o.org_id and p.order_id = o.id and p.status = 'succeeded') as paid_amount
  from public.orders o;
comment on view public.order_cards is
  'List/kanban rows of orders (security_invoker: the caller''s RLS applies). display_image_url is the first cached (first-party) image, else null; never a third-party URL. paid_amount: succeeded payments minus refunds, in the order''s currency. Fast path: filter by org_id and order by created_at desc.';

-- ---------------------------------------------------------------------------------------------
-- customer_profiles
-- ---------------------------------------------------------------------------------------------
-- One customer's figures from its own rows only: every lateral sub-select walks an
-- (org_id, customer_id) index, so a profile costs what that customer has, not what the org has.
create view public.customer_profiles
with (security_invoker = true)
as
select c.id,
       c.org_id,
       c.full_name,
       c.phone_e164,
       c.email,
       c.preferred_channel,
       c.city,
       c.stage,
       c.created_at,
       o.total_orders,
       o.open_orders,
       s.total_spent,
       s.total_spent_currency,
       s.total_spent_by_currency,
       o.last_order_at,
       l.open_leads,
       w.wms_total_orders
  from public.customers c
  cross join lateral (
    select count(*) as total_orders,
           count(*) filter (where x.status not in ('closed', 'cancelled')) as open_orders,
           max(x.created_at) as last_order_at
      from public.orders x
     where x.org_id = c.org_id and x.customer_id = c.id) o
  cross join lateral (
    select case when count(*) <= 1 then coalesce(sum(by_currency.spent), 0) end as total_spent,
           case when count(*) = 1 then min(by_currency.currency) end as total_spent_currency,
           coalesce(jsonb_object_agg(by_currency.currency, by_currency.spent), '{}') as total_spent_by_currency
      from (select p.currency, sum(p.signed_amount) as spent
              from public.orders x
              join public.payments p on p.org_id = x.org_id and p.order_id = x.id
             where x.org_id = c.org_id and x.customer_id = c.id and p.status = 'succeeded'
             group by p.currency) by_currency) s
  cross join lateral (
    select count(*) as open_leads
      from public.leads x
     where x.org_id = c.org_id and x.customer_id = c.id and x.status in ('new', 'contacted', 'qualified')) l
  cross join lateral (
    select count(*) as wms_total_orders
      from public.wms_orders x
     where x.org_id = c.org_id and x.crm_customer_id = c.id) w;
comment on view public.customer_profiles is
  'One row per customer with figures computed by the database (security_invoker: the caller''s RLS applies): total_orders; open_orders (not closed or cancelled); total_spent = succeeded payments minus refunds when they are in one currency (total_spent_currency; null when several, see total_spent_by_currency); last_order_at; open_leads (new, contacted, qualified); wms_total_orders (the warehouse''s orders for this customer). Query it by id (or org_id and id).';

revoke all on public.customer_profiles from anon, authenticated, public;
grant select on public.customer_profiles to authenticated, service_role;

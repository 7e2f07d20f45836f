-- Warehouse integration (SPEC 11): reconciliation runs and the machine API (functions/api).

-- wms_integrations --
-- Every enabled warehouse integration (the reconcilers visit each).
select i.id, i.org_id from public.integrations i where i.kind = 'wms' and i.enabled order by i.created_at, i.id

-- sync_run_start --
select r.* from private.sync_run_start(%(integration_id)s::uuid, %(sync_type)s::text, %(lease)s::interval,
                                      %(full_every)s::interval) r

-- sync_run_page --
-- The page's raw JSON as the warehouse sent it, parsed once, in the database; its number in the run.
select private.sync_run_page(%(run_id)s::uuid, %(page)s::text::jsonb, %(cursor)s::text, %(number)s::integer) as result

-- sync_runs_purge --
select private.sync_runs_purge(%(integration_id)s::uuid, %(sync_type)s::text, %(keep)s::integer,
                               %(max_age)s::interval) as purged

-- sync_run_finish --
select r.* from private.sync_run_finish(%(run_id)s::uuid) r

-- sync_run_fail --
select r.* from private.sync_run_fail(%(run_id)s::uuid, %(error)s::text, %(page)s::integer, %(cursor)s::text) r

-- api_authenticate --
select a.key_id, a.org_id, a.default_country, a.prefix
  from private.api_authenticate(%(key_hash)s::bytea, %(scope)s::text) a

-- api_customer --
select c.id, c.full_name, c.phone_e164 as phone, c.email, c.preferred_channel, c.city, c.stage,
       c.created_at, c.updated_at
  from public.customers c
 where c.org_id = %(org_id)s::uuid and c.id = %(customer_id)s::uuid

-- api_search_customers --
-- The same matching as the staff RPC (phone digits, email, name across transliterations).
select c.id, c.full_name, c.phone_e164 as phone, c.email, c.preferred_channel, c.city, c.stage,
       c.created_at, c.updated_at
  from public.search_customers(%(org_id)s::uuid, %(q)s::text, %(max_rows)s::integer) c

-- api_order --
-- By id or by order code; always within the key's organization.
select o.id, o.order_code, o.status, o.customer_id, o.lead_id, o.external_item_ref,
       o.item_snapshot ->> 'title' as title, o.price_amount, o.currency, o.booking_amount, o.delivery_method,
       o.wms_order_id, o.created_at, o.updated_at
  from public.orders o
 where o.org_id = %(org_id)s::uuid
   and (o.id = %(order_id)s::uuid or o.order_code = %(order_code)s::text)

-- api_create_lead --
-- One customer per phone and email (find_or_create_customer), then a new lead for them.
with c as (
  select f.customer_id, f.created
    from private.find_or_create_customer(%(org_id)s::uuid, %(phone)s::text, %(email)s::text, %(full_name)s::text,
                                         %(fields)s::jsonb) f
)
insert into public.leads (org_id, customer_id, source, notes, external_item_ref)
select %(org_id)s::uuid, c.customer_id, %(source)s::public.lead_source, %(notes)s::text, %(external_item_ref)s::text
  from c
returning id as lead_id, customer_id, status, source, created_at, (select c.created from c) as customer_created

-- Erasure of a customer's personal data (SPEC 6.6): erase_customer and what it scrubs.
--
-- History is never deleted through the API; personal data is erased instead. Orders, leads, their
-- item snapshots and status history stay; what identifies the person goes. hidden.erased_columns()
-- lists every column erase_customer scrubs: `crm db lint` (personal_data_not_erased) compares it
-- with the columns declared personal (comment 'personal: …', or named like contact data), and
-- tests/integration/test_erasure.py plants a marker in every one and finds it nowhere afterwards.

create or replace function hidden.erased_columns()
returns text[]
language sql immutable parallel safe
set search_path = ''
as $$
  select array[
    'public.customers.full_name', 'public.customers.phone_e164', 'public.customers.email',
    'public.customers.city', 'public.customers.preferred_channel',
    'public.leads.notes', 'public.orders.booking_meta', 'public.tasks.description',
    'public.lead_status_events.note', 'public.order_status_events.change_notes',
    'private.outbox.payload', 'public.activities.summary', 'public.activities.data',
    'private.inbound_events.payload']
$$;
comment on function hidden.erased_columns() is
  'Every column (schema.table.column) erase_customer scrubs for the erased customer''s rows; crm db lint checks that it covers every personal column.';
revoke all on function hidden.erased_columns() from public;

create or replace function public.erase_customer(customer_id uuid)
returns public.customers
language plpgsql volatile security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  target public.customers;
  caller text := pg_catalog.current_setting('role');
  leads uuid[];
  orders uuid[];
begin
  -- Definer rights (erased_at and the status events are written by no API role), so the caller's
  -- rights are checked here as RLS would: a customer of another org does not exist (404); in the
  -- org, only an admin erases (403). The migrations owner (no SET ROLE: the CLI) may too.
  select c.* into target from public.customers c where c.id = erase_customer.customer_id;
  if not found or (caller <> 'none' and not (target.org_id = any (hidden.staff_org_ids()))) then
    raise sqlstate 'PT404' using message = 'customer not found', detail = 'not_found';
  end if;
  if caller <> 'none' and hidden.staff_role(target.org_id) is distinct from 'admin' then
    raise sqlstate 'PT403' using message = 'only an admin may erase a customer', detail = 'forbidden';
  end if;
  select c.* into target from public.customers c where c.id = target.id for update;
  if target.erased_at is not null then
    return target;  -- erased already: nothing left to scrub, no second event
  end if;

  select coalesce(pg_catalog.array_agg(l.id), '{}') into leads
    from public.leads l where l.org_id = target.org_id and l.customer_id = target.id;
  select coalesce(pg_catalog.array_agg(o.id), '{}') into orders
    from public.orders o where o.org_id = target.org_id and o.customer_id = target.id;

  update public.leads l set notes = null
   where l.org_id = target.org_id and l.id = any (leads) and l.notes is not null;
  update public.orders o set booking_meta = o.booking_meta - '{notes,contact}'::text[]
   where o.org_id = target.org_id and o.id = any (orders) and o.booking_meta ?| '{notes,contact}'::text[];
  update public.tasks t set description = null
   where t.org_id = target.org_id and (t.lead_id = any (leads) or t.order_id = any (orders))
     and t.description is not null;
  -- Webhooks in: the raw events behind the customer's activities (found by the ids the activities
  -- keep: a warehouse event's id, a call's CallSid, a leadgen_id), then the activities themselves.
  update private.inbound_events e set payload = '{}'
   where e.org_id = target.org_id and e.payload <> '{}'
     and exists (select from public.activities a
                  where a.org_id = target.org_id
                    and (a.customer_id = target.id or a.lead_id = any (leads) or a.order_id = any (orders))
                    and (e.event_id = a.data ->> 'event_id' or e.event_id = a.source_ref
                         or pg_catalog.starts_with(e.event_id, a.source_ref || ':')));
  update public.activities a set summary = 'Erased', data = '{}'
   where a.org_id = target.org_id
     and (a.customer_id = target.id or a.lead_id = any (leads) or a.order_id = any (orders))
     and (a.summary <> 'Erased' or a.data <> '{}');
  update public.lead_status_events e set note = null
   where e.org_id = target.org_id and e.lead_id = any (leads) and e.note is not null;
  update public.order_status_events e set change_notes = null
   where e.org_id = target.org_id and e.order_id = any (orders) and e.change_notes is not null;
  -- Events already in the outbox keep their ids and types; their personal fields go.
  update private.outbox x
     set payload = pg_catalog.jsonb_set(x.payload, '{data}',
                     (x.payload -> 'data') - '{full_name,phone_e164,email,city,preferred_channel,note}'::text[])
   where x.org_id = target.org_id
     and ((x.aggregate_type = 'customer' and x.aggregate_id = target.id)
          or (x.aggregate_type = 'lead' and x.aggregate_id = any (leads))
          or (x.aggregate_type = 'order' and x.aggregate_id = any (orders)))
     and (x.payload -> 'data') ?| '{full_name,phone_e164,email,city,preferred_channel,note}'::text[];

  -- Last, the customer: phone and email become null, so no booking, webhook or import finds this
  -- row again (a later booking with that phone creates a new customer); the outbox trigger writes
  -- customer.erased; the row is frozen from now on (tg_customers__erased_frozen).
  update public.customers c
     set full_name = 'Erased customer', phone_e164 = null, email = null, city = null,
         preferred_channel = null, erased_at = pg_catalog.now()
   where c.id = target.id
  returning c.* into target;
  return target;
end
$$;
comment on function public.erase_customer(uuid) is
  'Erases a customer''s personal data (admin; SPEC 6.6): name (placeholder), phone, email, city, channel; notes of their leads, orders (booking_meta notes/contact), tasks and status events; personal fields of their outbox events. Orders, leads, snapshots and history stay; erased_at is set and customer.erased written. PT404 not visible, PT403 not an admin. Erasing twice changes nothing.';
revoke all on function public.erase_customer(uuid) from public, anon, service_role;
grant execute on function public.erase_customer(uuid) to authenticated;

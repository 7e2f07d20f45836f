-- customers: normalised email and text (the text rules), protected org_id, erased rows frozen,
-- timestamps, outbox events (customer.erased for an erasure, db/triggers/erasure.sql).

create or replace function hidden.tg_customers__normalize()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.email := nullif(pg_catalog.lower(pg_catalog.btrim(new.email)), '');
  new.full_name := hidden.text_normalize(new.full_name, 'name');
  new.city := nullif(hidden.text_normalize(new.city, 'city'), '');
  return new;
end
$$;
comment on function hidden.tg_customers__normalize() is
  'Stores email lower-case and trimmed (so the per-org unique index is case-insensitive); name and city in the text rules'' normalised form (the CHECKs refuse what stays invalid).';
revoke all on function hidden.tg_customers__normalize() from public;

create or replace function hidden.customer_event_data(c public.customers)
returns jsonb
language sql stable
-- No SET clause: inlined into the outbox triggers' statements (SECURITY INVOKER, qualified names).
as $$
  select case when c.erased_at is not null then
           pg_catalog.jsonb_build_object('id', c.id, 'org_id', c.org_id, 'erased_at', c.erased_at)
         else pg_catalog.jsonb_build_object(
           'id', c.id, 'org_id', c.org_id, 'full_name', c.full_name, 'phone_e164', c.phone_e164,
           'email', c.email, 'preferred_channel', c.preferred_channel, 'city', c.city,
           'stage', c.stage, 'created_at', c.created_at, 'updated_at', c.updated_at) end
$$;
comment on function hidden.customer_event_data(public.customers) is
  'The data of a customer.* outbox event: the customer''s fields, or ids and time only once erased.';
revoke all on function hidden.customer_event_data(public.customers) from public;

create or replace function hidden.tg_customers__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.outbox_write(
    new.org_id,
    case when new.erased_at is not null then 'customer.erased' else 'customer.updated' end,
    'customer', new.id, hidden.customer_event_data(new));
  return null;
end
$$;
comment on function hidden.tg_customers__outbox() is
  'Writes customer.updated / customer.erased (ids and time only) to private.outbox in the changing transaction.';

create or replace function hidden.tg_customers__outbox_created()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  -- Statement-level: a bulk insert (crm import) writes its customer.created events in one insert.
  insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)
  select n.org_id, 'customer.created', 'customer', n.id,
         hidden.outbox_body('customer.created', hidden.customer_event_data(n))
    from new_rows n;
  return null;
end
$$;
comment on function hidden.tg_customers__outbox_created() is
  'Statement-level after insert: customer.created of every inserted customer to private.outbox, in one insert.';
revoke all on function hidden.tg_customers__outbox_created() from public;

create or replace function hidden.tg_customers__erased_frozen()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  raise sqlstate 'PT409' using message = 'this customer was erased and cannot be changed',
    detail = 'customer_erased';
end
$$;
comment on function hidden.tg_customers__erased_frozen() is
  'Refuses any change to an erased customer (no writer may put personal data back on it).';
revoke all on function hidden.tg_customers__erased_frozen() from public;
revoke all on function hidden.tg_customers__outbox() from public;

drop trigger if exists _040_normalize on public.customers;
create trigger _040_normalize
  before insert or update of email, full_name, city on public.customers
  for each row execute function hidden.tg_customers__normalize();

drop trigger if exists _030_erased_frozen on public.customers;
create trigger _030_erased_frozen
  before update on public.customers
  for each row when (old.erased_at is not null)
  execute function hidden.tg_customers__erased_frozen();

drop trigger if exists _050_protect on public.customers;
create trigger _050_protect
  before update on public.customers
  for each row when (old.org_id is distinct from new.org_id)
  execute function hidden.tg__protect_org_id();

drop trigger if exists _100_timestamps on public.customers;
create trigger _100_timestamps
  before update on public.customers
  for each row when (
    (old.org_id, old.full_name, old.phone_e164, old.email, old.preferred_channel, old.city, old.stage,
     old.erased_at)
    is distinct from (new.org_id, new.full_name, new.phone_e164, new.email, new.preferred_channel, new.city,
                      new.stage, new.erased_at))
  execute function hidden.tg__set_updated_at();

drop trigger if exists _900_outbox_created on public.customers;
create trigger _900_outbox_created
  after insert on public.customers
  referencing new table as new_rows
  for each statement execute function hidden.tg_customers__outbox_created();

drop trigger if exists _900_outbox_updated on public.customers;
create trigger _900_outbox_updated
  after update on public.customers
  for each row when (
    (old.full_name, old.phone_e164, old.email, old.preferred_channel, old.city, old.stage, old.erased_at)
    is distinct from (new.full_name, new.phone_e164, new.email, new.preferred_channel, new.city, new.stage,
                      new.erased_at))
  execute function hidden.tg_customers__outbox();

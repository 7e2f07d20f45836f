-- customers: normalised email, protected org_id, timestamps, outbox events.

create or replace function hidden.tg_customers__normalize()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.email := nullif(pg_catalog.lower(pg_catalog.btrim(new.email)), '');
  new.full_name := pg_catalog.btrim(new.full_name);
  new.city := nullif(pg_catalog.btrim(new.city), '');
  return new;
end
$$;
comment on function hidden.tg_customers__normalize() is
  'Stores email lower-case and trimmed (so the per-org unique index is case-insensitive), trims name and city.';
revoke all on function hidden.tg_customers__normalize() from public;

create or replace function hidden.tg_customers__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.outbox_write(
    new.org_id,
    case tg_op when 'INSERT' then 'customer.created' else 'customer.updated' end,
    'customer', new.id,
    pg_catalog.jsonb_build_object(
      'id', new.id, 'org_id', new.org_id, 'full_name', new.full_name, 'phone_e164', new.phone_e164,
      'email', new.email, 'preferred_channel', new.preferred_channel, 'city', new.city,
      'stage', new.stage, 'created_at', new.created_at, 'updated_at', new.updated_at));
  return null;
end
$$;
comment on function hidden.tg_customers__outbox() is
  'Writes customer.created / customer.updated to private.outbox in the changing transaction.';
revoke all on function hidden.tg_customers__outbox() from public;

drop trigger if exists _040_normalize on public.customers;
create trigger _040_normalize
  before insert or update of email, full_name, city on public.customers
  for each row execute function hidden.tg_customers__normalize();

drop trigger if exists _050_protect on public.customers;
create trigger _050_protect
  before update on public.customers
  for each row when (old.org_id is distinct from new.org_id)
  execute function hidden.tg__protect_org_id();

drop trigger if exists _100_timestamps on public.customers;
create trigger _100_timestamps
  before update on public.customers
  for each row when (
    (old.org_id, old.full_name, old.phone_e164, old.email, old.preferred_channel, old.city, old.stage)
    is distinct from (new.org_id, new.full_name, new.phone_e164, new.email, new.preferred_channel, new.city,
                      new.stage))
  execute function hidden.tg__set_updated_at();

drop trigger if exists _900_outbox_created on public.customers;
create trigger _900_outbox_created
  after insert on public.customers
  for each row execute function hidden.tg_customers__outbox();

drop trigger if exists _900_outbox_updated on public.customers;
create trigger _900_outbox_updated
  after update on public.customers
  for each row when (
    (old.full_name, old.phone_e164, old.email, old.preferred_channel, old.city, old.stage)
    is distinct from (new.full_name, new.phone_e164, new.email, new.preferred_channel, new.city, new.stage))
  execute function hidden.tg_customers__outbox();

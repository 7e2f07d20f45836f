-- Customers: the one find-or-create (SPEC 10: one customer per normalised phone and per email in an
-- org, whoever creates it, under any concurrency). Booking, webhooks, imports and the machine API
-- call this; callers pass the phone already normalised to E.164 (crm.contacts) and any email.

create or replace function private.find_or_create_customer(p_org uuid, p_phone_e164 text, p_email text,
                                                           p_full_name text default null,
                                                           p_fields jsonb default '{}')
returns table (customer_id uuid, created boolean)
language plpgsql volatile
set search_path = ''
as $$
declare
  v_phone text := nullif(pg_catalog.btrim(p_phone_e164), '');
  v_email text := nullif(pg_catalog.lower(pg_catalog.btrim(p_email)), '');
  v_id uuid;
begin
  if v_phone is null and v_email is null then
    raise sqlstate 'PT422' using message = 'give a phone number or an email address',
      detail = 'contact_required', hint = 'phone';
  end if;
  -- By phone, then by email, else created. ON CONFLICT DO NOTHING against both unique indexes makes
  -- concurrent first contacts of one new person meet on one row: the loser waits for the winner's
  -- commit, inserts nothing, and finds the winner's row on the next pass (a new snapshot per
  -- statement under READ COMMITTED). An erased customer is never found again (erase_customer also
  -- removed its phone and email): the next contact creates a new customer.
  for attempt in 1..3 loop
    v_id := null;
    if v_phone is not null then
      select c.id into v_id from public.customers c where c.org_id = p_org and c.phone_e164 = v_phone and c.erased_at is null;
    end if;
    if v_id is null and v_email is not null then
      select c.id into v_id from public.customers c where c.org_id = p_org and pg_catalog.lower(c.email) = v_email
         and c.erased_at is null;
    end if;
    if v_id is not null then
      return query select v_id, false;
      return;
    end if;
    insert into public.customers as c (org_id, full_name, phone_e164, email, preferred_channel, city)
    values (p_org, coalesce(nullif(pg_catalog.btrim(p_full_name), ''), v_phone, v_email), v_phone, v_email,
            p_fields ->> 'preferred_channel', p_fields ->> 'city')
    on conflict do nothing
    returning c.id into v_id;
    if v_id is not null then
      return query select v_id, true;
      return;
    end if;
  end loop;
  raise sqlstate 'PT409' using message = 'The customer changed concurrently; retry.', detail = 'concurrent_update';
end
$$;
comment on function private.find_or_create_customer(uuid, text, text, text, jsonb) is
  'The customer of an org with this E.164 phone, else this email, else a new one (name defaults to the phone or email; p_fields may carry preferred_channel, city). Race-free: concurrent callers with one new contact get one row. Returns (customer_id, created). Runs with the caller''s rights.';
revoke all on function private.find_or_create_customer(uuid, text, text, text, jsonb) from public;
grant execute on function private.find_or_create_customer(uuid, text, text, text, jsonb) to service_role;

-- payments and inspections: protected columns, timestamps, who recorded them, and the money rules
-- of SPEC 6.8 for every writer (PostgREST, functions, jobs):
--   * a payment's currency is its order's (and the order's currency is fixed once it has payments);
--   * refunds (pending or succeeded) never exceed the succeeded deposits and balances;
--   * a succeeded deposit moves its order from under_inspection to deposit_paid, through a normal
--     UPDATE of orders, so the order triggers write the status event (with a note saying why) and
--     the outbox row;
--   * an order with a price_amount becomes paid_out only when succeeded payments minus refunds
--     cover it (PT409 not_paid).
-- Every payment write first locks its order row, so concurrent payments of one order, and the
-- order's own status changes, serialise: each sees the others' committed sums.

-- ---------------------------------------------------------------------------------------------
-- Shared helpers
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.tg__protect_columns()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
declare
  column_name text;
  old_row jsonb := pg_catalog.to_jsonb(old);
  new_row jsonb := pg_catalog.to_jsonb(new);
begin
  foreach column_name in array tg_argv loop
    if (old_row -> column_name) is distinct from (new_row -> column_name) then
      raise sqlstate 'PT422' using
        message = pg_catalog.format('%s.%s cannot be changed', tg_table_name, column_name),
        detail = 'immutable_column', hint = column_name;
    end if;
  end loop;
  return new;
end
$$;
comment on function hidden.tg__protect_columns() is
  'Refuses (PT422 immutable_column, hint = the column) changing any column named in the trigger''s arguments.';
revoke all on function hidden.tg__protect_columns() from public;

create or replace function hidden.tg__stamp_actor()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
declare
  actor uuid := (select auth.uid());
begin
  -- A caller with a user id is who did it; a service writer (no user) may say who it was for.
  if actor is not null then
    new := pg_catalog.jsonb_populate_record(new, pg_catalog.jsonb_build_object(tg_argv[0], actor));
  end if;
  return new;
end
$$;
comment on function hidden.tg__stamp_actor() is
  'Sets the column named by the trigger argument (recorded_by, inspected_by) to auth.uid() when there is a user.';
revoke all on function hidden.tg__stamp_actor() from public;

create or replace function hidden.order_paid_amount(org uuid, order_id uuid)
returns numeric
language sql stable parallel safe
set search_path = ''
as $$
  select coalesce(sum(p.signed_amount), 0)
    from public.payments p
   where p.org_id = org and p.order_id = order_paid_amount.order_id and p.status = 'succeeded'
$$;
comment on function hidden.order_paid_amount(uuid, uuid) is
  'Succeeded payments minus succeeded refunds of one order; called by the SECURITY DEFINER order triggers (all payments count).';
revoke all on function hidden.order_paid_amount(uuid, uuid) from public;

-- ---------------------------------------------------------------------------------------------
-- payments
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.tg_payments__lock_order()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
declare
  order_currency text;
begin
  -- As the caller: a row the caller may not change is not locked here, and RLS or the foreign key
  -- refuses the payment right after. NO KEY UPDATE conflicts with every other payment write and
  -- status change of the order, yet lets unrelated rows (tasks, shipments) keep referencing it.
  select o.currency into order_currency
    from public.orders o
   where o.org_id = new.org_id and o.id = new.order_id
     for no key update;
  if not found or tg_op <> 'INSERT' then
    return new;
  end if;
  if order_currency is null then
    raise sqlstate 'PT409' using message = 'the order has no currency yet: set it before recording payments',
      detail = 'order_currency_missing', hint = 'currency';
  end if;
  new.currency := coalesce(new.currency, order_currency);
  if new.currency <> order_currency then
    raise sqlstate 'PT422' using
      message = pg_catalog.format('a payment''s currency is its order''s (%s), not %s', order_currency, new.currency),
      detail = 'currency_mismatch', hint = 'currency';
  end if;
  return new;
end
$$;
comment on function hidden.tg_payments__lock_order() is
  'Locks the payment''s order (serialising its payments and status changes); on insert the currency defaults to the order''s and must equal it (PT422 currency_mismatch; PT409 order_currency_missing).';
revoke all on function hidden.tg_payments__lock_order() from public;

create or replace function hidden.tg_payments__settled()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if old.status is distinct from new.status and old.status <> 'pending' then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('payment cannot move from %s to %s (record a refund instead)', old.status, new.status),
      detail = 'invalid_transition';
  end if;
  if old.amount is distinct from new.amount and old.status <> 'pending' then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('the amount of a %s payment cannot be changed', old.status),
      detail = 'payment_settled', hint = 'amount';
  end if;
  return new;
end
$$;
comment on function hidden.tg_payments__settled() is
  'Payment machine: pending -> succeeded or failed; a settled payment keeps its status and amount (PT409).';
revoke all on function hidden.tg_payments__settled() from public;

create or replace function hidden.tg_payments__paid_at()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.paid_at := pg_catalog.now();
  return new;
end
$$;
comment on function hidden.tg_payments__paid_at() is 'A payment that succeeds without paid_at was paid now.';
revoke all on function hidden.tg_payments__paid_at() from public;

create or replace function hidden.tg_payments__refund_cap()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  paid numeric;
  refunded numeric;
begin
  -- Definer: every payment of the order counts, whatever the caller's policies show. The order row
  -- is locked (tg_payments__lock_order), so no concurrent payment of it is in flight.
  select coalesce(sum(p.amount) filter (where p.kind <> 'refund' and p.status = 'succeeded'), 0),
         coalesce(sum(p.amount) filter (where p.kind = 'refund' and p.status <> 'failed'), 0)
    into paid, refunded
    from public.payments p
   where p.org_id = new.org_id and p.order_id = new.order_id;
  if refunded > paid then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('refunds of %s %s would exceed what was paid (%s %s)',
                                  refunded, new.currency, paid, new.currency),
      detail = 'refund_exceeds_paid', hint = 'amount';
  end if;
  return null;
end
$$;
comment on function hidden.tg_payments__refund_cap() is
  'Refunds (pending or succeeded) of an order never exceed its succeeded deposits and balances (PT409 refund_exceeds_paid).';
revoke all on function hidden.tg_payments__refund_cap() from public;

create or replace function hidden.tg_payments__deposit_moves_order()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  caller_note text := pg_catalog.current_setting('crm.status_note', true);
begin
  -- Definer: the rule holds for whoever may record the payment. auth.uid() still names the caller,
  -- so the status event's changed_by is who recorded the deposit.
  perform pg_catalog.set_config('crm.status_note',
    pg_catalog.format('deposit of %s %s succeeded (payment %s)', new.amount, new.currency, new.id), true);
  update public.orders o set status = 'deposit_paid'
   where o.org_id = new.org_id and o.id = new.order_id and o.status = 'under_inspection';
  perform pg_catalog.set_config('crm.status_note', coalesce(caller_note, ''), true);
  return null;
end
$$;
comment on function hidden.tg_payments__deposit_moves_order() is
  'A succeeded deposit moves its order from under_inspection to deposit_paid (status event and outbox by the order triggers, note naming the payment).';
revoke all on function hidden.tg_payments__deposit_moves_order() from public;

create or replace function hidden.tg_payments__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.outbox_write(
    new.org_id,
    case tg_op when 'INSERT' then 'payment.recorded' else 'payment.status_changed' end,
    'payment', new.id,
    pg_catalog.jsonb_build_object(
      'id', new.id, 'org_id', new.org_id, 'order_id', new.order_id, 'kind', new.kind,
      'amount', new.amount, 'currency', new.currency, 'method', new.method, 'status', new.status,
      'from_status', case tg_op when 'UPDATE' then old.status end,
      'external_ref', new.external_ref, 'paid_at', new.paid_at, 'recorded_by', new.recorded_by,
      'changed_by', (select auth.uid()), 'created_at', new.created_at, 'updated_at', new.updated_at));
  return null;
end
$$;
comment on function hidden.tg_payments__outbox() is
  'Writes payment.recorded / payment.status_changed to private.outbox in the changing transaction.';
revoke all on function hidden.tg_payments__outbox() from public;

drop trigger if exists _010_lock_order on public.payments;
create trigger _010_lock_order
  before insert or update on public.payments
  for each row execute function hidden.tg_payments__lock_order();

drop trigger if exists _050_protect on public.payments;
create trigger _050_protect
  before update on public.payments
  for each row when (
    old.org_id is distinct from new.org_id or old.order_id is distinct from new.order_id
    or old.kind is distinct from new.kind or old.currency is distinct from new.currency
    or old.recorded_by is distinct from new.recorded_by or old.created_at is distinct from new.created_at)
  execute function hidden.tg__protect_columns('org_id', 'order_id', 'kind', 'currency', 'recorded_by', 'created_at');

drop trigger if exists _060_settled on public.payments;
create trigger _060_settled
  before update on public.payments
  for each row when (old.status <> 'pending'
                     and (old.status is distinct from new.status or old.amount is distinct from new.amount))
  execute function hidden.tg_payments__settled();

drop trigger if exists _100_timestamps on public.payments;
create trigger _100_timestamps
  before update on public.payments
  -- Not old.* / new.*: a BEFORE trigger may not look at the generated signed_amount.
  for each row when ((old.amount, old.method, old.status, old.external_ref, old.paid_at)
                     is distinct from (new.amount, new.method, new.status, new.external_ref, new.paid_at))
  execute function hidden.tg__set_updated_at();

drop trigger if exists _110_recorded_by on public.payments;
create trigger _110_recorded_by
  before insert on public.payments
  for each row execute function hidden.tg__stamp_actor('recorded_by');

drop trigger if exists _120_paid_at on public.payments;
create trigger _120_paid_at
  before insert or update on public.payments
  for each row when (new.status = 'succeeded' and new.paid_at is null)
  execute function hidden.tg_payments__paid_at();

drop trigger if exists _300_refund_cap on public.payments;
create trigger _300_refund_cap
  after insert or update on public.payments
  for each row when (new.kind = 'refund' and new.status <> 'failed')
  execute function hidden.tg_payments__refund_cap();

drop trigger if exists _400_deposit_moves_order_recorded on public.payments;
create trigger _400_deposit_moves_order_recorded
  after insert on public.payments
  for each row when (new.kind = 'deposit' and new.status = 'succeeded')
  execute function hidden.tg_payments__deposit_moves_order();

drop trigger if exists _400_deposit_moves_order_succeeded on public.payments;
create trigger _400_deposit_moves_order_succeeded
  after update on public.payments
  for each row when (new.kind = 'deposit' and new.status = 'succeeded' and old.status is distinct from new.status)
  execute function hidden.tg_payments__deposit_moves_order();

drop trigger if exists _900_outbox_recorded on public.payments;
create trigger _900_outbox_recorded
  after insert on public.payments
  for each row execute function hidden.tg_payments__outbox();

drop trigger if exists _900_outbox_status_changed on public.payments;
create trigger _900_outbox_status_changed
  after update on public.payments
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_payments__outbox();

-- ---------------------------------------------------------------------------------------------
-- orders: the money rules on the order's side. Named _150_ so they fire after _050_protect and
-- before the status machine (_200_), the status events (_500_) and the outbox (_900_).
-- ---------------------------------------------------------------------------------------------
create or replace function hidden.tg_orders__paid_out_needs_payment()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  paid numeric := hidden.order_paid_amount(new.org_id, new.id);
begin
  -- The UPDATE holds the order row, and payment writers lock it first: the sum is settled.
  if paid < new.price_amount then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('order %s is not paid: %s of %s %s received', new.order_code, paid,
                                  new.price_amount, coalesce(new.currency, '')),
      detail = 'not_paid';
  end if;
  return new;
end
$$;
comment on function hidden.tg_orders__paid_out_needs_payment() is
  'An order with a price_amount becomes paid_out only when succeeded payments minus refunds cover it (PT409 not_paid).';
revoke all on function hidden.tg_orders__paid_out_needs_payment() from public;

create or replace function hidden.tg_orders__currency_fixed_by_payments()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if exists (select from public.payments p where p.org_id = new.org_id and p.order_id = new.id) then
    raise sqlstate 'PT409' using message = 'the order''s currency cannot change once it has payments',
      detail = 'currency_has_payments', hint = 'currency';
  end if;
  return new;
end
$$;
comment on function hidden.tg_orders__currency_fixed_by_payments() is
  'Keeps payments in their order''s currency: an order with payments keeps its currency (PT409 currency_has_payments).';
revoke all on function hidden.tg_orders__currency_fixed_by_payments() from public;

drop trigger if exists _150_paid_out_needs_payment on public.orders;
create trigger _150_paid_out_needs_payment
  before update of status on public.orders
  for each row when (new.status = 'paid_out' and old.status is distinct from new.status
                     and new.price_amount is not null)
  execute function hidden.tg_orders__paid_out_needs_payment();

drop trigger if exists _150_currency_fixed_by_payments on public.orders;
create trigger _150_currency_fixed_by_payments
  before update of currency on public.orders
  for each row when (old.currency is distinct from new.currency)
  execute function hidden.tg_orders__currency_fixed_by_payments();

-- ---------------------------------------------------------------------------------------------
-- inspections
-- ---------------------------------------------------------------------------------------------
drop trigger if exists _050_protect on public.inspections;
create trigger _050_protect
  before update on public.inspections
  for each row when (
    old.org_id is distinct from new.org_id or old.order_id is distinct from new.order_id
    or old.inspected_by is distinct from new.inspected_by or old.created_at is distinct from new.created_at)
  execute function hidden.tg__protect_columns('org_id', 'order_id', 'inspected_by', 'created_at');

drop trigger if exists _100_timestamps on public.inspections;
create trigger _100_timestamps
  before update on public.inspections
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

drop trigger if exists _110_inspected_by on public.inspections;
create trigger _110_inspected_by
  before insert on public.inspections
  for each row execute function hidden.tg__stamp_actor('inspected_by');

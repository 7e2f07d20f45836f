-- orders: money fields hold at most cents. More decimals are refused (PT422 naming the field), not
-- rounded, for every writer; accepted amounts are stored at scale 2.

create or replace function hidden.tg_orders__money()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if new.price_amount <> pg_catalog.round(new.price_amount, 2) then
    raise sqlstate 'PT422' using message = 'price_amount must have at most 2 decimals',
      detail = 'too_many_decimals', hint = 'price_amount';
  end if;
  if new.booking_amount <> pg_catalog.round(new.booking_amount, 2) then
    raise sqlstate 'PT422' using message = 'booking_amount must have at most 2 decimals',
      detail = 'too_many_decimals', hint = 'booking_amount';
  end if;
  new.price_amount := pg_catalog.round(new.price_amount, 2);
  new.booking_amount := pg_catalog.round(new.booking_amount, 2);
  return new;
end
$$;
comment on function hidden.tg_orders__money() is
  'Refuses price_amount / booking_amount with more than 2 decimals (PT422 too_many_decimals, hint = the column); stores them at scale 2.';
revoke all on function hidden.tg_orders__money() from public;

drop trigger if exists _030_money on public.orders;
create trigger _030_money
  before insert or update of price_amount, booking_amount on public.orders
  for each row execute function hidden.tg_orders__money();

-- orders: protected columns and snapshot, timestamps, and the order status machine (status events, outbox).

create or replace function hidden.tg_orders__protect()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if old.org_id is distinct from new.org_id then
    raise sqlstate 'PT422' using message = 'orders.org_id cannot be changed',
      detail = 'immutable_column', hint = 'org_id';
  end if;
  if old.external_item_ref is distinct from new.external_item_ref then
    raise sqlstate 'PT422' using message = 'orders.external_item_ref cannot be changed',
      detail = 'immutable_column', hint = 'external_item_ref';
  end if;
  raise sqlstate 'PT422' using
    message = 'orders.item_snapshot cannot be changed except cached_images and images_state',
    detail = 'immutable_column', hint = 'item_snapshot';
end
$$;
comment on function hidden.tg_orders__protect() is
  'Refuses changing org_id, external_item_ref, or the item snapshot beyond cached_images/images_state.';
revoke all on function hidden.tg_orders__protect() from public;

-- cached_images/images_state are written by the image cache only (service jobs): a PostgREST caller
-- must not be able to put a third-party URL where the CRM and the public tracking page show images.
create or replace function hidden.tg_orders__image_cache_owned()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    new.item_snapshot := new.item_snapshot || pg_catalog.jsonb_build_object(
      'cached_images', '[]'::jsonb,
      'images_state', case when pg_catalog.jsonb_typeof(new.item_snapshot -> 'images') = 'array'
                            and pg_catalog.jsonb_array_length(new.item_snapshot -> 'images') > 0
                           then 'pending' else 'none' end);
    return new;
  end if;
  raise sqlstate 'PT422' using
    message = 'orders.item_snapshot cached_images and images_state are written by the image cache only',
    detail = 'immutable_column', hint = 'item_snapshot';
end
$$;
comment on function hidden.tg_orders__image_cache_owned() is
  'For API callers (authenticated, anon): a new order starts with no cached images; changing them is refused.';
revoke all on function hidden.tg_orders__image_cache_owned() from public;

drop trigger if exists _045_image_cache_owned_insert on public.orders;
create trigger _045_image_cache_owned_insert
  before insert on public.orders
  for each row when (current_user in ('authenticated', 'anon'))
  execute function hidden.tg_orders__image_cache_owned();

drop trigger if exists _045_image_cache_owned_update on public.orders;
create trigger _045_image_cache_owned_update
  before update on public.orders
  for each row when (
    current_user in ('authenticated', 'anon')
    and ((old.item_snapshot -> 'cached_images') is distinct from (new.item_snapshot -> 'cached_images')
         or (old.item_snapshot -> 'images_state') is distinct from (new.item_snapshot -> 'images_state')))
  execute function hidden.tg_orders__image_cache_owned();

drop trigger if exists _050_protect on public.orders;
create trigger _050_protect
  before update on public.orders
  for each row when (
    old.org_id is distinct from new.org_id
    or old.external_item_ref is distinct from new.external_item_ref
    or (old.item_snapshot - '{cached_images,images_state}'::text[])
       is distinct from (new.item_snapshot - '{cached_images,images_state}'::text[]))
  execute function hidden.tg_orders__protect();

drop trigger if exists _100_timestamps on public.orders;
create trigger _100_timestamps
  before update on public.orders
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

-- The order machine (SPEC 6.4): pending_manager -> under_inspection -> deposit_paid -> paid_out ->
-- shipped -> delivered -> closed; any status before delivered -> cancelled.
select private.define_status_machine(
  machine => 'order', on_table => 'public.orders',
  transitions => '{"pending_manager": ["under_inspection", "cancelled"], "under_inspection": ["deposit_paid", "cancelled"],
                   "deposit_paid": ["paid_out", "cancelled"], "paid_out": ["shipped", "cancelled"],
                   "shipped": ["delivered", "cancelled"], "delivered": ["closed"]}',
  changed_events => '{"*": "order.status_changed"}',
  created_event => 'order.created',
  events_table => 'public.order_status_events', subject_column => 'order_id', note_column => 'change_notes',
  payload => '{id, org_id, order_code, customer_id, lead_id, status, item_id, external_item_ref,
               title=item_snapshot.title, archived_item, price_amount, currency, booking_amount,
               delivery_method, assigned_manager, created_at, updated_at}');

-- Replaced by the generic trigger set above (databases migrated before it still have them).
drop function if exists hidden.tg_orders__status_machine(), hidden.tg_orders__status_event(), hidden.tg_orders__outbox(),
  hidden.order_transition_allowed(public.order_status, public.order_status);

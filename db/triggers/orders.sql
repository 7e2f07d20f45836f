-- orders: protected columns and snapshot, timestamps, the order status machine, status events, outbox.

create or replace function hidden.order_transition_allowed(from_status public.order_status,
                                                           to_status public.order_status)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select from_status = to_status
      or (from_status, to_status) in (
           ('pending_manager', 'under_inspection'), ('under_inspection', 'deposit_paid'),
           ('deposit_paid', 'paid_out'), ('paid_out', 'shipped'), ('shipped', 'delivered'),
           ('delivered', 'closed'))
      or (to_status = 'cancelled'
          and from_status in ('pending_manager', 'under_inspection', 'deposit_paid', 'paid_out', 'shipped'))
$$;
comment on function hidden.order_transition_allowed(public.order_status, public.order_status) is
  'The order machine (SPEC 6.4): pending_manager -> under_inspection -> deposit_paid -> paid_out -> shipped -> delivered -> closed; any status before delivered -> cancelled.';
revoke all on function hidden.order_transition_allowed(public.order_status, public.order_status) from public;
grant execute on function hidden.order_transition_allowed(public.order_status, public.order_status)
  to authenticated, service_role;

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

create or replace function hidden.tg_orders__status_machine()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if not hidden.order_transition_allowed(old.status, new.status) then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('order cannot move from %s to %s', old.status, new.status),
      detail = 'invalid_transition';
  end if;
  return new;
end
$$;
comment on function hidden.tg_orders__status_machine() is
  'Enforces the order machine for every writer (RPC, function or direct PATCH); PT409 names both statuses.';
revoke all on function hidden.tg_orders__status_machine() from public;

create or replace function hidden.tg_orders__status_event()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  insert into public.order_status_events (org_id, order_id, from_status, to_status, changed_by, change_notes)
  values (new.org_id, new.id, case tg_op when 'UPDATE' then old.status end, new.status,
          (select auth.uid()), hidden.status_note());
  return null;
end
$$;
comment on function hidden.tg_orders__status_event() is
  'Writes order_status_events on insert (from_status null) and on every status change: who (auth.uid()), when, the RPC''s note.';
revoke all on function hidden.tg_orders__status_event() from public;

create or replace function hidden.tg_orders__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.outbox_write(
    new.org_id,
    case tg_op when 'INSERT' then 'order.created' else 'order.status_changed' end,
    'order', new.id,
    pg_catalog.jsonb_build_object(
      'id', new.id, 'org_id', new.org_id, 'order_code', new.order_code, 'customer_id', new.customer_id,
      'lead_id', new.lead_id, 'status', new.status,
      'from_status', case tg_op when 'UPDATE' then old.status end,
      'item_id', new.item_id, 'external_item_ref', new.external_item_ref,
      'title', new.item_snapshot ->> 'title', 'archived_item', new.archived_item,
      'price_amount', new.price_amount, 'currency', new.currency, 'booking_amount', new.booking_amount,
      'delivery_method', new.delivery_method, 'assigned_manager', new.assigned_manager,
      'changed_by', (select auth.uid()), 'note', hidden.status_note(),
      'created_at', new.created_at, 'updated_at', new.updated_at));
  return null;
end
$$;
comment on function hidden.tg_orders__outbox() is
  'Writes order.created / order.status_changed to private.outbox in the changing transaction.';
revoke all on function hidden.tg_orders__outbox() from public;

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

drop trigger if exists _200_status_machine on public.orders;
create trigger _200_status_machine
  before update on public.orders
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_orders__status_machine();

drop trigger if exists _500_status_event_created on public.orders;
create trigger _500_status_event_created
  after insert on public.orders
  for each row execute function hidden.tg_orders__status_event();

drop trigger if exists _500_status_event_changed on public.orders;
create trigger _500_status_event_changed
  after update on public.orders
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_orders__status_event();

drop trigger if exists _900_outbox_created on public.orders;
create trigger _900_outbox_created
  after insert on public.orders
  for each row execute function hidden.tg_orders__outbox();

drop trigger if exists _900_outbox_status_changed on public.orders;
create trigger _900_outbox_status_changed
  after update on public.orders
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_orders__outbox();

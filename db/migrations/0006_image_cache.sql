-- The image cache (SPEC 7.4, 8): a work queue of orders and a record of every image it handled.
--
-- The jobs run as service_role (SPEC 6.1), so the grants at the end are all they can use. Workers
-- claim queue rows with FOR UPDATE SKIP LOCKED in a short transaction that also pushes the row's
-- available_at past a lease, then download with no transaction open, then write the result in
-- another short transaction that first re-locks the row by its claim token. So several workers
-- never do one order at once, no row lock is held during a download, and an order whose worker
-- died is claimed again when its lease runs out. Nothing here is granted to anon or authenticated.

create table private.image_cache_queue (
  order_id uuid primary key references public.orders (id) on delete cascade,
  org_id uuid not null references public.organizations (id) on delete cascade,
  available_at timestamptz not null default now(),
  claim_token uuid,
  claimed_at timestamptz,
  claims integer not null default 0,
  enqueued_at timestamptz not null default now(),
  constraint image_cache_queue_claims_nonnegative check (claims >= 0)
);
comment on table private.image_cache_queue is
  'Orders the image cache still has to work on: pending ones, images waiting for a retry, backfills in progress. A row leaves when the order''s images_state is final.';
comment on column private.image_cache_queue.available_at is
  'When a worker may claim the row: now for new work, the lease end while claimed, the next retry time while waiting.';
comment on column private.image_cache_queue.claim_token is
  'Token of the worker holding the lease; the result is written only while it still matches.';
comment on column private.image_cache_queue.claims is 'How many times a worker claimed the order.';

create index image_cache_queue_available_idx on private.image_cache_queue (available_at);
create index image_cache_queue_org_idx on private.image_cache_queue (org_id);

create table private.image_cache_images (
  order_id uuid not null references public.orders (id) on delete cascade,
  org_id uuid not null references public.organizations (id) on delete cascade,
  position smallint not null,
  source_url text not null,
  state text not null,
  cached_url text,
  thumb_url text,
  sha256 text,
  width integer,
  height integer,
  reason text,
  detail text,
  http_status integer,
  attempts integer not null default 0,
  next_attempt_at timestamptz,
  first_attempt_at timestamptz not null default now(),
  last_attempt_at timestamptz not null default now(),
  primary key (order_id, position),
  constraint image_cache_images_state_known check (state in ('cached', 'retrying', 'failed')),
  constraint image_cache_images_position_range check (position between 0 and 99),
  constraint image_cache_images_cached_has_url check (state <> 'cached' or cached_url is not null),
  constraint image_cache_images_failure_has_reason check (state = 'cached' or reason is not null),
  constraint image_cache_images_retry_has_time check (state <> 'retrying' or next_attempt_at is not null),
  constraint image_cache_images_attempts_positive check (attempts > 0),
  constraint image_cache_images_detail_length check (char_length(detail) <= 2000)
);
comment on table private.image_cache_images is
  'One row per image the cache attempted (position in the snapshot''s images, or in its third-party cached_images for legacy rows): its first-party URLs once cached, else the last failure. To retry an order from scratch, delete its rows and set its images_state to pending.';
comment on column private.image_cache_images.state is
  'cached; retrying (a transient failure, next_attempt_at set); failed (refused, invalid, or out of attempts).';
comment on column private.image_cache_images.reason is
  'Short failure code: blocked_address, bad_scheme, bad_url, blocked_port, dns_failure, connect_failed, timeout, too_many_redirects, http_status, too_large, unsupported_format, undecodable, too_many_pixels, storage_failed, ...';

create index image_cache_images_failures_idx on private.image_cache_images (last_attempt_at desc)
  where state <> 'cached';
create index image_cache_images_org_idx on private.image_cache_images (org_id, order_id);

-- Finding the work: pending orders (the booking path sets images_state = 'pending').
create index orders_images_pending_idx on public.orders (created_at)
  where (item_snapshot ->> 'images_state') = 'pending';

create view private.image_cache_failures
with (security_invoker = true)
as
select i.org_id, o.order_code, i.order_id, i.position, i.source_url, i.state, i.reason, i.detail,
       i.http_status, i.attempts, i.next_attempt_at, i.first_attempt_at, i.last_attempt_at
  from private.image_cache_images i
  join public.orders o on o.id = i.order_id
 where i.state <> 'cached';
comment on view private.image_cache_failures is
  'For operators: every image not cached, with why, how often it was tried and when it is tried next.';

alter table private.image_cache_queue enable row level security;
alter table private.image_cache_images enable row level security;
revoke all on private.image_cache_queue, private.image_cache_images, private.image_cache_failures
  from public, anon, authenticated, service_role;
-- What the jobs do: enqueue, claim (FOR UPDATE needs UPDATE), reschedule and dequeue orders; record
-- and re-record images (upsert). service_role bypasses RLS; operators read the failures view.
-- Which orders backfill-images works on, in one place for its page query and its count.
create function private.needs_image_backfill(snapshot jsonb, first_party text)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  with s as (
    select case pg_catalog.jsonb_typeof(snapshot -> 'images')
             when 'array' then snapshot -> 'images' else '[]'::jsonb end as images,
           case pg_catalog.jsonb_typeof(snapshot -> 'cached_images')
             when 'array' then snapshot -> 'cached_images' else '[]'::jsonb end as cached)
  -- Never cached (pending and failed orders belong to cache-images), with something to cache,
  -- and no cached image yet or one that is not first-party.
  select coalesce(snapshot ->> 'images_state', 'none') not in ('pending', 'failed')
     and (pg_catalog.jsonb_array_length(s.images) > 0 or pg_catalog.jsonb_array_length(s.cached) > 0)
     and (pg_catalog.jsonb_array_length(s.cached) = 0
          or exists (select from pg_catalog.jsonb_array_elements_text(s.cached) u (url)
                      where not pg_catalog.starts_with(u.url, first_party)))
    from s
$$;
comment on function private.needs_image_backfill(jsonb, text) is
  'True for an order snapshot backfill-images should (re)cache: never cached, or cached from a third-party URL.';
revoke all on function private.needs_image_backfill(jsonb, text) from public;
grant execute on function private.needs_image_backfill(jsonb, text) to service_role;

grant select, insert, update, delete on private.image_cache_queue to service_role;
grant select, insert, update on private.image_cache_images to service_role;
grant select on private.image_cache_failures to service_role;

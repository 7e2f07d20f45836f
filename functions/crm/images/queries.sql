-- The image cache jobs (cache-images, backfill-images). They run as service_role (SPEC 6.1).

-- images_has_work --
select exists (
         select from public.orders o
          where (o.item_snapshot ->> 'images_state') = 'pending'
            and not exists (select from private.image_cache_queue q where q.order_id = o.id))
    or exists (select from private.image_cache_queue q where q.available_at <= now()) as has_work

-- images_enqueue_pending --
-- New pending orders join the queue (the partial index orders_images_pending_idx finds them).
insert into private.image_cache_queue (order_id, org_id)
select o.id, o.org_id
  from public.orders o
 where (o.item_snapshot ->> 'images_state') = 'pending'
   and not exists (select from private.image_cache_queue q where q.order_id = o.id)
 order by o.created_at, o.id
 limit %(limit)s
on conflict (order_id) do nothing

-- images_claim --
-- The generic leased claim (db/functions/000_work_queue.sql): SKIP LOCKED passes over rows another
-- worker is claiming; the lease (available_at pushed past it) keeps a claimed order ours after commit.
select c.id::uuid as order_id
  from private.queue_claim('image_cache', %(limit)s, %(token)s, make_interval(secs => %(lease_seconds)s)) c

-- images_claim_order --
-- Backfill: claim one order by inserting its queue row; nothing returned if someone else has it.
insert into private.image_cache_queue as q (order_id, org_id, available_at, claim_token, claims)
select o.id, o.org_id, now() + make_interval(secs => %(lease_seconds)s), %(token)s, 1
  from public.orders o
 where o.id = %(order_id)s
on conflict (order_id) do nothing
returning q.order_id

-- images_orders_to_cache --
select o.id as order_id, o.org_id, o.order_code,
       o.item_snapshot -> 'images' as images,
       o.item_snapshot -> 'cached_images' as cached_images,
       o.item_snapshot ->> 'images_state' as images_state
  from public.orders o
 where o.id = any (%(order_ids)s::uuid[])

-- images_order_records --
select position, source_url, state, cached_url, thumb_url, attempts, next_attempt_at,
       coalesce(next_attempt_at > now(), false) as waiting
  from private.image_cache_images
 where order_id = %(order_id)s
 order by position

-- images_hold_claim --
-- The write transaction's first step: still ours? (A lease that ran out may have passed to another worker.)
select private.queue_hold('image_cache', %(order_id)s::text, %(token)s) as held

-- images_record --
-- A retrying image waits its step of the schedule (private.queue_backoff, on the database clock, no
-- jitter); the write returns when, for the order's place in the queue.
insert into private.image_cache_images as i (
  order_id, org_id, position, source_url, state, cached_url, thumb_url, sha256, width, height,
  reason, detail, http_status, attempts, next_attempt_at, first_attempt_at, last_attempt_at)
select %(order_id)s, %(org_id)s, r.position, r.source_url, r.state, r.cached_url, r.thumb_url, r.sha256,
       r.width, r.height, r.reason, left(r.detail, 2000), r.http_status, r.attempts,
       case when r.state = 'retrying'
            then now() + private.queue_backoff(r.attempts, %(retry_schedule)s::interval[], 0) end,
       now(), now()
  from jsonb_to_recordset(%(records)s::jsonb) as r(
         position smallint, source_url text, state text, cached_url text, thumb_url text, sha256 text,
         width integer, height integer, reason text, detail text, http_status integer, attempts integer)
on conflict (order_id, position) do update
   set source_url = excluded.source_url, state = excluded.state, cached_url = excluded.cached_url,
       thumb_url = excluded.thumb_url, sha256 = excluded.sha256, width = excluded.width,
       height = excluded.height, reason = excluded.reason, detail = excluded.detail,
       http_status = excluded.http_status, attempts = excluded.attempts,
       next_attempt_at = excluded.next_attempt_at, last_attempt_at = now()
returning position, next_attempt_at

-- images_write_snapshot --
-- Only cached_images and images_state change: the orders trigger refuses anything else.
update public.orders
   set item_snapshot = item_snapshot || jsonb_build_object('cached_images', %(cached_images)s::jsonb,
                                                           'images_state', %(images_state)s::text)
 where id = %(order_id)s
   and (item_snapshot -> 'cached_images', item_snapshot ->> 'images_state')
       is distinct from (%(cached_images)s::jsonb, %(images_state)s::text)

-- images_reschedule --
select private.queue_release('image_cache', %(order_id)s::text, %(token)s, %(available_at)s) as released

-- images_dequeue --
delete from private.image_cache_queue
 where order_id = %(order_id)s and claim_token = %(token)s

-- images_backfill_candidates --
-- Legacy orders without first-party images (private.needs_image_backfill); queued ones are in
-- progress. Keyset pages by id, so a rerun resumes cleanly.
select o.id as order_id, o.org_id, o.order_code, o.item_id, o.external_item_ref, o.archived_item,
       o.item_snapshot -> 'images' as images,
       o.item_snapshot -> 'cached_images' as cached_images,
       o.item_snapshot ->> 'images_state' as images_state
  from public.orders o
 where o.id > %(after)s
   and private.needs_image_backfill(o.item_snapshot, %(first_party)s)
   and not exists (select from private.image_cache_queue q where q.order_id = o.id)
 order by o.id
 limit %(limit)s

-- images_backfill_count --
select count(*) as n
  from public.orders o
 where private.needs_image_backfill(o.item_snapshot, %(first_party)s)
   and not exists (select from private.image_cache_queue q where q.order_id = o.id)

-- images_mark_archived --
update public.orders set archived_item = true
 where id = %(order_id)s and not archived_item

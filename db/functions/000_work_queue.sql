-- The leased work queue (issue 11): one implementation for every queue declared in
-- private.work_queues (the image cache, webhook deliveries, the inbox). Applied before the other
-- function files, which call it.
--
-- A worker claims due items in one statement (FOR UPDATE SKIP LOCKED: concurrent claimers pass
-- over each other's rows instead of waiting) that leases them to its token; it works with no
-- transaction open, renews the leases of what it still holds, and writes each result in a short
-- transaction that first checks the lease is still its own. A worker that dies leaves its items to
-- the next claim once their leases run out. A claim never takes back an item whose lease the same
-- token still holds, even once that lease has run out: the worker is still on it (a stall), and
-- sending it twice at once is what the lease is there to prevent.
--
-- SECURITY INVOKER: a caller reaches only the tables it may update (service_role: the image queue
-- and deliveries; the inbox through its definer wrappers). The SQL is built from the declaration
-- rows, which only migrations write.

create or replace function private.queue_backoff(attempt integer, steps interval[], jitter double precision default 0.2)
returns interval
language sql volatile
set search_path = ''
as $$
  -- After attempt n failed, wait the n-th step (± jitter); null after the last step: dead.
  select steps[attempt] * (1 - jitter + 2 * jitter * pg_catalog.random())
$$;
comment on function private.queue_backoff(integer, interval[], double precision) is
  'Retry delay after the given failed attempt: that step of the schedule with ± jitter (default 20 %), null once the schedule is used up (the item is dead).';
revoke all on function private.queue_backoff(integer, interval[], double precision) from public;
grant execute on function private.queue_backoff(integer, interval[], double precision) to service_role;

create or replace function hidden.work_queue(queue text)
returns private.work_queues
language plpgsql stable
set search_path = ''
as $$
declare
  q private.work_queues;
begin
  select w.* into q from private.work_queues w where w.name = queue;
  if not found then
    raise sqlstate 'PT422' using message = 'no work queue named ' || pg_catalog.quote_literal(queue),
      detail = 'queue_unknown';
  end if;
  return q;
end
$$;
comment on function hidden.work_queue(text) is 'The declaration of one work queue (PT422 for an unknown name).';
revoke all on function hidden.work_queue(text) from public;
grant execute on function hidden.work_queue(text) to service_role;

create or replace function hidden.work_queue_key_type(q private.work_queues)
returns text
language sql stable
set search_path = ''
as $$
  select pg_catalog.format_type(a.atttypid, a.atttypmod)
    from pg_catalog.pg_attribute a
   where a.attrelid = q.relation and a.attname = q.key_column
$$;
comment on function hidden.work_queue_key_type(private.work_queues) is 'The type of a queue''s key column (keys travel as text).';
revoke all on function hidden.work_queue_key_type(private.work_queues) from public;
grant execute on function hidden.work_queue_key_type(private.work_queues) to service_role;

create or replace function private.queue_claim(queue text, max_items integer, token uuid, lease interval)
returns table (id text, lost_lease timestamptz, claims integer)
language plpgsql volatile
set search_path = ''
as $$
declare
  q private.work_queues := hidden.work_queue(queue);
begin
  if token is null then
    raise sqlstate 'PT422' using message = 'a claim needs a lease token', detail = 'token_required';
  end if;
  -- lost_lease: the lease an earlier holder let run out (it stopped mid-item); the caller may record it.
  return query execute pg_catalog.format($sql$
    with due as (
      select t.%1$I as key, case when t.%4$I is not null then t.%3$I end as lost_lease
        from %2$s t
       where t.%5$I <= pg_catalog.now() %6$s
         and t.%4$I is distinct from $1
         and (%7$s)
       order by t.%5$I
       limit $2
         for update of t skip locked
    )
    update %2$s t
       set %3$I = pg_catalog.now() + $3, %4$I = $1 %8$s
      from due
     where t.%1$I = due.key
    returning t.%1$I::text, due.lost_lease, %9$s
    $sql$,
    q.key_column, q.relation, q.lease_column, q.token_column, q.due_column,
    case when q.lease_column <> q.due_column
         then pg_catalog.format('and (t.%1$I is null or t.%1$I < pg_catalog.now())', q.lease_column) else '' end,
    coalesce(q.ready, 'true'),
    case when q.count_column is not null then pg_catalog.format(', %1$I = t.%1$I + 1', q.count_column) else '' end,
    case when q.count_column is not null then pg_catalog.format('t.%I', q.count_column) else 'null::integer' end)
  using token, max_items, lease;
end
$$;
comment on function private.queue_claim(text, integer, uuid, interval) is
  'Claims up to max_items due items of a queue (due time passed, no running lease, not already held by this token, ready) with FOR UPDATE SKIP LOCKED, leased to token for lease; returns their keys (as text), the lease a dead holder let run out, and the new claim count.';
revoke all on function private.queue_claim(text, integer, uuid, interval) from public;
grant execute on function private.queue_claim(text, integer, uuid, interval) to service_role;

create or replace function private.queue_renew(queue text, token uuid, keys text[], lease interval)
returns integer
language plpgsql volatile
set search_path = ''
as $$
declare
  q private.work_queues := hidden.work_queue(queue);
  n integer;
begin
  execute pg_catalog.format('update %1$s t set %2$I = pg_catalog.now() + $3 where t.%3$I = $1 and t.%4$I = any ($2::%5$s[])',
                            q.relation, q.lease_column, q.token_column, q.key_column, hidden.work_queue_key_type(q))
    using token, keys, lease;
  get diagnostics n = row_count;
  return n;
end
$$;
comment on function private.queue_renew(text, uuid, text[], interval) is
  'Extends the leases token still holds on these keys (a long item never becomes claimable twice while its worker lives); returns how many.';
revoke all on function private.queue_renew(text, uuid, text[], interval) from public;
grant execute on function private.queue_renew(text, uuid, text[], interval) to service_role;

create or replace function private.queue_hold(queue text, key text, token uuid)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
declare
  q private.work_queues := hidden.work_queue(queue);
  held boolean;
begin
  execute pg_catalog.format('select true from %1$s t where t.%2$I = $1::%3$s and t.%4$I = $2 for update',
                            q.relation, q.key_column, hidden.work_queue_key_type(q), q.token_column)
    into held using key, token;
  return coalesce(held, false);
end
$$;
comment on function private.queue_hold(text, text, uuid) is
  'The first step of writing a result: locks the item and says whether token still holds it (a lease that ran out may have passed to another worker).';
revoke all on function private.queue_hold(text, text, uuid) from public;
grant execute on function private.queue_hold(text, text, uuid) to service_role;

create or replace function private.queue_release(queue text, key text, token uuid, due timestamptz)
returns boolean
language plpgsql volatile
set search_path = ''
as $$
declare
  q private.work_queues := hidden.work_queue(queue);
  n integer;
begin
  execute pg_catalog.format('update %1$s t set %2$I = $3, %3$I = null %4$s where t.%5$I = $1::%6$s and t.%3$I = $2',
                            q.relation, q.due_column, q.token_column,
                            case when q.lease_column <> q.due_column
                                 then pg_catalog.format(', %I = null', q.lease_column) else '' end,
                            q.key_column, hidden.work_queue_key_type(q))
    using key, token, due;
  get diagnostics n = row_count;
  return n > 0;
end
$$;
comment on function private.queue_release(text, text, uuid, timestamptz) is
  'Ends token''s lease on an item and schedules it for due (null: nothing left to do); false when token no longer holds it.';
revoke all on function private.queue_release(text, text, uuid, timestamptz) from public;
grant execute on function private.queue_release(text, text, uuid, timestamptz) to service_role;

create or replace function private.queue_next_due(queue text, token uuid)
returns double precision
language plpgsql stable
set search_path = ''
as $$
declare
  q private.work_queues := hidden.work_queue(queue);
  seconds double precision;
begin
  -- Seconds until some item becomes claimable by token (null: none): the earliest due time of an
  -- unleased item, or the end of a lease held by someone else (a worker that died: its items are
  -- claimable again when the lease runs out). Items token holds itself are in flight, not waiting.
  if q.lease_column = q.due_column then
    execute pg_catalog.format($sql$
      select extract(epoch from min(t.%1$I) - pg_catalog.now())::float8 from %2$s t
       where t.%1$I < 'infinity' and t.%3$I is distinct from $1 and (%4$s)
      $sql$, q.due_column, q.relation, q.token_column, coalesce(q.ready, 'true'))
      into seconds using token;
  else
    -- Two index-friendly scans: held items were due when claimed, so they sit at the front.
    execute pg_catalog.format($sql$
      select extract(epoch from least(
               (select min(t.%1$I) from %2$s t where t.%1$I < 'infinity' and t.%3$I is null and (%5$s)),
               (select min(greatest(t.%1$I, t.%3$I)) from %2$s t
                 where t.%1$I <= pg_catalog.now() and t.%3$I is not null and t.%4$I is distinct from $1 and (%5$s)))
             - pg_catalog.now())::float8
      $sql$, q.due_column, q.relation, q.lease_column, q.token_column, coalesce(q.ready, 'true'))
      into seconds using token;
  end if;
  return seconds;
end
$$;
comment on function private.queue_next_due(text, uuid) is
  'Seconds until the next item of the queue becomes claimable by token, counting leases of others that run out; null when nothing is waiting. For a worker''s sleep.';
revoke all on function private.queue_next_due(text, uuid) from public;
grant execute on function private.queue_next_due(text, uuid) to service_role;

-- RPCs for the frontend (SPEC 6.6) and the order_cards view.
--
-- Staff RPCs are SECURITY INVOKER, so RLS decides what the caller sees and may change:
--   row hidden by RLS or absent                     -> PT404 (detail not_found)
--   row visible but RLS refuses the update          -> PT403 (detail forbidden)
--   transition refused by the status machine        -> PT409 (detail invalid_transition)
-- The permission probe is the update itself (a no-op update for a same-status request), so the
-- policies stay the single source of truth. The note travels to the status-event and outbox
-- triggers in the transaction-local setting crm.status_note.
-- track_order is the one SECURITY DEFINER RPC and the only thing anon may execute.

-- ---------------------------------------------------------------------------------------------
-- order_cards
-- ---------------------------------------------------------------------------------------------
create view public.order_cards
with (security_invoker = true)
as
select o.id,
       o.org_id,
       o.order_code,
       o.status,
       o.item_snapshot ->> 'title' as title,
       -- Only what the image cache wrote (state cached/partial): never a third-party URL.
       case when o.item_snapshot ->> 'images_state' in ('cached', 'partial')
            then o.item_snapshot -> 'cached_images' ->> 0 end as display_image_url,
       coalesce(o.item_snapshot ->> 'images_state', 'none') as image_state,
       o.archived_item,
       o.customer_id,
       -- A scalar sub-select rather than a join: it runs only for the rows of the page (after the
       -- sort and limit), and the planner keeps the ordered index scan on orders under RLS.
       (select c.full_name
          from public.customers c
         where c.org_id = o.org_id and c.id = o.customer_id) as customer_name,
       o.assigned_manager,
       o.created_at,
       o.updated_at
  from public.orders o;
comment on view public.order_cards is
  'List/kanban rows of orders (security_invoker: the caller''s RLS applies). display_image_url is the first cached (first-party) image, else null; never a third-party URL. Fast path: filter by org_id and order by created_at desc.';

revoke all on public.order_cards from anon, authenticated, public;
grant select on public.order_cards to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Shared checks
-- ---------------------------------------------------------------------------------------------
create function hidden.check_note(note text)
returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if pg_catalog.char_length(note) > 2000 then
    raise sqlstate 'PT422' using message = 'note must be at most 2000 characters',
      detail = 'note_too_long', hint = 'note';
  end if;
end
$$;
comment on function hidden.check_note(text) is 'Refuses notes over 2000 characters (PT422, field note): the one limit for PostgREST callers and PATCH /leads.';
revoke all on function hidden.check_note(text) from public;
grant execute on function hidden.check_note(text) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- track_order (anon)
-- ---------------------------------------------------------------------------------------------
create function public.track_order(token text)
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  found_order record;
begin
  if token is null or pg_catalog.char_length(token) not between 1 and 512 then
    raise sqlstate 'PT404' using message = 'no order for this tracking token', detail = 'not_found';
  end if;
  select o.id, o.org_id, o.order_code, o.status, o.item_snapshot
    into found_order
    from public.orders o
   where o.tracking_token_hash = pg_catalog.sha256(pg_catalog.convert_to(token, 'UTF8'));
  if not found then
    raise sqlstate 'PT404' using message = 'no order for this tracking token', detail = 'not_found';
  end if;
  return pg_catalog.jsonb_build_object(
    'order_code', found_order.order_code,
    'status', found_order.status,
    'title', found_order.item_snapshot ->> 'title',
    'display_image_url', case when found_order.item_snapshot ->> 'images_state' in ('cached', 'partial')
                                then found_order.item_snapshot -> 'cached_images' ->> 0 end,
    'history', coalesce((
      select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('status', e.to_status, 'at', e.created_at)
                                  order by e.created_at, e.id)
        from public.order_status_events e
       where e.org_id = found_order.org_id and e.order_id = found_order.id), '[]'::jsonb));
end
$$;
comment on function public.track_order(text) is
  'Public order tracking by the token shown once at booking (only its sha256 is stored): order code, status, item title, display image (first cached image or null) and status history (status, at). No notes, no contact data, no ids.';
revoke all on function public.track_order(text) from public;
grant execute on function public.track_order(text) to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- transition_order / set_lead_status / update_lead (staff)
-- ---------------------------------------------------------------------------------------------
create function public.transition_order(order_id uuid, to_status public.order_status, note text default null)
returns public.orders
language plpgsql volatile security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
  target public.orders;
  changed integer;
begin
  if transition_order.to_status is null then
    raise sqlstate 'PT422' using message = 'to_status is required', detail = 'required', hint = 'to_status';
  end if;
  perform hidden.check_note(transition_order.note);
  select o.* into target from public.orders o where o.id = transition_order.order_id;
  if not found then
    raise sqlstate 'PT404' using message = 'order not found', detail = 'not_found';
  end if;
  perform pg_catalog.set_config('crm.status_note', coalesce(transition_order.note, ''), true);
  update public.orders o set status = transition_order.to_status
   where o.id = target.id
  returning o.* into target;
  get diagnostics changed = row_count;
  perform pg_catalog.set_config('crm.status_note', '', true);
  if changed = 0 then
    raise sqlstate 'PT403' using message = 'you may not change this order', detail = 'forbidden';
  end if;
  return target;
end
$$;
comment on function public.transition_order(uuid, public.order_status, text) is
  'Moves an order along the order machine, recording the note on its status event. Same status: no-op. PT404 not visible, PT403 not allowed to change, PT409 refused transition.';
revoke all on function public.transition_order(uuid, public.order_status, text) from public, anon;
grant execute on function public.transition_order(uuid, public.order_status, text) to authenticated, service_role;

create function public.set_lead_status(lead_id uuid, to_status public.lead_status, note text default null)
returns public.leads
language plpgsql volatile security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
  target public.leads;
  changed integer;
begin
  if set_lead_status.to_status is null then
    raise sqlstate 'PT422' using message = 'to_status is required', detail = 'required', hint = 'to_status';
  end if;
  perform hidden.check_note(set_lead_status.note);
  select l.* into target from public.leads l where l.id = set_lead_status.lead_id;
  if not found then
    raise sqlstate 'PT404' using message = 'lead not found', detail = 'not_found';
  end if;
  perform pg_catalog.set_config('crm.status_note', coalesce(set_lead_status.note, ''), true);
  update public.leads l set status = set_lead_status.to_status
   where l.id = target.id
  returning l.* into target;
  get diagnostics changed = row_count;
  perform pg_catalog.set_config('crm.status_note', '', true);
  if changed = 0 then
    raise sqlstate 'PT403' using message = 'you may not change this lead', detail = 'forbidden';
  end if;
  return target;
end
$$;
comment on function public.set_lead_status(uuid, public.lead_status, text) is
  'Moves a lead along the lead machine, recording the note on its status event. Same status: no-op. PT404 not visible, PT403 not allowed to change (viewer; agent on a lead not assigned to them), PT409 refused transition.';
revoke all on function public.set_lead_status(uuid, public.lead_status, text) from public, anon;
grant execute on function public.set_lead_status(uuid, public.lead_status, text) to authenticated, service_role;

create function public.update_lead(lead_id uuid, status public.lead_status default null, note text default null,
                                   assigned_to uuid default null)
returns public.leads
language plpgsql volatile security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
  target public.leads;
  changed integer;
  status_changes boolean;
  appended_note text;
begin
  if update_lead.status is null and update_lead.note is null and update_lead.assigned_to is null then
    raise sqlstate 'PT400' using message = 'nothing to change: give status, note or assigned_to',
      detail = 'empty_patch';
  end if;
  perform hidden.check_note(update_lead.note);
  select l.* into target from public.leads l where l.id = update_lead.lead_id;
  if not found then
    raise sqlstate 'PT404' using message = 'lead not found', detail = 'not_found';
  end if;
  -- Permission first (a no-op update through RLS), so a viewer learns 403, not a field error.
  -- It also locks the row: re-read it, so a concurrent change that committed while we waited
  -- decides whether our status is a real change (and where our note goes).
  update public.leads l set status = l.status where l.id = target.id
  returning l.* into target;
  get diagnostics changed = row_count;
  if changed = 0 then
    raise sqlstate 'PT403' using message = 'you may not change this lead', detail = 'forbidden';
  end if;
  if update_lead.assigned_to is not null and not exists (
       select from public.staff s where s.org_id = target.org_id and s.user_id = update_lead.assigned_to) then
    raise sqlstate 'PT422' using message = 'assigned_to must be a staff member of the lead''s organization',
      detail = 'assigned_to_not_staff', hint = 'assigned_to';
  end if;
  status_changes := update_lead.status is not null and update_lead.status is distinct from target.status;
  -- A note rides on the status event when there is one; otherwise it is appended to the lead's notes.
  if update_lead.note is not null and not status_changes then
    appended_note := update_lead.note;
    if pg_catalog.char_length(coalesce(target.notes, '')) + pg_catalog.char_length(appended_note) + 2 > 20000 then
      raise sqlstate 'PT422' using
        message = 'the lead''s notes are full (20000 characters); record this note with a status change or a task',
        detail = 'notes_full', hint = 'note';
    end if;
  end if;
  perform pg_catalog.set_config('crm.status_note',
                                case when status_changes then coalesce(update_lead.note, '') else '' end, true);
  update public.leads l
     set status = coalesce(update_lead.status, l.status),
         assigned_to = coalesce(update_lead.assigned_to, l.assigned_to),
         notes = case
                   when appended_note is null then l.notes
                   when coalesce(l.notes, '') = '' then appended_note
                   else l.notes || E'\n\n' || appended_note
                 end
   where l.id = target.id
  returning l.* into target;
  perform pg_catalog.set_config('crm.status_note', '', true);
  return target;
end
$$;
comment on function public.update_lead(uuid, public.lead_status, text, uuid) is
  'One lead patch (PATCH /leads/{id}): a status change through the lead machine with the note on its status event; without a status change the note is appended to notes; assigned_to must be staff of the lead''s organization (PT422 assigned_to_not_staff). PT400 empty_patch, PT404, PT403, PT409 as the other staff RPCs.';
revoke all on function public.update_lead(uuid, public.lead_status, text, uuid) from public, anon, service_role;
grant execute on function public.update_lead(uuid, public.lead_status, text, uuid) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- dashboard_stats / search_customers (staff of the organization)
-- ---------------------------------------------------------------------------------------------
create function public.dashboard_stats(org_id uuid, since timestamptz default null, until timestamptz default null)
returns jsonb
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
  low timestamptz := coalesce(dashboard_stats.since, '-infinity');
  high timestamptz := coalesce(dashboard_stats.until, 'infinity');
  result jsonb;
begin
  if not exists (select from public.organizations o where o.id = dashboard_stats.org_id) then
    raise sqlstate 'PT404' using message = 'organization not found', detail = 'not_found';
  end if;
  if low > high then
    raise sqlstate 'PT422' using message = 'since must not be after until', detail = 'invalid_range',
      hint = 'since';
  end if;
  with counts as (
    select o.status, pg_catalog.count(*) as n
      from public.orders o
     where o.org_id = dashboard_stats.org_id and o.created_at >= low and o.created_at < high
     group by o.status
  ), totals as (
    select coalesce(sum(c.n), 0) as total,
           coalesce(sum(c.n) filter (where c.status = 'pending_manager'), 0) as awaiting,
           coalesce(sum(c.n) filter (where c.status in ('paid_out', 'shipped', 'delivered', 'closed')), 0) as won
      from counts c
  )
  select pg_catalog.jsonb_build_object(
           'total_orders', t.total,
           'by_status', (select pg_catalog.jsonb_object_agg(s, coalesce(c.n, 0) order by s)
                           from pg_catalog.unnest(pg_catalog.enum_range(null::public.order_status)) s
                           left join counts c on c.status = s),
           'awaiting_manager', t.awaiting,
           'conversion_rate', case when t.total > 0 then pg_catalog.round(t.won / t.total, 4) else 0 end,
           'new_leads', (select pg_catalog.count(*)
                           from public.leads l
                          where l.org_id = dashboard_stats.org_id and l.created_at >= low
                            and l.created_at < high))
    into result
    from totals t;
  return result;
end
$$;
comment on function public.dashboard_stats(uuid, timestamptz, timestamptz) is
  'Order and lead figures of one organization for orders/leads created in [since, until) (open ends when null): total_orders, by_status (every status), awaiting_manager (pending_manager), conversion_rate (paid_out/shipped/delivered/closed over all, cancelled included; 0 without orders), new_leads (leads created in the range). PT404 for an organization the caller is not staff of.';
revoke all on function public.dashboard_stats(uuid, timestamptz, timestamptz) from public, anon;
grant execute on function public.dashboard_stats(uuid, timestamptz, timestamptz) to authenticated, service_role;

create function hidden.similar_customers(org uuid, normalized text, words text[], max_rows integer)
returns table (customer_id uuid, score real)
language plpgsql stable security definer
set search_path = ''
as $$
begin
  -- Definer rights only to let the planner see the organization's true size (RLS quals would make it
  -- guess small and skip the trigram index). So the caller must be staff of `org`, the service role,
  -- or a login role without SET ROLE (the owner: jobs and the CLI), which bypasses RLS anyway.
  if not (pg_catalog.current_setting('role') in ('service_role', 'none') or org = any (hidden.staff_org_ids())) then
    return;
  end if;
  return query execute
    'select c.id, extensions.word_similarity($2, c.search_text)
       from public.customers c
      where c.org_id = $1 and $2 operator(extensions.<%) c.search_text
        and exists (select from pg_catalog.unnest($3::text[]) w
                     where c.search_text not like (''%'' || w || ''%''))
      order by 2 desc, c.full_name, c.id
      limit $4'
    using org, normalized, words, max_rows;
end
$$;
comment on function hidden.similar_customers(uuid, text, text[], integer) is
  'search_customers'' fallback: ids of the organization''s customers whose text is trigram word-similar to the normalised query but do not contain every word (those were found already), best first. Returns nothing unless the caller is staff of the organization or the service role.';
revoke all on function hidden.similar_customers(uuid, text, text[], integer) from public;
grant execute on function hidden.similar_customers(uuid, text, text[], integer) to authenticated, service_role;

create function public.search_customers(org_id uuid, q text, max_rows integer default 20)
returns setof public.customers
language plpgsql stable security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
  query_text text := pg_catalog.btrim(search_customers.q);
  digits text;
  normalized text;
  escaped text;
  words text[];
  longest text;
  found_rows integer;
begin
  if search_customers.max_rows is null or search_customers.max_rows not between 1 and 100 then
    raise sqlstate 'PT422' using message = 'max_rows must be between 1 and 100', detail = 'invalid_max_rows',
      hint = 'max_rows';
  end if;
  if pg_catalog.char_length(query_text) > 200 then
    raise sqlstate 'PT422' using message = 'q must be at most 200 characters', detail = 'query_too_long',
      hint = 'q';
  end if;
  if not exists (select from public.organizations o where o.id = search_customers.org_id) then
    raise sqlstate 'PT404' using message = 'organization not found', detail = 'not_found';
  end if;
  if coalesce(query_text, '') = '' then
    return;
  end if;

  digits := pg_catalog.regexp_replace(query_text, '\D', '', 'g');
  if query_text ~ '^[\s0-9()+./-]+$' and pg_catalog.char_length(digits) >= 3 then
    -- Phone digits in any formatting: drop the trunk/international zeros (0151..., 0049...) so the
    -- rest is a substring of the stored E.164 digits. Dynamic SQL: planned for this very pattern.
    digits := coalesce(nullif(pg_catalog.ltrim(digits, '0'), ''), digits);
    return query execute
      'select c.* from public.customers c
        where c.org_id = $1 and c.search_text like $2 and c.phone_e164 like $2
        order by c.full_name, c.id
        limit $3'
      using search_customers.org_id, '%' || digits || '%', search_customers.max_rows;
    return;
  end if;

  normalized := hidden.search_normalize(query_text);
  if normalized = '' then
    return;
  end if;
  escaped := pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(normalized, '\', '\\'), '%', '\%'), '_', '\_');
  words := pg_catalog.regexp_split_to_array(escaped, ' ');
  select w into longest from pg_catalog.unnest(words) w order by pg_catalog.char_length(w) desc limit 1;
  -- 1. Every word as a substring, in any order (the trigram index or the org's rows, as the
  --    planner prefers); the whole query as one substring ranks first.
  return query execute
    'select c.* from public.customers c
      where c.org_id = $1 and c.search_text like $2
        and not exists (select from pg_catalog.unnest($3::text[]) w
                         where c.search_text not like (''%'' || w || ''%''))
      order by (c.search_text like $4) desc, extensions.word_similarity($5, c.search_text) desc,
               c.full_name, c.id
      limit $6'
    using search_customers.org_id, '%' || longest || '%', words, '%' || escaped || '%', normalized,
          search_customers.max_rows;
  get diagnostics found_rows = row_count;
  -- 2. Only when that leaves room: names word-similar by trigrams, which catches spelling variants
  --    between transliterations (Schukina / Shchukina). The rows still pass through RLS here.
  if found_rows < search_customers.max_rows and pg_catalog.char_length(normalized) >= 3 then
    return query
      select c.*
        from hidden.similar_customers(search_customers.org_id, normalized, words,
                                      search_customers.max_rows - found_rows) s
        join public.customers c on c.id = s.customer_id
       order by s.score desc, c.full_name, c.id;
  end if;
end
$$;
comment on function public.search_customers(uuid, text, integer) is
  'Customers of one organization matching q: phone digits in any formatting, email, or name - accent-insensitive and across Cyrillic/Latin transliteration (trigram index on customers.search_text). Best matches first, at most max_rows (1-100). PT404 for an organization the caller is not staff of.';
revoke all on function public.search_customers(uuid, text, integer) from public, anon;
grant execute on function public.search_customers(uuid, text, integer) to authenticated, service_role;

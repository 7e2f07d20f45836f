-- leads: protected columns, timestamps, the lead status machine, status events, outbox events.

create or replace function hidden.lead_transition_allowed(from_status public.lead_status,
                                                          to_status public.lead_status)
returns boolean
language sql immutable parallel safe
set search_path = ''
as $$
  select from_status = to_status
      or (from_status, to_status) in (
           ('new', 'contacted'), ('contacted', 'qualified'), ('qualified', 'converted'),
           ('new', 'lost'), ('contacted', 'lost'), ('qualified', 'lost'),
           ('new', 'junk'), ('contacted', 'junk'), ('qualified', 'junk'),
           ('lost', 'new'))
$$;
comment on function hidden.lead_transition_allowed(public.lead_status, public.lead_status) is
  'The lead machine (SPEC 6.4): new -> contacted -> qualified -> converted; new/contacted/qualified -> lost or junk; lost -> new.';
revoke all on function hidden.lead_transition_allowed(public.lead_status, public.lead_status) from public;
grant execute on function hidden.lead_transition_allowed(public.lead_status, public.lead_status)
  to authenticated, service_role;

create or replace function hidden.tg_leads__protect()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if old.org_id is distinct from new.org_id then
    raise sqlstate 'PT422' using message = 'leads.org_id cannot be changed',
      detail = 'immutable_column', hint = 'org_id';
  end if;
  raise sqlstate 'PT422' using message = 'leads.external_item_ref cannot be changed once set',
    detail = 'immutable_column', hint = 'external_item_ref';
end
$$;
comment on function hidden.tg_leads__protect() is
  'Refuses changing org_id, or external_item_ref once it is set.';
revoke all on function hidden.tg_leads__protect() from public;

create or replace function hidden.tg_leads__status_machine()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if not hidden.lead_transition_allowed(old.status, new.status) then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('lead cannot move from %s to %s', old.status, new.status),
      detail = 'invalid_transition';
  end if;
  return new;
end
$$;
comment on function hidden.tg_leads__status_machine() is
  'Enforces the lead machine for every writer (RPC, function or direct PATCH); PT409 names both statuses.';
revoke all on function hidden.tg_leads__status_machine() from public;

create or replace function hidden.tg_leads__status_event()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  insert into public.lead_status_events (org_id, lead_id, from_status, to_status, changed_by, note)
  values (new.org_id, new.id, case tg_op when 'UPDATE' then old.status end, new.status,
          (select auth.uid()), hidden.status_note());
  return null;
end
$$;
comment on function hidden.tg_leads__status_event() is
  'Writes lead_status_events on insert (from_status null) and on every status change: who (auth.uid()), when, the RPC''s note.';
revoke all on function hidden.tg_leads__status_event() from public;

create or replace function hidden.tg_leads__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  perform hidden.outbox_write(
    new.org_id,
    case tg_op when 'INSERT' then 'lead.created' else 'lead.status_changed' end,
    'lead', new.id,
    pg_catalog.jsonb_build_object(
      'id', new.id, 'org_id', new.org_id, 'legacy_id', new.legacy_id, 'customer_id', new.customer_id,
      'source', new.source, 'status', new.status,
      'from_status', case tg_op when 'UPDATE' then old.status end,
      'external_item_ref', new.external_item_ref, 'assigned_to', new.assigned_to,
      'changed_by', (select auth.uid()), 'note', hidden.status_note(),
      'created_at', new.created_at, 'updated_at', new.updated_at));
  return null;
end
$$;
comment on function hidden.tg_leads__outbox() is
  'Writes lead.created / lead.status_changed to private.outbox in the changing transaction.';
revoke all on function hidden.tg_leads__outbox() from public;

drop trigger if exists _050_protect on public.leads;
create trigger _050_protect
  before update on public.leads
  for each row when (
    old.org_id is distinct from new.org_id
    or (old.external_item_ref is not null and old.external_item_ref is distinct from new.external_item_ref))
  execute function hidden.tg_leads__protect();

drop trigger if exists _100_timestamps on public.leads;
create trigger _100_timestamps
  before update on public.leads
  for each row when (old.* is distinct from new.*)
  execute function hidden.tg__set_updated_at();

drop trigger if exists _200_status_machine on public.leads;
create trigger _200_status_machine
  before update on public.leads
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_leads__status_machine();

drop trigger if exists _500_status_event_created on public.leads;
create trigger _500_status_event_created
  after insert on public.leads
  for each row execute function hidden.tg_leads__status_event();

drop trigger if exists _500_status_event_changed on public.leads;
create trigger _500_status_event_changed
  after update on public.leads
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_leads__status_event();

drop trigger if exists _900_outbox_created on public.leads;
create trigger _900_outbox_created
  after insert on public.leads
  for each row execute function hidden.tg_leads__outbox();

drop trigger if exists _900_outbox_status_changed on public.leads;
create trigger _900_outbox_status_changed
  after update on public.leads
  for each row when (old.status is distinct from new.status)
  execute function hidden.tg_leads__outbox();

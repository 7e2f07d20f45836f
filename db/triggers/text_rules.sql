-- The text rules (0007: hidden.text_normalize / hidden.is_clean_text) for every writer: free text
-- is stored in its normalised form, whoever writes it; the CHECKs refuse what is still invalid.
-- (customers normalise in db/triggers/customers.sql.)

create or replace function hidden.tg_leads__normalize_text()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.notes := nullif(hidden.text_normalize(new.notes, 'notes'), '');
  return new;
end
$$;
comment on function hidden.tg_leads__normalize_text() is 'Stores leads.notes in the text rules'' normalised form.';
revoke all on function hidden.tg_leads__normalize_text() from public;

drop trigger if exists _040_normalize_text on public.leads;
create trigger _040_normalize_text
  before insert or update of notes on public.leads
  for each row execute function hidden.tg_leads__normalize_text();

create or replace function hidden.tg_tasks__normalize_text()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  new.title := hidden.text_normalize(new.title, 'title');
  new.description := nullif(hidden.text_normalize(new.description, 'description'), '');
  return new;
end
$$;
comment on function hidden.tg_tasks__normalize_text() is 'Stores task titles and descriptions in the text rules'' normalised form.';
revoke all on function hidden.tg_tasks__normalize_text() from public;

drop trigger if exists _040_normalize_text on public.tasks;
create trigger _040_normalize_text
  before insert or update of title, description on public.tasks
  for each row execute function hidden.tg_tasks__normalize_text();

create or replace function hidden.tg_status_events__normalize_note()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  if tg_table_name = 'order_status_events' then
    new.change_notes := nullif(hidden.text_normalize(new.change_notes, 'note'), '');
  else
    new.note := nullif(hidden.text_normalize(new.note, 'note'), '');
  end if;
  return new;
end
$$;
comment on function hidden.tg_status_events__normalize_note() is
  'Stores the note of a status event (from the RPC that made the change) in the text rules'' normalised form (attached WHEN there is a note: most status changes have none).';
revoke all on function hidden.tg_status_events__normalize_note() from public;

drop trigger if exists _040_normalize_text on public.lead_status_events;
create trigger _040_normalize_text
  before insert on public.lead_status_events
  for each row when (new.note is not null) execute function hidden.tg_status_events__normalize_note();

drop trigger if exists _040_normalize_text on public.order_status_events;
create trigger _040_normalize_text
  before insert on public.order_status_events
  for each row when (new.change_notes is not null) execute function hidden.tg_status_events__normalize_note();

drop trigger if exists _040_normalize_text on public.session_booking_status_events;
create trigger _040_normalize_text
  before insert on public.session_booking_status_events
  for each row when (new.note is not null) execute function hidden.tg_status_events__normalize_note();

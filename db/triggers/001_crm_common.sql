-- Shared trigger functions of the CRM tables: protected org_id and the outbox writer.

create or replace function hidden.tg__protect_org_id()
returns trigger
language plpgsql volatile
set search_path = ''
as $$
begin
  raise sqlstate 'PT422' using
    message = pg_catalog.format('%s.org_id cannot be changed', tg_table_name),
    detail = 'immutable_column', hint = 'org_id';
end
$$;
comment on function hidden.tg__protect_org_id() is
  'Refuses moving a row to another organization (attached with WHEN old.org_id is distinct from new.org_id).';
revoke all on function hidden.tg__protect_org_id() from public;

create or replace function hidden.outbox_body(event_type text, data jsonb)
returns jsonb
language sql stable
-- No SET clause: inlined into its callers' statements (it is SECURITY INVOKER, qualified names).
as $$
  select pg_catalog.jsonb_build_object(
           'type', event_type,
           'timestamp', pg_catalog.to_char(pg_catalog.now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', data)
$$;
comment on function hidden.outbox_body(text, jsonb) is
  'An outbox event as a Standard Webhooks body {type, timestamp, data} (the transaction''s time, UTC).';
revoke all on function hidden.outbox_body(text, jsonb) from public;

create or replace function hidden.outbox_write(org uuid, event_type text, aggregate_type text,
                                               aggregate_id uuid, data jsonb)
returns void
-- PL/pgSQL, not SQL: a SQL function's INSERT is parsed and planned again on every call (three per
-- booking); PL/pgSQL keeps the plan for the session.
language plpgsql volatile
set search_path = ''
as $$
#variable_conflict use_variable
begin
  insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)
  values (org, event_type, aggregate_type, aggregate_id, hidden.outbox_body(event_type, data));
end
$$;
comment on function hidden.outbox_write(uuid, text, text, uuid, jsonb) is
  'Appends one event to private.outbox as a Standard Webhooks body {type, timestamp, data}. Called by the SECURITY DEFINER outbox triggers only.';
revoke all on function hidden.outbox_write(uuid, text, text, uuid, jsonb) from public;

create or replace function hidden.status_note()
returns text
language sql stable
-- No SET clause: the planner inlines it (a SET makes every call a full function call); its one
-- call is schema-qualified and it is SECURITY INVOKER.
as $$
  select nullif(pg_catalog.current_setting('crm.status_note', true), '')
$$;
comment on function hidden.status_note() is
  'The note an RPC passed for the status change it is making (transaction-local setting crm.status_note).';
revoke all on function hidden.status_note() from public;

-- ---------------------------------------------------------------------------------------------
-- Status machines as data (private.status_machines / private.status_transitions, the status_machines migration).
-- One trigger set serves every machine. define_status_machine writes the rows and attaches the
-- triggers with the machine's static parts as trigger arguments, so the per-row work is one
-- primary-key lookup of the transition (static SQL, plan cached per table). Only the status-event
-- insert is dynamic (EXECUTE): its table differs per machine (~30 µs per event, measured).
-- Every machine's table has `id`, `org_id` and `status` columns.
-- ---------------------------------------------------------------------------------------------

create or replace function hidden.tg__status_machine()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    if not exists (select from private.status_machines m
                    where m.machine = tg_argv[0] and new.status::text = any (m.initial_statuses)) then
      raise sqlstate 'PT409' using
        message = pg_catalog.format('%s cannot start as %s', pg_catalog.replace(tg_argv[0], '_', ' '), new.status),
        detail = 'invalid_transition';
    end if;
  elsif not exists (select from private.status_transitions t
                     where t.machine = tg_argv[0] and t.from_status = old.status::text
                       and t.to_status = new.status::text) then
    raise sqlstate 'PT409' using
      message = pg_catalog.format('%s cannot move from %s to %s', pg_catalog.replace(tg_argv[0], '_', ' '),
                                  old.status, new.status),
      detail = 'invalid_transition';
  end if;
  return new;
end
$$;
comment on function hidden.tg__status_machine() is
  'Enforces the machine named by the trigger argument for every writer (RPC, function or direct PATCH): PT409 naming both statuses. On insert (when the machine limits initial statuses) PT409 naming the status.';
revoke all on function hidden.tg__status_machine() from public;

-- The insert side is statement-level with a transition table: a bulk insert (crm import) writes its
-- status events and created events in one statement each instead of one trigger call per row; a
-- one-row insert (a booking) costs the same as the row trigger did.
create or replace function hidden.tg__status_event()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  -- tg_argv: the machine's status-event table, subject column and note column (see define_status_machine).
  target text := pg_catalog.format('insert into %s (org_id, %I, from_status, to_status, changed_by, %I) ',
                                   tg_argv[0]::regclass, tg_argv[1], tg_argv[2]);
begin
  if tg_level = 'STATEMENT' then  -- after insert: every inserted row (new_rows) in one insert
    execute target || 'select n.org_id, n.id, null, n.status, $1, $2 from new_rows n'
      using (select auth.uid()), hidden.status_note();
  else
    execute target || 'values ($1, $2, $3, $4, $5, $6)'
      using new.org_id, new.id, case tg_op when 'UPDATE' then old.status end, new.status,
            (select auth.uid()), hidden.status_note();
  end if;
  return null;
end
$$;
comment on function hidden.tg__status_event() is
  'Writes the machine''s status-event rows: statement-level after insert, one per inserted row (from_status null); row-level on every status change. Who (auth.uid()), when, the RPC''s note.';
revoke all on function hidden.tg__status_event() from public;

create or replace function hidden.tg__outbox()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  -- tg_argv: machine, created event ('' = none), payload keys, payload paths (text[] literals), as
  -- define_status_machine copies them from private.status_machines: no lookup per row.
  keys text[] := tg_argv[2];
  paths text[] := tg_argv[3];
  event text;
  doc jsonb;
  data jsonb := '{}';
  i integer;
  columns_ text[];
  plain text[];      -- keys that are a column of the row under their own name
  computed_keys text[];
  computed_paths text[];
  extra jsonb;
begin
  if tg_level = 'STATEMENT' then
    -- After insert: the created event of every inserted row (new_rows) in one insert. The plain keys
    -- are the row's JSON minus its other columns (one operator per row); only a renamed or nested
    -- key (orders: title=item_snapshot.title) is looked up one by one.
    extra := pg_catalog.jsonb_build_object('from_status', null, 'changed_by', (select auth.uid()),
                                           'note', hidden.status_note());
    select pg_catalog.array_agg(a.attname::text) into columns_
      from pg_catalog.pg_attribute a where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped;
    select coalesce(pg_catalog.array_agg(u.k) filter (where u.k = u.p and u.k = any (columns_)), '{}'),
           coalesce(pg_catalog.array_agg(u.k) filter (where not (u.k = u.p and u.k = any (columns_))), '{}'),
           coalesce(pg_catalog.array_agg(u.p) filter (where not (u.k = u.p and u.k = any (columns_))), '{}')
      into plain, computed_keys, computed_paths
      from rows from (pg_catalog.unnest(keys), pg_catalog.unnest(paths)) u (k, p);
    columns_ := array(select c from pg_catalog.unnest(columns_) c where c <> all (plain));
    if pg_catalog.cardinality(computed_keys) = 0 then
      insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)
      select n.org_id, tg_argv[1], tg_argv[0], n.id,
             hidden.outbox_body(tg_argv[1], (pg_catalog.to_jsonb(n) - columns_) || extra)
        from new_rows n;
    else
      insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)
      select n.org_id, tg_argv[1], tg_argv[0], n.id,
             hidden.outbox_body(tg_argv[1], (pg_catalog.to_jsonb(n) - columns_) || d.data || extra)
        from new_rows n
        cross join lateral (
          select pg_catalog.jsonb_object_agg(
                   u.k, coalesce(pg_catalog.to_jsonb(n) #> pg_catalog.string_to_array(u.p, '.'), 'null')) as data
            from rows from (pg_catalog.unnest(computed_keys), pg_catalog.unnest(computed_paths)) u (k, p)) d;
    end if;
    return null;
  elsif tg_op = 'INSERT' then
    event := nullif(tg_argv[1], '');
  else
    select t.event_type into event
      from private.status_transitions t
     where t.machine = tg_argv[0] and t.from_status = old.status::text and t.to_status = new.status::text;
  end if;
  if event is null then
    return null;
  end if;
  -- A loop of simple expressions: cheaper than a sub-select (no executor start per row).
  doc := pg_catalog.to_jsonb(new);
  for i in 1 .. pg_catalog.cardinality(keys) loop
    data := pg_catalog.jsonb_set(data, array[keys[i]],
                                 coalesce(doc #> pg_catalog.string_to_array(paths[i], '.'), 'null'));
  end loop;
  perform hidden.outbox_write(
    new.org_id, event, tg_argv[0], new.id,
    data || pg_catalog.jsonb_build_object(
              'from_status', case tg_op when 'UPDATE' then old.status end,
              'changed_by', (select auth.uid()), 'note', hidden.status_note()));
  return null;
end
$$;
comment on function hidden.tg__outbox() is
  'Writes the machine''s created event of every inserted row (statement-level after insert), and the event of the transition (if it has one) on a status change (row-level), to private.outbox in the changing transaction. Payload: the machine''s keys plus from_status, changed_by, note.';
revoke all on function hidden.tg__outbox() from public;

create or replace function private.define_status_machine(
  machine text,
  on_table regclass,
  transitions jsonb,
  changed_events jsonb,
  payload text[],
  created_event text default null,
  initial_statuses text[] default null,
  events_table regclass default null,
  subject_column text default null,
  note_column text default 'note')
returns void
language plpgsql volatile
set search_path = ''
as $$
#variable_conflict use_variable
declare
  labels text[];
  rows_ private.status_transitions[];
  m private.status_machines;
  outbox_args text;
begin
  select pg_catalog.array_agg(e.enumlabel::text order by e.enumsortorder) into labels
    from pg_catalog.pg_attribute a join pg_catalog.pg_enum e on e.enumtypid = a.atttypid
   where a.attrelid = on_table and a.attname = 'status' and not a.attisdropped;
  if labels is null then
    raise exception '%: % has no enum column status', machine, on_table;
  end if;

  select pg_catalog.array_agg(row(machine, f.key, t.value,
           coalesce(changed_events ->> t.value, changed_events ->> '*'))::private.status_transitions)
    into rows_
    from pg_catalog.jsonb_each(transitions) f
    cross join lateral pg_catalog.jsonb_array_elements_text(f.value) t;
  if exists (select from pg_catalog.unnest(rows_) r
              where r.from_status <> all (labels) or r.to_status <> all (labels))
     or exists (select from pg_catalog.unnest(initial_statuses) s where s <> all (labels)) then
    raise exception '%: unknown status (the statuses of % are %)', machine, on_table, labels;
  end if;

  insert into private.status_machines as m (machine, table_name, created_event, initial_statuses, events_table,
                                            subject_column, note_column, payload_keys, payload_paths)
  select machine, on_table::text, created_event, initial_statuses, events_table::text,
         case when events_table is not null then subject_column end,
         case when events_table is not null then note_column end,
         pg_catalog.array_agg(pg_catalog.split_part(p, '=', 1) order by o),
         pg_catalog.array_agg(coalesce(nullif(pg_catalog.split_part(p, '=', 2), ''), p) order by o)
    from pg_catalog.unnest(payload) with ordinality u(p, o)
  on conflict on constraint status_machines_pkey do update
     set table_name = excluded.table_name, created_event = excluded.created_event,
         initial_statuses = excluded.initial_statuses, events_table = excluded.events_table,
         subject_column = excluded.subject_column, note_column = excluded.note_column,
         payload_keys = excluded.payload_keys, payload_paths = excluded.payload_paths
  returning * into m;
  outbox_args := pg_catalog.format('%L, %L, %L, %L', machine, coalesce(created_event, ''), m.payload_keys, m.payload_paths);
  delete from private.status_transitions t where t.machine = machine;
  insert into private.status_transitions select * from pg_catalog.unnest(rows_);

  -- The trigger set (names carry the order prefixes every table uses).
  execute pg_catalog.format('drop trigger if exists _200_status_machine on %s', on_table);
  execute pg_catalog.format('create trigger _200_status_machine before update on %s for each row'
                            ' when (old.status is distinct from new.status)'
                            ' execute function hidden.tg__status_machine(%L)', on_table, machine);
  execute pg_catalog.format('drop trigger if exists _200_status_machine_initial on %s', on_table);
  if initial_statuses is not null then
    execute pg_catalog.format('create trigger _200_status_machine_initial before insert on %s for each row'
                              ' execute function hidden.tg__status_machine(%L)', on_table, machine);
  end if;
  execute pg_catalog.format('drop trigger if exists _500_status_event_created on %s', on_table);
  execute pg_catalog.format('drop trigger if exists _500_status_event_changed on %s', on_table);
  if events_table is not null then
    execute pg_catalog.format('create trigger _500_status_event_created after insert on %s'
                              ' referencing new table as new_rows for each statement'
                              ' execute function hidden.tg__status_event(%L, %L, %L)', on_table,
                              m.events_table, m.subject_column, m.note_column);
    execute pg_catalog.format('create trigger _500_status_event_changed after update on %s for each row'
                              ' when (old.status is distinct from new.status)'
                              ' execute function hidden.tg__status_event(%L, %L, %L)', on_table, m.events_table,
                              m.subject_column, m.note_column);
  end if;
  execute pg_catalog.format('drop trigger if exists _900_outbox_created on %s', on_table);
  if created_event is not null then
    execute pg_catalog.format('create trigger _900_outbox_created after insert on %s'
                              ' referencing new table as new_rows for each statement'
                              ' execute function hidden.tg__outbox(%s)', on_table, outbox_args);
  end if;
  execute pg_catalog.format('drop trigger if exists _900_outbox_status_changed on %s', on_table);
  execute pg_catalog.format('create trigger _900_outbox_status_changed after update on %s for each row'
                            ' when (old.status is distinct from new.status)'
                            ' execute function hidden.tg__outbox(%s)', on_table, outbox_args);
end
$$;
comment on function private.define_status_machine(text, regclass, jsonb, jsonb, text[], text, text[], regclass, text, text) is
  'Declares (or redeclares) a status machine: transitions {from: [to, ...]}, changed_events {to_status or "*": event type}, payload keys ("key" or "key=dotted.path"), optional created event, initial statuses and status-event table; attaches the generic trigger set to the table. Run by the repeatable trigger files.';
revoke all on function private.define_status_machine(text, regclass, jsonb, jsonb, text[], text, text[], regclass, text, text)
  from public;

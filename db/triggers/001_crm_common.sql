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
-- No SET clause, so the planner inlines it into the INSERTs below (SECURITY INVOKER, every name
-- qualified).
as $$
  select pg_catalog.jsonb_build_object(
           'type', event_type,
           'timestamp', pg_catalog.to_char(pg_catalog.now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', data)
$$;
comment on function hidden.outbox_body(text, jsonb) is
  'The outbox payload of an event: a Standard Webhooks body {type, timestamp (UTC, microseconds), data}.';
revoke all on function hidden.outbox_body(text, jsonb) from public;

create or replace function hidden.outbox_write(org uuid, event_type text, aggregate_type text,
                                               aggregate_id uuid, data jsonb)
returns void
-- PL/pgSQL, not SQL: a SQL function's INSERT is parsed and planned again on every call; PL/pgSQL
-- keeps the plan for the session.
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
  'Appends one event to private.outbox (payload: hidden.outbox_body). Called by the SECURITY DEFINER outbox triggers only.';
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
-- define_status_machine writes a machine's rows and attaches its trigger set: the generic
-- transition check below (static SQL, one primary-key lookup), and one AFTER trigger function that
-- define_status_machine generates from the machine's rows, so that the per-row work of a change is
-- static SQL with plans cached per session: the status-event row (its table and columns differ per
-- machine; a generic trigger had to EXECUTE it, parsed and planned on every row) and the outbox row
-- (its payload built in one jsonb_build_object instead of to_jsonb(new) and a loop). Regenerated
-- whenever the machine is redeclared; nothing in it is written by hand, so the machine stays data.
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
  fn text := pg_catalog.format('hidden.%I', 'tg_' || machine || '__machine_events');
  data_sql text;
  missing text;
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
  -- The payload, as one expression over a row named n (the inserted rows) or new (a change): a
  -- key's path is a column, or a column and a path inside it.
  select pg_catalog.string_agg(
           pg_catalog.format('%L, %s', k,
             case when pg_catalog.cardinality(pa) = 1 then pg_catalog.format('$row.%I', pa[1])
                  else pg_catalog.format('pg_catalog.to_jsonb($row.%I) #> %L', pa[1], pa[2:]) end), ', ' order by o),
         pg_catalog.string_agg(pa[1], ', ') filter (
           where not exists (select from pg_catalog.pg_attribute a
                              where a.attrelid = on_table and a.attname = pa[1] and a.attnum > 0 and not a.attisdropped))
    into data_sql, missing
    from (select u.k, pg_catalog.string_to_array(m.payload_paths[u.o], '.') as pa, u.o
            from pg_catalog.unnest(m.payload_keys) with ordinality u(k, o)) x;
  if missing is not null then
    raise exception '%: payload names columns % has not: %', machine, on_table, missing;
  end if;

  -- The machine's AFTER trigger function, generated from its rows (see the note above). The insert
  -- side is statement-level with a transition table: a bulk insert (crm import) writes its status
  -- events and created events in one statement each; a one-row insert (a booking) the same.
  execute pg_catalog.format($f$
create or replace function %1$s()
returns trigger
language plpgsql volatile security definer
set search_path = ''
as $body$
declare
  changed_by uuid := (select auth.uid());
  note text := hidden.status_note();
  event text;
begin
  if tg_level = 'STATEMENT' then  -- after insert: every inserted row (new_rows)
    %2$s
    %3$s
    return null;
  end if;
  %4$s
  select t.event_type into event
    from private.status_transitions t
   where t.machine = %5$L and t.from_status = old.status::text and t.to_status = new.status::text;
  if event is not null then
    insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)
    values (new.org_id, event, %5$L, new.id,
            hidden.outbox_body(event, pg_catalog.jsonb_build_object(%6$s)
                                      || pg_catalog.jsonb_build_object('from_status', old.status,
                                                                       'changed_by', changed_by, 'note', note)));
  end if;
  return null;
end
$body$
$f$,
    fn,
    case when m.events_table is not null then pg_catalog.format(
      'insert into %s (org_id, %I, from_status, to_status, changed_by, %I)'
      ' select n.org_id, n.id, null, n.status, changed_by, note from new_rows n;',
      m.events_table, m.subject_column, m.note_column) else '' end,
    case when created_event is not null then pg_catalog.format(
      'insert into private.outbox (org_id, event_type, aggregate_type, aggregate_id, payload)'
      ' select n.org_id, %1$L, %2$L, n.id, hidden.outbox_body(%1$L, pg_catalog.jsonb_build_object(%3$s)'
      ' || pg_catalog.jsonb_build_object(''from_status'', null, ''changed_by'', changed_by, ''note'', note))'
      ' from new_rows n;',
      created_event, machine, pg_catalog.replace(data_sql, '$row.', 'n.')) else '' end,
    case when m.events_table is not null then pg_catalog.format(
      'insert into %s (org_id, %I, from_status, to_status, changed_by, %I)'
      ' values (new.org_id, new.id, old.status, new.status, changed_by, note);',
      m.events_table, m.subject_column, m.note_column) else '' end,
    machine, pg_catalog.replace(data_sql, '$row.', 'new.'));
  execute pg_catalog.format('comment on function %s() is %L', fn, pg_catalog.format(
    'Generated by private.define_status_machine for the %s machine (do not edit): writes the status event%s'
    ' of every inserted row (statement-level, from_status null) and of every status change (row-level) (who: auth.uid(), the RPC''s note), and the'
    ' outbox event (%s on insert, the transition''s event on a change) with the payload %s plus from_status,'
    ' changed_by, note.',
    machine, case when m.events_table is not null then ' (' || m.events_table || ')' else ' (none)' end,
    coalesce(created_event, 'none'), m.payload_keys));
  execute pg_catalog.format('revoke all on function %s() from public', fn);

  -- Replaced by the generated function (databases migrated before it still have these).
  execute pg_catalog.format('drop trigger if exists _500_status_event_created on %s', on_table);
  execute pg_catalog.format('drop trigger if exists _500_status_event_changed on %s', on_table);
  execute pg_catalog.format('drop trigger if exists _900_outbox_created on %s', on_table);
  execute pg_catalog.format('drop trigger if exists _900_outbox_status_changed on %s', on_table);

  execute pg_catalog.format('drop trigger if exists _500_machine_events_created on %s', on_table);
  if m.events_table is not null or created_event is not null then
    execute pg_catalog.format('create trigger _500_machine_events_created after insert on %s'
                              ' referencing new table as new_rows for each statement'
                              ' execute function %s()', on_table, fn);
  end if;
  execute pg_catalog.format('drop trigger if exists _500_machine_events_changed on %s', on_table);
  execute pg_catalog.format('create trigger _500_machine_events_changed after update on %s for each row'
                            ' when (old.status is distinct from new.status)'
                            ' execute function %s()', on_table, fn);
end
$$;
comment on function private.define_status_machine(text, regclass, jsonb, jsonb, text[], text, text[], regclass, text, text) is
  'Declares (or redeclares) a status machine: transitions {from: [to, ...]}, changed_events {to_status or "*": event type}, payload keys ("key" or "key=dotted.path"), optional created event, initial statuses and status-event table; attaches the generic transition check and generates the machine''s AFTER trigger function (status event and outbox row, static SQL) hidden.tg_<machine>__machine_events. Run by the repeatable trigger files.';
revoke all on function private.define_status_machine(text, regclass, jsonb, jsonb, text[], text, text[], regclass, text, text)
  from public;

-- Status machines as data (issue 11, item 2): one row per machine, one row per allowed transition.
--
-- The generic triggers of db/triggers/001_crm_common.sql read these rows: the machine check
-- (PT409 naming both statuses), the status-event row and the outbox row. A machine is declared
-- with private.define_status_machine(...) in the repeatable trigger file of its table, which
-- rewrites its rows and attaches the triggers; so the machine stays the current truth of that
-- file while living in a table the triggers look up by primary key.

create table private.status_machines (
  machine text primary key,
  table_name text not null,
  created_event text,
  initial_statuses text[],
  events_table text,
  subject_column text,
  note_column text,
  payload_keys text[] not null,
  payload_paths text[] not null,
  constraint status_machines_machine_format check (machine ~ '^[a-z][a-z_]*[a-z]$'),
  constraint status_machines_events_complete check (
    (events_table is null) = (subject_column is null) and (events_table is null) = (note_column is null)),
  constraint status_machines_payload_pairs check (
    pg_catalog.cardinality(payload_keys) = pg_catalog.cardinality(payload_paths))
);
comment on table private.status_machines is
  'One row per status machine: the table it guards, its created event, optional allowed initial statuses, where status events go, and the outbox payload (keys and row paths).';
comment on column private.status_machines.initial_statuses is 'Statuses a new row may start in; null = any.';
comment on column private.status_machines.events_table is
  'Status-event table (org_id, <subject_column>, from_status, to_status, changed_by, <note_column>); null = no status events.';
comment on column private.status_machines.payload_paths is
  'For each payload key, its dotted path in the row (e.g. item_snapshot.title).';

create table private.status_transitions (
  machine text not null references private.status_machines (machine) on delete cascade,
  from_status text not null,
  to_status text not null,
  event_type text,
  constraint status_transitions_pkey primary key (machine, from_status, to_status),
  constraint status_transitions_changes check (from_status <> to_status)
);
comment on table private.status_transitions is
  'Every allowed status change of every machine; anything else is refused with PT409. event_type: the outbox event the change writes (null = none).';

revoke all on private.status_machines, private.status_transitions from anon, authenticated, service_role, public;

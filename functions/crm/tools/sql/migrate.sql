-- The migration runner (crm.tools.migrate, `crm db migrate` / `crm db status`). It needs a
-- session (the advisory lock, DDL): it refuses a transaction pooler (refuse_transaction_pooler).

-- migrate_tracking_exists --
select to_regclass('private.schema_migrations') is not null
   and to_regclass('private.schema_repeatables') is not null

-- migrate_tracking_ddl --
-- What records the applied files; created before the first migration runs.
create schema if not exists private;
revoke all on schema private from public;
create table if not exists private.schema_migrations (
  version integer primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now(),
  duration_ms integer not null
);
create table if not exists private.schema_repeatables (
  path text primary key,
  checksum text not null,
  applied_at timestamptz not null default now(),
  duration_ms integer not null
);

-- migrate_applied_migrations --
select version, name, checksum from private.schema_migrations order by version

-- migrate_applied_repeatables --
select path, checksum from private.schema_repeatables

-- migrate_lock --
-- Session-level on purpose: held across the per-file transactions, so migrators never interleave.
select pg_advisory_lock(%(key)s::bigint)

-- migrate_unlock --
select pg_advisory_unlock(%(key)s::bigint)

-- migrate_clock --
select clock_timestamp()

-- migrate_elapsed_ms --
select (extract(epoch from clock_timestamp() - %(started)s::timestamptz) * 1000)::int

-- migrate_record_migration --
insert into private.schema_migrations (version, name, checksum, duration_ms)
values (%(version)s, %(name)s, %(checksum)s, %(duration_ms)s)

-- migrate_record_repeatable --
insert into private.schema_repeatables (path, checksum, duration_ms)
values (%(path)s, %(checksum)s, %(duration_ms)s)
on conflict (path) do update
   set checksum = excluded.checksum, applied_at = now(), duration_ms = excluded.duration_ms

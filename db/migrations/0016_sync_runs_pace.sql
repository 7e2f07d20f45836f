-- Reconciliation at the warehouse's pace (issue 14), and a bounded history of runs.
--
-- A page's discrepancy items now wait beside its seen keys (one private.sync_run_seen row per page)
-- until the run ends, when the run's row is written once with them: rewriting a growing
-- `discrepancies` document on every page cost more than a quarter of the page. The run's row keeps
-- the counts and field tallies as it goes (small), so a running run shows its counts, and its items
-- once it has ended. Unlogged like the keys: a crash loses a running run's items with its keys, and
-- the next start fails it as abandoned (counts kept).
--
-- Finished runs are purged by the reconcilers (private.sync_runs_purge): the index serves "the
-- newest runs of this integration and kind".

alter table private.sync_run_seen
  add column page integer not null default 0,
  add column found jsonb not null default '[]';
-- Kept a few minutes, read once: not worth compressing on every page (out of line, as they are).
alter table private.sync_run_seen alter column keys set storage external;
comment on table private.sync_run_seen is
  'A running reconciliation, one row per page: the keys (sku, wms_order_id) it listed and the discrepancy items it found (within the report''s first 500); emptied when the run ends, which moves the items to sync_runs.discrepancies.';
comment on column private.sync_run_seen.page is 'The page number in the run (the order of the report''s items).';
comment on column private.sync_run_seen.found is 'That page''s discrepancy items ([{key, kind, fields}]), moved to the run at its end.';

create index sync_runs_integration_started_idx on private.sync_runs (integration_id, sync_type, started_at desc);

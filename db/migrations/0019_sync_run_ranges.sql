-- Reconciliation by key range (issue 14): a page whose keys come in order is compared with the
-- cache rows of its key range (one index range scan instead of a probe per item), and keeps that
-- range and the range's cache rows it did not list, instead of every key it listed. The run's end
-- then finds the extra rows from the ranges (the gaps between them and what every range holding a
-- row gave as gone), with no anti-join of the whole cache against every key of the pass. Pages
-- compared key by key (a source not in key order, malformed items) keep their keys as before.

alter table private.sync_run_seen
  add column lo text,
  add column hi text,
  add column gone text[] not null default '{}';
alter table private.sync_run_seen alter column gone set storage external;
comment on column private.sync_run_seen.keys is
  'The keys that page listed, when it was compared key by key (empty when compared by key range).';
comment on column private.sync_run_seen.lo is
  'A page compared by key range: its least key (null: compared key by key, see keys).';
comment on column private.sync_run_seen.hi is 'A page compared by key range: its greatest key.';
comment on column private.sync_run_seen.gone is
  'A page compared by key range: the cache rows of [lo, hi] it did not list (cached before the run started).';

-- Imports and backup pulls (SPEC 13).
--
-- orders.legacy_id: the old system's id of an imported order, unique per organization, so a second
-- `crm import orders --apply` finds every row again and changes nothing (leads already have
-- legacy_id). private.pull_cursors: how far pull-leads has read each provider stream (the Twilio
-- call log of an integration, each Meta form of one); the next pull starts a look-back window
-- before it, and the inbox's unique (integration, event id) makes the overlap change nothing.
-- Functions in db/functions/imports.sql.

alter table public.orders add column legacy_id bigint;
comment on column public.orders.legacy_id is
  'Id of the order in an older system (crm import orders); unique per organization when present.';
create unique index orders_org_legacy_id_key on public.orders (org_id, legacy_id) where legacy_id is not null;

create table private.pull_cursors (
  integration_id uuid not null references public.integrations (id) on delete cascade,
  stream text not null,
  cursor_at timestamptz not null,
  updated_at timestamptz not null default now(),
  constraint pull_cursors_pkey primary key (integration_id, stream),
  constraint pull_cursors_stream_length check (char_length(stream) between 1 and 200)
);
comment on table private.pull_cursors is
  'pull-leads: per integration and stream (twilio: calls; meta: form:<form id>), the newest provider time read completely. The next pull reads from cursor_at minus the look-back window.';
alter table private.pull_cursors enable row level security;
revoke all on private.pull_cursors from anon, authenticated, service_role, public;

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
  values (org, event_type, aggregate_type, aggregate_id,
          pg_catalog.jsonb_build_object(
            'type', event_type,
            'timestamp', pg_catalog.to_char(pg_catalog.now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'data', data));
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

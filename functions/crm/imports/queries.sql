-- Imports and backup pulls (SPEC 13): the queries of crm.imports. SQL functions in db/functions/imports.sql.

-- import_org --
-- The organization an import writes to, by slug.
select o.id, o.slug, o.default_country from public.organizations o where o.slug = %(slug)s

-- import_rows --
select * from private.import_rows(%(org_id)s::uuid, %(kind)s, %(rows)s::jsonb)

-- pull_integrations --
-- Enabled integrations pull-leads reads (twilio, meta), oldest first.
select i.id, i.org_id, i.kind from public.integrations i
 where i.enabled and i.kind in ('twilio', 'meta')
 order by i.created_at, i.id

-- pull_receive --
select private.pull_receive(%(integration_id)s::uuid, %(events)s::jsonb) as result

-- pull_cursor_get --
select private.pull_cursor_get(%(integration_id)s::uuid, %(stream)s) as cursor_at

-- pull_cursor_set --
select private.pull_cursor_set(%(integration_id)s::uuid, %(stream)s, %(cursor_at)s::timestamptz)

-- import_begin --
-- Each import transaction runs as the jobs do: service_role, without the request timeout.
select set_config('role', 'service_role', true), set_config('statement_timeout', '0', true),
       set_config('request.jwt.claims', '{"role":"service_role"}', true)

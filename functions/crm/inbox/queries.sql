-- Webhooks in (SPEC 10): the queries of crm.inbox. SQL functions in db/functions/inbox.sql.

-- inbox_integration --
-- The integration behind POST /webhooks/{source}/{org}, with its live secrets (sealed or parked).
select i.id, i.org_id, i.kind, i.enabled, i.settings, o.default_country,
       coalesce((select jsonb_agg(jsonb_build_object('id', s.id, 'name', s.name, 'pending', s.pending,
                                                     'sealed', encode(s.sealed, 'base64'))
                                  order by s.created_at desc)
                   from private.integration_secrets s
                  where s.integration_id = i.id and (s.expires_at is null or s.expires_at > now())),
                '[]'::jsonb) as secrets
  from public.organizations o
  join public.integrations i on i.org_id = o.id and i.kind = %(source)s
 where (o.id = %(org_id)s::uuid or o.slug = %(slug)s::text)

-- inbox_receive --
select private.inbox_receive(%(integration_id)s::uuid, %(events)s::jsonb) as result

-- inbox_pending_secrets --
-- Secrets an RPC just parked, to be sealed under CRM_SECRETS_KEY (the database never has it).
select s.id, s.integration_id, s.pending
  from private.integration_secrets s
 where s.pending is not null
 order by s.created_at
 limit 100
   for update skip locked

-- inbox_seal_secret --
update private.integration_secrets set sealed = %(sealed)s, pending = null where id = %(id)s

-- inbox_claim --
select * from private.inbox_claim(%(limit)s, %(lease_seconds)s, %(token)s)

-- inbox_finish --
select private.inbox_finish(%(id)s, %(extra)s::jsonb, %(error)s::text, %(token)s) as outcome

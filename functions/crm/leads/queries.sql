-- Lead queries of `PATCH /leads/{id}`. They run as `authenticated` with the caller's claims, so
-- RLS decides which leads exist for the caller and `update_lead` decides what they may change.

-- lead_id_by_legacy_id --
-- A lead RLS hides from the caller yields no row, answered as not found like an absent one.
select id from public.leads where legacy_id = %(legacy_id)s

-- update_lead --
select l.*
  from public.update_lead(
         lead_id => %(lead_id)s::uuid,
         status => %(status)s::public.lead_status,
         note => %(note)s::text,
         assigned_to => %(assigned_to)s::uuid
       ) as l

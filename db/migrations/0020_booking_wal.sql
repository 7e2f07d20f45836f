-- Booking write amplification (issue 17, part 2): index entries a booking writes that no query,
-- constraint or foreign-key path reads. Every booking inserts a lead and three outbox rows; each
-- index is one more WAL record (and page) per row, and at 8 clients the commits wait on the WAL.
--
-- leads_assigned_to_idx (assigned_to) held an entry for every lead, unassigned ones included (all
-- bookings). Its foreign key is composite, (org_id, assigned_to) -> staff (org_id, user_id): the
-- partial leads_org_assigned_to_idx (org_id, assigned_to) where assigned_to is not null serves its
-- ON DELETE SET NULL lookup (assigned_to = $2 implies the predicate), and the policies that name
-- assigned_to all pin org_id or the lead's id as well.
drop index public.leads_assigned_to_idx;

-- private.outbox: (org_id, id) served the foreign key to organizations (an org's deletion) and
-- nothing else; (aggregate_type, aggregate_id) the erasure of a customer's events, which always
-- pins org_id too. One index (org_id, aggregate_id) serves both; replay and purge keep
-- outbox_created_idx, the fan-out and delivery joins the primary key and outbox_event_id_key.
create index outbox_org_aggregate_idx on private.outbox (org_id, aggregate_id);
drop index private.outbox_org_idx;
drop index private.outbox_aggregate_idx;

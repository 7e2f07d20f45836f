-- Apply the whole schema with psql alone, in the order `crm db migrate` uses:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction -f db/load.sql
-- Versioned migrations first (in number order), then the repeatable files: db/functions/,
-- db/policies/, then db/triggers/, each in name order. Regenerate with `python -m crm.tools.migrate`;
-- tests/migration/test_load_sql.py keeps it in step.
\set ON_ERROR_STOP on
\ir migrations/0001_supabase_bootstrap.sql
\ir migrations/0002_organizations_staff.sql
\ir migrations/0003_crm_core.sql
\ir migrations/0004_crm_rpcs.sql
\ir migrations/0005_booking.sql
\ir migrations/0006_image_cache.sql
\ir migrations/0007_payments.sql
\ir migrations/0008_database_rules.sql
\ir migrations/0009_webhooks_out.sql
\ir migrations/0010_webhooks_in.sql
\ir migrations/0011_status_machines.sql
\ir migrations/0012_class_sessions.sql
\ir migrations/0013_imports.sql
\ir migrations/0014_warehouse.sql
\ir migrations/0015_inline_sql_helpers.sql
\ir migrations/0016_sync_runs_pace.sql
\ir migrations/0017_work_queues.sql
\ir migrations/0018_sync_run_ranges.sql
\ir functions/000_work_queue.sql
\ir functions/booking.sql
\ir functions/class_sessions.sql
\ir functions/customers.sql
\ir functions/imports.sql
\ir functions/inbox.sql
\ir functions/warehouse.sql
\ir functions/webhooks.sql
\ir policies/000_access_helpers.sql
\ir policies/activities.sql
\ir policies/api_keys.sql
\ir policies/class_sessions.sql
\ir policies/customers.sql
\ir policies/inspections.sql
\ir policies/integrations.sql
\ir policies/inventory_items.sql
\ir policies/lead_status_events.sql
\ir policies/leads.sql
\ir policies/order_status_events.sql
\ir policies/orders.sql
\ir policies/organizations.sql
\ir policies/payments.sql
\ir policies/shipments.sql
\ir policies/staff.sql
\ir policies/tasks.sql
\ir policies/webhooks.sql
\ir policies/wms_orders.sql
\ir triggers/000_timestamps.sql
\ir triggers/001_crm_common.sql
\ir triggers/class_sessions.sql
\ir triggers/customers.sql
\ir triggers/erasure.sql
\ir triggers/integrations.sql
\ir triggers/leads.sql
\ir triggers/orders.sql
\ir triggers/orders_money.sql
\ir triggers/outbox.sql
\ir triggers/payments.sql
\ir triggers/session_bookings.sql
\ir triggers/shipments.sql
\ir triggers/staff.sql
\ir triggers/tasks.sql
\ir triggers/text_rules.sql
\ir triggers/webhook_endpoints.sql

"""Webhooks out (SPEC 8, 9): the outbox delivered to webhook endpoints (`dispatch-outbox`,
`purge-outbox`); `manage`: what operators do (`crm webhooks add | retry | replay`).
SQL: db/migrations (tables), db/functions/webhooks.sql (rules, RPCs), db/triggers/outbox.sql and
webhook_endpoints.sql; named queries in crm/outbox/queries.sql."""

"""Organizations, users and staff: what `crm org create`, `crm staff add`, `crm token` and the demo
organization of `crm dev` do (`accounts`, named queries in `queries.sql`). Who may change staff
afterwards is RLS (db/policies/) and the last-admin rule (db/triggers/)."""

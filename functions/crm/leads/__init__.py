"""Staff lead updates (`PATCH /leads/{id}`): `patch` parses the request and calls `update_lead`
(db/functions/, under RLS) through `queries.sql`."""

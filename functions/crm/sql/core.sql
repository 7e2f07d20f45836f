-- The platform's queries (crm.db), by name. Parameters are %(name)s.

-- health --
select 1 as ok

-- begin_request --
-- Exactly what PostgREST does at the start of every request: the role and the JWT claims are
-- transaction-local, so one set of RLS policies governs PostgREST and the functions alike.
-- Sent with BEGIN in one round trip (client-side binding, simple query protocol).
begin;
select set_config('role', %(role)s, true),
       set_config('request.jwt.claims', %(claims)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true)

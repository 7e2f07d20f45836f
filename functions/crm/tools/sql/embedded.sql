-- The embedded PostgreSQL of `crm dev` (crm.tools.embedded), on its admin database.

-- embedded_database_exists --
select exists (select from pg_catalog.pg_database where datname = %(name)s) as found

-- embedded_create_database --
-- The database `crm dev` uses (embedded.DATABASE).
create database crm

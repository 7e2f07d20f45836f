-- The security lint behind `crm db lint` (crm.tools.lint): one catalog query per check, each
-- returning finding objects. Parameters: %(platform)s (schemas not ours), %(history)s,
-- %(api_roles)s, %(personal_name)s, %(erased)s; see lint.py. "Ours" is any schema outside
-- %(platform)s and pg_*; objects that belong to an extension are skipped.

-- lint_rls_disabled_in_public --
-- A table in public without RLS is readable and writable by anyone holding a grant.
select format('%%I.%%I', n.nspname, c.relname)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')

-- lint_function_search_path_mutable --
-- A SECURITY DEFINER function resolving names through the caller's search_path can be hijacked.
select format('%%I.%%I(%%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes))
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
 where p.prosecdef
   and n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and not exists (select from pg_catalog.unnest(p.proconfig) cfg where cfg like 'search\_path=%%')
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')

-- lint_security_definer_view --
-- A view runs with its owner's rights (bypassing the caller's RLS) unless security_invoker.
select format('%%I.%%I', n.nspname, c.relname)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('v', 'm')
   and not exists (
     select from pg_catalog.unnest(c.reloptions) opt
      where lower(opt) in ('security_invoker=true', 'security_invoker=on', 'security_invoker=1',
                           'security_invoker=yes'))
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')

-- lint_anon_privilege --
-- Anything anon can reach beyond the allowlist: relations, columns, sequences, functions
-- (including through PUBLIC), and CREATE on our schemas.
select format('%%s %%I.%%I', case c.relkind when 'S' then 'sequence' when 'v' then 'view'
                              when 'm' then 'view' else 'table' end, n.nspname, c.relname)
  from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
   and case when c.relkind = 'S'
            then pg_catalog.has_sequence_privilege('anon', c.oid, 'USAGE, SELECT, UPDATE')
            else pg_catalog.has_table_privilege('anon', c.oid,
                   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
              or pg_catalog.has_any_column_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')
       end
union all
select format('function %%I.%%I(%%s)', n.nspname, p.proname,
              pg_catalog.oidvectortypes(p.proargtypes))
  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
 where n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and pg_catalog.has_function_privilege('anon', p.oid, 'EXECUTE')
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
union all
select format('schema %%I (create)', n.nspname)
  from pg_catalog.pg_namespace n
 where n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and pg_catalog.has_schema_privilege('anon', n.oid, 'CREATE')

-- lint_private_schema_privilege --
-- Nothing in private is reachable by the PostgREST roles.
select format('%%s on schema private', r.rolname)
  from pg_catalog.pg_roles r
 where r.rolname in ('anon', 'authenticated')
   and pg_catalog.has_schema_privilege(r.oid, 'private', 'USAGE, CREATE')
union all
select format('%%s on %%s private.%%I', r.rolname,
              case c.relkind when 'S' then 'sequence' else 'table' end, c.relname)
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace and n.nspname = 'private'
  cross join pg_catalog.pg_roles r
 where r.rolname in ('anon', 'authenticated')
   and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
   and case when c.relkind = 'S'
            then pg_catalog.has_sequence_privilege(r.oid, c.oid, 'USAGE, SELECT, UPDATE')
            else pg_catalog.has_table_privilege(r.oid, c.oid,
                   'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
              or pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')
       end
union all
select format('%%s on function private.%%I(%%s)', r.rolname, p.proname,
              pg_catalog.oidvectortypes(p.proargtypes))
  from pg_catalog.pg_proc p
  join pg_catalog.pg_namespace n on n.oid = p.pronamespace and n.nspname = 'private'
  cross join pg_catalog.pg_roles r
 where r.rolname in ('anon', 'authenticated')
   and pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE')

-- lint_anon_policy_on_contact_data --
-- Contact data (customers, or any table with phone/email columns) must have no anon policy.
select format('%%I.%%I policy "%%s"', pol.schemaname, pol.tablename, pol.policyname)
  from pg_catalog.pg_policies pol
 where (pol.roles && array['anon', 'public']::name[])
   and (pol.tablename = 'customers' or exists (
         select from pg_catalog.pg_attribute a
          where a.attrelid = format('%%I.%%I', pol.schemaname, pol.tablename)::regclass
            and a.attnum > 0 and not a.attisdropped
            and (a.attname ~* 'phone|email|e_mail|address|contact')))

-- lint_multiple_permissive_policies --
-- Multiple permissive policies for one role and action are all evaluated for every row.
with expanded as (
  select pol.schemaname, pol.tablename, pol.policyname, role_name, action
    from pg_catalog.pg_policies pol
    cross join lateral pg_catalog.unnest(
      case when 'public' = any (pol.roles) then array['anon', 'authenticated']::name[]
           else pol.roles end) role_name
    cross join lateral pg_catalog.unnest(
      case pol.cmd when 'ALL' then array['SELECT', 'INSERT', 'UPDATE', 'DELETE']
                   else array[pol.cmd] end) action
   where pol.permissive = 'PERMISSIVE'
)
select format('%%I.%%I (%%s, %%s): %%s', schemaname, tablename, role_name, lower(action),
              string_agg(format('"%%s"', policyname), ', ' order by policyname))
  from expanded
 group by schemaname, tablename, role_name, action
having count(*) > 1

-- lint_unindexed_foreign_keys --
-- A foreign key without an index on its columns makes deletes of the parent scan the child.
select format('%%I.%%I (%%s) %%s', n.nspname, c.relname,
              (select string_agg(a.attname, ', ' order by k.ord)
                 from pg_catalog.unnest(con.conkey) with ordinality k(attnum, ord)
                 join pg_catalog.pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum),
              con.conname)
  from pg_catalog.pg_constraint con
  join pg_catalog.pg_class c on c.oid = con.conrelid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where con.contype = 'f'
   and n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and not exists (
     select from pg_catalog.pg_index i
      where i.indrelid = con.conrelid
        and pg_catalog.cardinality(con.conkey) <= i.indnkeyatts
        and (select array_agg(x order by x)
               from pg_catalog.unnest((pg_catalog.string_to_array(i.indkey::text, ' ')::int2[])
                                      [1:pg_catalog.cardinality(con.conkey)]) x)
            = (select array_agg(x order by x) from pg_catalog.unnest(con.conkey) x))

-- lint_history_delete_privilege --
-- A DELETE privilege of an API role on a history table (service_role bypasses RLS, so only the
-- missing privilege stops it).
select format('%%s may delete from %%I.%%I', r.rolname, n.nspname, c.relname)
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  cross join pg_catalog.pg_roles r
 where format('%%s.%%s', n.nspname, c.relname) = any (%(history)s::text[])
   and r.rolname = any (%(api_roles)s::text[])
   and pg_catalog.has_table_privilege(r.oid, c.oid, 'DELETE, TRUNCATE')

-- lint_history_delete_policy --
-- A delete policy on a history table: a grant added later would make it live.
select format('%%I.%%I policy "%%s" (%%s)', pol.schemaname, pol.tablename, pol.policyname,
              lower(pol.cmd))
  from pg_catalog.pg_policies pol
 where pol.cmd in ('DELETE', 'ALL')
   and format('%%s.%%s', pol.schemaname, pol.tablename) = any (%(history)s::text[])

-- lint_personal_data_not_erased --
-- Personal data that erase_customer leaves behind.
select format('%%s.%%s.%%s', n.nspname, c.relname, a.attname)
  from pg_catalog.pg_attribute a
  join pg_catalog.pg_class c on c.oid = a.attrelid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
 where n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\_%%'
   and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
   and not exists (select from pg_catalog.pg_depend d
                where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
   and (coalesce(pg_catalog.col_description(c.oid, a.attnum), '') ~* '^personal\M'
        or (a.attname ~* %(personal_name)s
            and coalesce(pg_catalog.col_description(c.oid, a.attnum), '') !~* '^not personal\M'))
   and format('%%s.%%s.%%s', n.nspname, c.relname, a.attname) <> all (%(erased)s::text[])

-- lint_rls_policy_always_true --
-- A write policy that is literally `true` lets any holder of the grant write any row.
select format('%%I.%%I policy "%%s" (%%s)', pol.schemaname, pol.tablename, pol.policyname,
              lower(pol.cmd))
  from pg_catalog.pg_policies pol
 where pol.cmd in ('INSERT', 'UPDATE', 'DELETE', 'ALL')
   and (lower(btrim(coalesce(pol.qual, ''), ' ()')) = 'true'
        or lower(btrim(coalesce(pol.with_check, ''), ' ()')) = 'true')

-- lint_policy_expressions --
-- Every policy's expressions, for the auth_rls_initplan check (in Python: it reads the parentheses).
select pol.schemaname, pol.tablename, pol.policyname, coalesce(pol.qual, ''), coalesce(pol.with_check, '')
  from pg_catalog.pg_policies pol

-- lint_erased_columns_exists --
select pg_catalog.to_regprocedure('hidden.erased_columns()') is not null as found

-- lint_erased_columns --
-- What erase_customer scrubs (db/triggers/erasure.sql).
select hidden.erased_columns() as columns

"""The security lint behind `crm db lint` (SPEC 6.7), modelled on Supabase's splinter lints.

Each check is one catalog query returning finding lines `<lint_name>: <object>`; `run_lint` runs
them all and returns every finding, sorted. An empty list means the schema passes. The queries read
the catalogs only, so the lint is safe on a production database.

Schemas checked for exposure are ours (`public`, `hidden`, `private` and any other non-platform
schema); objects that belong to an extension are the extension's business and are skipped.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.rows import tuple_row

# The only thing anon may touch at all.
ANON_ALLOWLIST = frozenset({"function public.track_order(text)"})

# Schemas managed by the platform (Supabase or our bootstrap), not by our migrations.
PLATFORM_SCHEMAS = (
    "pg_catalog", "information_schema", "pg_toast", "auth", "extensions", "storage", "graphql",
    "graphql_public", "realtime", "supabase_functions", "supabase_migrations", "vault", "pgsodium",
    "pgsodium_masks", "net", "cron", "pgbouncer", "_realtime", "_analytics", "pgtle", "topology",
)

# History is never deleted through the API (SPEC 6.6): tables of this list (where they exist) must
# give no API role DELETE or TRUNCATE and have no delete policy.
HISTORY_TABLES = (
    "public.customers", "public.leads", "public.orders", "public.lead_status_events",
    "public.order_status_events", "public.activities", "public.payments", "public.webhook_deliveries",
    "private.webhook_deliveries", "private.inbound_events",
)
API_ROLES = ("anon", "authenticated", "service_role")

# Columns that hold personal data: commented 'personal: …', or named like contact data (unless
# commented 'not personal: …'). Each must be scrubbed by erase_customer, i.e. listed by
# hidden.erased_columns() (kept next to it, db/triggers/erasure.sql). Generated columns follow
# their sources.
PERSONAL_NAME = r"(^|_)(phone|email|e_mail|full_name|first_name|last_name|address|city)(_|$)"

# Calls that must be wrapped in `(select …)` inside a policy, so they run once per statement.
_INITPLAN_CALL = re.compile(r"\b(auth\.(?:uid|jwt|role)|hidden\.[a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)

_SUBSELECT = re.compile(r"\s*select\b", re.IGNORECASE)

_OWN_SCHEMAS_SQL = """
  select n.oid from pg_catalog.pg_namespace n
   where n.nspname <> all (%(platform)s::text[]) and n.nspname not like 'pg\\_%%'
"""

_NOT_EXTENSION_MEMBER = """
  not exists (select from pg_catalog.pg_depend d
               where d.classid = {catalog}::regclass and d.objid = {oid} and d.deptype = 'e')
"""

_CHECKS: dict[str, str] = {
    # A table in public without RLS is readable and writable by anyone holding a grant.
    "rls_disabled_in_public": """
        select format('%%I.%%I', n.nspname, c.relname)
          from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relrowsecurity
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid"),
    # A SECURITY DEFINER function resolving names through the caller's search_path can be hijacked.
    "function_search_path_mutable": """
        select format('%%I.%%I(%%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes))
          from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where p.prosecdef
           and n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and not exists (select from pg_catalog.unnest(p.proconfig) cfg where cfg like 'search\\_path=%%')
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_proc'", oid="p.oid"),
    # A view runs with its owner's rights (bypassing the caller's RLS) unless security_invoker.
    "security_definer_view": """
        select format('%%I.%%I', n.nspname, c.relname)
          from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('v', 'm')
           and not exists (
             select from pg_catalog.unnest(c.reloptions) opt
              where lower(opt) in ('security_invoker=true', 'security_invoker=on', 'security_invoker=1',
                                   'security_invoker=yes'))
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid"),
    # Anything anon can reach beyond the allowlist: relations, columns, sequences, functions
    # (including through PUBLIC), and CREATE on our schemas.
    "anon_privilege": """
        select format('%%s %%I.%%I', case c.relkind when 'S' then 'sequence' when 'v' then 'view'
                                      when 'm' then 'view' else 'table' end, n.nspname, c.relname)
          from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid") + """
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
         where n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and pg_catalog.has_function_privilege('anon', p.oid, 'EXECUTE')
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_proc'", oid="p.oid") + """
        union all
        select format('schema %%I (create)', n.nspname)
          from pg_catalog.pg_namespace n
         where n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and pg_catalog.has_schema_privilege('anon', n.oid, 'CREATE')
    """,
    # Nothing in private is reachable by the PostgREST roles.
    "private_schema_privilege": """
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
    """,
    # Contact data (customers, or any table with phone/email columns) must have no anon policy.
    "anon_policy_on_contact_data": """
        select format('%%I.%%I policy "%%s"', pol.schemaname, pol.tablename, pol.policyname)
          from pg_catalog.pg_policies pol
         where (pol.roles && array['anon', 'public']::name[])
           and (pol.tablename = 'customers' or exists (
                 select from pg_catalog.pg_attribute a
                  where a.attrelid = format('%%I.%%I', pol.schemaname, pol.tablename)::regclass
                    and a.attnum > 0 and not a.attisdropped
                    and (a.attname ~* 'phone|email|e_mail|address|contact')))
    """,
    # Multiple permissive policies for one role and action are all evaluated for every row.
    "multiple_permissive_policies": """
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
    """,
    # A foreign key without an index on its columns makes deletes of the parent scan the child.
    "unindexed_foreign_keys": """
        select format('%%I.%%I (%%s) %%s', n.nspname, c.relname,
                      (select string_agg(a.attname, ', ' order by k.ord)
                         from pg_catalog.unnest(con.conkey) with ordinality k(attnum, ord)
                         join pg_catalog.pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum),
                      con.conname)
          from pg_catalog.pg_constraint con
          join pg_catalog.pg_class c on c.oid = con.conrelid
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where con.contype = 'f'
           and n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and not exists (
             select from pg_catalog.pg_index i
              where i.indrelid = con.conrelid
                and pg_catalog.cardinality(con.conkey) <= i.indnkeyatts
                and (select array_agg(x order by x)
                       from pg_catalog.unnest((pg_catalog.string_to_array(i.indkey::text, ' ')::int2[])
                                              [1:pg_catalog.cardinality(con.conkey)]) x)
                    = (select array_agg(x order by x) from pg_catalog.unnest(con.conkey) x))
    """,
    # A DELETE privilege of an API role on a history table (service_role bypasses RLS, so only the
    # missing privilege stops it).
    "history_delete_privilege": """
        select format('%%s may delete from %%I.%%I', r.rolname, n.nspname, c.relname)
          from pg_catalog.pg_class c
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
          cross join pg_catalog.pg_roles r
         where format('%%s.%%s', n.nspname, c.relname) = any (%(history)s::text[])
           and r.rolname = any (%(api_roles)s::text[])
           and pg_catalog.has_table_privilege(r.oid, c.oid, 'DELETE, TRUNCATE')
    """,
    # A delete policy on a history table: a grant added later would make it live.
    "history_delete_policy": """
        select format('%%I.%%I policy "%%s" (%%s)', pol.schemaname, pol.tablename, pol.policyname,
                      lower(pol.cmd))
          from pg_catalog.pg_policies pol
         where pol.cmd in ('DELETE', 'ALL')
           and format('%%s.%%s', pol.schemaname, pol.tablename) = any (%(history)s::text[])
    """,
    # Personal data that erase_customer leaves behind.
    "personal_data_not_erased": """
        select format('%%s.%%s.%%s', n.nspname, c.relname, a.attname)
          from pg_catalog.pg_attribute a
          join pg_catalog.pg_class c on c.oid = a.attrelid
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.oid in (""" + _OWN_SCHEMAS_SQL + """)
           and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
           and """ + _NOT_EXTENSION_MEMBER.format(catalog="'pg_class'", oid="c.oid") + """
           and (coalesce(pg_catalog.col_description(c.oid, a.attnum), '') ~* '^personal\\M'
                or (a.attname ~* %(personal_name)s
                    and coalesce(pg_catalog.col_description(c.oid, a.attnum), '') !~* '^not personal\\M'))
           and format('%%s.%%s.%%s', n.nspname, c.relname, a.attname) <> all (%(erased)s::text[])
    """,
    # A write policy that is literally `true` lets any holder of the grant write any row.
    "rls_policy_always_true": """
        select format('%%I.%%I policy "%%s" (%%s)', pol.schemaname, pol.tablename, pol.policyname,
                      lower(pol.cmd))
          from pg_catalog.pg_policies pol
         where pol.cmd in ('INSERT', 'UPDATE', 'DELETE', 'ALL')
           and (lower(btrim(coalesce(pol.qual, ''), ' ()')) = 'true'
                or lower(btrim(coalesce(pol.with_check, ''), ' ()')) = 'true')
    """,
}

_POLICY_EXPRESSIONS = """
    select pol.schemaname, pol.tablename, pol.policyname, coalesce(pol.qual, ''), coalesce(pol.with_check, '')
      from pg_catalog.pg_policies pol
"""


def _initplan_findings(conn: psycopg.Connection) -> list[str]:
    """Policies calling auth.* / hidden.* per row instead of once per statement via `(select …)`."""
    findings = []
    with conn.cursor(row_factory=tuple_row) as cur:
        for schema, table, policy, qual, check in cur.execute(_POLICY_EXPRESSIONS):
            for expression in (qual, check):
                if any(not _wrapped_in_select(expression, m.start()) for m in _INITPLAN_CALL.finditer(expression)):
                    findings.append(f'auth_rls_initplan: {schema}.{table} policy "{policy}"')
                    break
    return findings


def _wrapped_in_select(expression: str, call_start: int) -> bool:
    """True when some parenthesis enclosing the call opens a sub-select.

    pg_get_expr deparses `(select auth.uid())` as `( SELECT auth.uid() AS uid)`; string literals in
    policies do not hold parentheses in practice, so plain counting is enough here.
    """
    depth = 0
    for i in range(call_start - 1, -1, -1):
        char = expression[i]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth:
                depth -= 1
            elif _SUBSELECT.match(expression, i + 1):
                return True
    return False


def _erased_columns(cur: psycopg.Cursor) -> list[str]:
    """What erase_customer scrubs (hidden.erased_columns()), or nothing when it does not exist."""
    (exists,) = cur.execute("select pg_catalog.to_regprocedure('hidden.erased_columns()') is not null").fetchone()
    if not exists:
        return []
    (columns,) = cur.execute("select hidden.erased_columns()").fetchone()
    return list(columns or [])


def run_lint(conn: psycopg.Connection) -> list[str]:
    """Every finding as `<lint_name>: <object>`; empty when the schema passes."""
    findings: list[str] = []
    with conn.cursor(row_factory=tuple_row) as cur:
        params = {"platform": list(PLATFORM_SCHEMAS), "history": list(HISTORY_TABLES),
                  "api_roles": list(API_ROLES), "personal_name": PERSONAL_NAME,
                  "erased": _erased_columns(cur)}
        for name, query in _CHECKS.items():
            for (obj,) in cur.execute(query, params):
                if name == "anon_privilege" and obj in ANON_ALLOWLIST:
                    continue
                findings.append(f"{name}: {obj}")
    findings.extend(_initplan_findings(conn))
    return sorted(findings)

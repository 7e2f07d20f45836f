"""`db/load.sql` (the DBA's psql path) lists the runner's files in the runner's order, and applying
it with plain psql gives the same schema as `crm db migrate`."""

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from crm.tools.migrate import DB_DIR, load_sql_lines

SCHEMA_FINGERPRINT = """
select 'column', format('%s.%s.%s %s %s %s', table_schema, table_name, column_name, data_type,
       is_nullable, coalesce(column_default, ''))
  from information_schema.columns where table_schema in ('public', 'private', 'hidden', 'auth')
   and table_name not in ('schema_migrations', 'schema_repeatables')
union all
select 'constraint', format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
  from pg_constraint where connamespace::regnamespace::text in ('public', 'private', 'hidden', 'auth')
   and conrelid::regclass::text not like 'private.schema_%'
union all
select 'index', indexdef from pg_indexes where schemaname in ('public', 'private', 'hidden', 'auth')
   and tablename not like 'schema_%'
union all
select 'function', format('%s %s', p.oid::regprocedure, md5(pg_get_functiondef(p.oid)))
  from pg_proc p where pronamespace::regnamespace::text in ('public', 'private', 'hidden', 'auth')
   and prokind in ('f', 'p')
union all
select 'policy', format('%s.%s %s %s %s %s %s', schemaname, tablename, policyname, cmd, roles,
       coalesce(qual, ''), coalesce(with_check, '')) from pg_policies
union all
select 'trigger', format('%s %s', tgrelid::regclass, pg_get_triggerdef(oid))
  from pg_trigger where not tgisinternal
union all
select 'grant', format('%s %s %s %s', table_schema, table_name, grantee, privilege_type)
  from information_schema.role_table_grants
 where grantee in ('anon', 'authenticated', 'service_role') and table_name not like 'schema_%'
union all
select 'rls', format('%s %s %s', relnamespace::regnamespace, relname, relrowsecurity)
  from pg_class where relkind = 'r' and relnamespace::regnamespace::text in ('public', 'private')
   and relname not like 'schema_%'
order by 1, 2
"""


def fingerprint(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(SCHEMA_FINGERPRINT).fetchall()


def test_load_sql_lists_every_file_in_runner_order():
    text = (DB_DIR / "load.sql").read_text()
    lines = [line.strip() for line in text.splitlines() if line.startswith("\\ir")]
    assert lines == load_sql_lines(), "db/load.sql is out of step with db/: run `python -m crm.tools.migrate`"
    assert "\\set ON_ERROR_STOP on" in text


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from crm.tools.embedded import _server_module

    return str(Path(_server_module().POSTGRES_BIN_PATH) / "psql")


def test_psql_load_gives_the_same_schema(fresh_database, db_url):
    target = fresh_database("psql")
    result = subprocess.run(
        [_psql(), target, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
         "-f", str(DB_DIR / "load.sql")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PGCONNECT_TIMEOUT": "5"})
    assert result.returncode == 0, result.stderr
    expected, actual = fingerprint(db_url), fingerprint(target)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing and not extra, f"missing={missing[:10]} extra={extra[:10]}"
    if not expected:
        pytest.fail("empty fingerprint")

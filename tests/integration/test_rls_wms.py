"""The role matrix of SPEC 6.6/11 for API keys and reconciliation reports, as PostgREST would run it
(role + JWT claims, rolled back):
  1 = the row is seen / written (update touches the row)
  0 = silently nothing (select sees no row, update touches zero rows)
  E = refused with an error (permission denied or an RLS `with check` violation)

Admins manage API keys (create_api_key / revoke_api_key; rename directly), managers read them,
agents and viewers see none; nobody inserts or deletes one directly. Reconciliation runs are read by
admins only, through the sync_run_reports view; the private tables behind them are out of reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg import errors as pg

from tests import rls_world as rls
from tests.helpers import acting_as, matrix_cases

ACTORS = ("anon", "outsider", "viewer", "agent", "manager", "admin", "service_role")

#                                             anon outsider viewer agent manager admin service
MATRIX = {
    ("api_keys", "select"):                   "E    0        0      0     1       1     1",
    ("api_keys", "insert"):                   "E    E        E      E     E       E     E",
    ("api_keys", "update"):                   "E    0        0      0     0       1     E",
    ("api_keys", "delete"):                   "E    E        E      E     E       E     E",
    ("sync_run_reports", "select"):           "E    0        0      0     0       1     1",
    ("private.sync_runs", "select"):          "E    E        E      E     E       E     E",
    ("private.api_key_hashes", "select"):     "E    E        E      E     E       E     E",
}

CASES = matrix_cases(MATRIX, ACTORS)


@dataclass
class World(rls.StaffedOrg):
    key: uuid.UUID
    run: uuid.UUID


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database) as s:
        conn, org = s.conn, s.org
        key = conn.execute("select public.create_api_key(%s, 'warehouse', '{orders:read}') ->> 'id' as id",
                           (org,)).fetchone()["id"]
        integ = conn.execute("select public.create_integration(%s, 'wms') ->> 'id' as id", (org,)).fetchone()["id"]
        run = conn.execute("select id from private.sync_run_start(%s, 'inventory')", (integ,)).fetchone()["id"]
        yield World(**s.base(), key=uuid.UUID(key), run=run)


def _statement(w: World, table: str, action: str) -> tuple[str, tuple]:
    qualified = table if "." in table else f"public.{table}"
    column = "key_id" if table == "private.api_key_hashes" else "id"
    target = w.run if "sync_run" in table else w.key
    if action == "select":
        return f"select 1 from {qualified} where {column} = %s", (target,)
    if action == "delete":
        return f"delete from {qualified} where id = %s", (target,)
    if action == "insert":
        return ("insert into public.api_keys (org_id, name, prefix, scopes) values (%s, 'mine', 'crm_abcdefgh',"
                " '{orders:read}')", (w.org,))
    return "update public.api_keys set name = 'renamed' where id = %s", (w.key,)


@rls.matrix_cells(CASES)
def test_role_matrix(world: World, table: str, action: str, actor: str, expected: str) -> None:
    rls.assert_cell(world, table, action, actor, expected, _statement(world, table, action))


COLUMNS_WITHOUT_GRANT = [
    "update public.api_keys set revoked_at = now() where id = %(key)s",
    "update public.api_keys set scopes = '{leads:write}' where id = %(key)s",
    "update public.api_keys set expires_at = null where id = %(key)s",
    "update public.api_keys set org_id = org_id where id = %(key)s",
    "update public.api_keys set last_used_at = now() where id = %(key)s",
]


@pytest.mark.parametrize("sql", COLUMNS_WITHOUT_GRANT, ids=range(len(COLUMNS_WITHOUT_GRANT)))
def test_admin_cannot_write_key_columns_without_grant(world: World, sql: str) -> None:
    rls.assert_admin_lacks_grant(world, sql, {"key": world.key})


@pytest.mark.parametrize("function", [
    "private.sync_run_page(%(run)s, '{\"items\": []}', null)",
    "private.api_authenticate('\\x00'::bytea, 'orders:read')",
    "private.sync_run_finish(%(run)s)",
    "private.sync_runs_purge(gen_random_uuid(), 'inventory', 1)",
])
def test_the_api_roles_cannot_call_the_private_functions(world: World, function: str) -> None:
    with pytest.raises(pg.InsufficientPrivilege):
        with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
            c.execute(f"select {function}", {"run": world.run})


def test_anon_cannot_create_or_revoke_keys(world: World) -> None:
    for sql in ("select public.create_api_key(%(org)s, 'x', '{orders:read}')", "select public.revoke_api_key(%(key)s)"):
        with pytest.raises(pg.InsufficientPrivilege):
            with acting_as(world.conn, "anon") as c:
                c.execute(sql, {"org": world.org, "key": world.key})

"""The admin gate of the management RPCs (`hidden.org_admin_check`): API keys, integrations and
webhook endpoints. Admins of the org pass; other staff get 403; whoever is not staff there gets 404
(nothing to see); anon has no EXECUTE. service_role, Supabase's server key (BYPASSRLS, SPEC 6.1),
passes for any organization that exists, and gets 404 for one that does not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import errors as pg

from tests import rls_world as rls
from tests.helpers import acting_as


@dataclass
class World(rls.StaffedOrg):
    key: uuid.UUID
    integration: uuid.UUID
    endpoint: uuid.UUID


@pytest.fixture(scope="module")
def world(clone_database) -> Iterator[World]:
    with rls.staffed_org(clone_database) as s:
        conn, org = s.conn, s.org
        key = conn.execute("select (public.create_api_key(%s, 'warehouse', '{orders:read}') ->> 'id')::uuid as id",
                           (org,)).fetchone()["id"]
        integration = conn.execute("select (public.create_integration(%s, 'wms') ->> 'id')::uuid as id",
                                   (org,)).fetchone()["id"]
        endpoint = conn.execute(
            "select (public.create_webhook_endpoint(%s, 'https://hooks.example.com/in') ->> 'id')::uuid as id",
            (org,)).fetchone()["id"]
        yield World(**s.base(), key=key, integration=integration, endpoint=endpoint)


#: Each management RPC, and what it leaves behind when it ran (a count as the owner, > 0).
CALLS = {
    "create_api_key": ("select public.create_api_key(%(org)s, 'machine', '{customers:read}')",
                       "select count(*) from public.api_keys where name = 'machine'"),
    "revoke_api_key": ("select public.revoke_api_key(%(key)s)",
                       "select count(*) from public.api_keys where id = %(key)s and revoked_at is not null"),
    "create_integration": ("select public.create_integration(%(org)s, 'twilio')",
                           "select count(*) from public.integrations where kind = 'twilio'"),
    "rotate_integration_secret": (
        "select public.rotate_integration_secret(%(integration)s, 'webhook_secret')",
        "select count(*) from private.integration_secrets where integration_id = %(integration)s"
        " and expires_at is not null"),
    "create_webhook_endpoint": ("select public.create_webhook_endpoint(%(org)s, 'https://hooks.example.com/two')",
                                "select count(*) from public.webhook_endpoints where url like '%%/two'"),
    "rotate_webhook_secret": ("select public.rotate_webhook_secret(%(endpoint)s)",
                              "select count(*) from public.webhook_endpoints where id = %(endpoint)s"
                              " and secret_version > 1"),
}


def _params(w: World, org: uuid.UUID | None = None) -> dict[str, uuid.UUID]:
    return {"org": org or w.org, "key": w.key, "integration": w.integration, "endpoint": w.endpoint}


def _refused(w: World, role: str, user: uuid.UUID | None, sql: str, params: dict) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as err, acting_as(w.conn, role, user) as c:
        c.execute(sql, params)
    return err.value


@pytest.mark.parametrize("rpc", list(CALLS))
def test_service_role_manages_any_existing_org(world: World, rpc: str) -> None:
    call, left = CALLS[rpc]
    with acting_as(world.conn, "service_role") as c:
        c.execute(call, _params(world))
        c.execute("reset role")  # count as the owner, in the same (rolled back) transaction
        assert c.execute(left, _params(world)).fetchone()["count"] > 0, rpc


@pytest.mark.parametrize("rpc", ["create_api_key", "create_integration", "create_webhook_endpoint"])
def test_service_role_gets_404_for_an_org_that_does_not_exist(world: World, rpc: str) -> None:
    err = _refused(world, "service_role", None, CALLS[rpc][0], _params(world, org=uuid.uuid4()))
    assert err.sqlstate == "PT404" and "organization not found" in str(err), err


@pytest.mark.parametrize("rpc", list(CALLS))
def test_staff_who_are_not_admins_get_403_outsiders_404_anon_no_execute(world: World, rpc: str) -> None:
    call = CALLS[rpc][0]
    assert _refused(world, "authenticated", world.users["manager"], call, _params(world)).sqlstate == "PT403"
    assert _refused(world, "authenticated", world.users["outsider"], call, _params(world)).sqlstate == "PT404"
    assert isinstance(_refused(world, "anon", None, call, _params(world)), pg.InsufficientPrivilege)


@pytest.mark.parametrize("rpc", list(CALLS))
def test_admins_manage_their_org(world: World, rpc: str) -> None:
    call, left = CALLS[rpc]
    with acting_as(world.conn, "authenticated", world.users["admin"]) as c:
        c.execute(call, _params(world))
        c.execute("reset role")
        assert c.execute(left, _params(world)).fetchone()["count"] > 0, rpc
